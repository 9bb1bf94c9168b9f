"""kernels.triton_mesu: the one-pass Triton MESU kernel equals the foreach update (Triton interpreter on CPU).

Runs only where triton is importable; on CPU it needs TRITON_INTERPRET=1, set here before the kernel is
defined (``PYTHONPATH=<dir with triton> python -m pytest tests/test_triton_mesu.py``)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")
tm = pytest.importorskip("mesu_snn.kernels.triton_mesu")

from mesu_snn.kernels.fused_update import fused_mesu_step  # noqa: E402


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_triton_mesu_equals_foreach(clamp):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    shapes = [(50, 784), (10, 50), (3000,), (1,)]          # 3000: several blocks and a masked tail
    mus = [torch.randn(s, generator=g) for s in shapes]
    sig = [torch.rand(s, generator=g) * 0.1 + 0.01 for s in shapes]
    gmu = [torch.randn(s, generator=g) * 5 for s in shapes]
    gsig = [torch.randn(s, generator=g) * 5 for s in shapes]
    kw = dict(memory=100.0, sigma_prior=0.2, mu_prior=0.05, lr_mu=0.7, lr_sigma=1.3, clamp_grad=clamp)
    ref_mu, ref_sig = [t.clone() for t in mus], [t.clone() for t in sig]
    fused_mesu_step(ref_mu, ref_sig, gmu, gsig, **kw)
    tmu, tsig = [t.clone().to(dev) for t in mus], [t.clone().to(dev) for t in sig]
    tm.triton_mesu_step(tmu, tsig, [t.to(dev) for t in gmu], [t.to(dev) for t in gsig], **kw)
    for a, b, before in zip(tmu + tsig, ref_mu + ref_sig, mus + sig):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-7)
        assert not torch.equal(b, before)
    if clamp is not None:   # the clamp was active somewhere
        assert any(bool(((s * gm).abs() > clamp).any()) for s, gm in zip(sig, gmu))


def test_triton_mesu_errors():
    t = torch.zeros(4)
    with pytest.raises(ValueError, match="equally long"):
        tm.triton_mesu_step([t], [t, t], [t], [t], memory=1.0, sigma_prior=1.0)
    with pytest.raises(ValueError, match="contiguous"):
        m = torch.zeros(4, 4).t()
        tm.triton_mesu_step([m], [m], [m], [m], memory=1.0, sigma_prior=1.0)
