"""LIF neurons: exact equality with snnTorch's Leaky and Norse's LIFBoxCell, surrogate gradients."""
import pytest
import torch

import mesu_snn as ms
from mesu_snn.functional import LIFParameters, lif_sequence

snn = pytest.importorskip("snntorch")
from snntorch import surrogate as snn_surrogate  # noqa: E402

T, B, N = 120, 4, 16


def _currents(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, N, generator=g, dtype=dtype) * 0.6)


def _run_snntorch(leaky, x):
    mem = leaky.reset_mem()
    spk_all, mem_all = [], []
    for t in range(x.shape[0]):
        spk, mem = leaky(x[t], mem)
        spk_all.append(spk)
        mem_all.append(mem)
    return torch.stack(spk_all), torch.stack(mem_all)


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("reset_delay", [True, False])
def test_lif_equals_snntorch_leaky(reset, reset_delay):
    x = _currents()
    leaky = snn.Leaky(beta=0.9, threshold=1.0, reset_mechanism=reset, reset_delay=reset_delay,
                      spike_grad=snn_surrogate.fast_sigmoid(slope=25))
    ref_spk, ref_mem = _run_snntorch(leaky, x)
    ours = ms.LIF(beta=0.9, threshold=1.0, reset=reset, reset_delay=reset_delay)
    spk, mem = ours(x, return_membrane=True)
    assert ref_spk.sum() > 10  # the comparison must involve real spiking
    torch.testing.assert_close(spk, ref_spk, atol=1e-6, rtol=0, check_dtype=False)
    torch.testing.assert_close(mem, ref_mem, atol=1e-6, rtol=0, check_dtype=False)


def test_lif_per_neuron_beta_and_threshold_equal_snntorch():
    x = _currents(1)
    beta = torch.linspace(0.5, 0.95, N, dtype=torch.float64)
    thr = torch.linspace(0.5, 1.5, N, dtype=torch.float64)
    leaky = snn.Leaky(beta=beta, threshold=thr, spike_grad=snn_surrogate.fast_sigmoid(slope=25))
    ref_spk, ref_mem = _run_snntorch(leaky, x)
    spk, mem = ms.LIF(beta=beta, threshold=thr)(x, return_membrane=True)
    torch.testing.assert_close(spk, ref_spk, atol=1e-6, rtol=0, check_dtype=False)
    torch.testing.assert_close(mem, ref_mem, atol=1e-6, rtol=0, check_dtype=False)


@pytest.mark.parametrize("sur, ours_sur", [(snn_surrogate.fast_sigmoid(slope=25), ms.FastSigmoid(25.0)),
                                           (snn_surrogate.fast_sigmoid(slope=5), ms.FastSigmoid(5.0)),
                                           (snn_surrogate.atan(alpha=2.0), ms.ATan(2.0)),
                                           (snn_surrogate.atan(alpha=3.5), ms.ATan(3.5))])
def test_surrogate_gradients_equal_snntorch(sur, ours_sur):
    x = _currents(2, torch.float32).requires_grad_(True)   # snnTorch's spikes are float32
    w = torch.randn(T, B, N)
    leaky = snn.Leaky(beta=0.875, spike_grad=sur)  # exact in float32, as snnTorch stores it
    ref_spk, _ = _run_snntorch(leaky, x)
    (ref_spk * w).sum().backward()
    ref_grad = x.grad.clone()
    x.grad = None
    lif = ms.LIF(beta=0.875, surrogate=ours_sur)
    (lif(x) * w).sum().backward()
    assert ref_grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, ref_grad, atol=1e-6, rtol=1e-5)


def test_learnable_beta_gradient_matches_snntorch():
    x = _currents(3, torch.float32)
    leaky = snn.Leaky(beta=torch.tensor(0.8), learn_beta=True,
                      spike_grad=snn_surrogate.fast_sigmoid(slope=25))
    ref_spk, _ = _run_snntorch(leaky, x)
    ref_spk.sum().backward()
    lif = ms.LIF(beta=torch.tensor(0.8), learn_beta=True)
    lif(x).sum().backward()
    assert isinstance(lif.beta, torch.nn.Parameter)
    torch.testing.assert_close(lif.beta.grad, leaky.beta.grad, atol=1e-4, rtol=1e-5)


def test_lif_equals_norse_lifboxcell():
    norse = pytest.importorskip("norse.torch")
    x = (_currents(4, torch.float32) * 400.0).requires_grad_(True)     # Norse scales the input by dt/tau
    p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_leak=torch.tensor(0.1),
                               v_th=torch.tensor(1.0), v_reset=torch.tensor(-0.2))
    cell = norse.LIFBoxCell(p, dt=1e-3)
    state, zs, vs = None, [], []
    for t in range(T):
        z, state = cell(x[t], state)
        zs.append(z)
        vs.append(state.v)
    ref_z, ref_v = torch.stack(zs), torch.stack(vs)
    w = torch.randn(T, B, N)
    (ref_z * w).sum().backward()
    ref_grad = x.grad.clone()
    x.grad = None
    lif = ms.LIF.norse_box(tau_mem_inv=100.0, v_leak=0.1, v_th=1.0, v_reset=-0.2, dt=1e-3)
    z, v = lif(x, return_membrane=True)
    assert ref_z.sum() > 10
    torch.testing.assert_close(z, ref_z, atol=1e-6, rtol=0, check_dtype=False)
    torch.testing.assert_close(v, ref_v, atol=1e-5, rtol=1e-5)
    (z * w).sum().backward()
    torch.testing.assert_close(x.grad, ref_grad, atol=1e-6, rtol=1e-5)


def test_functional_sequence_equals_module():
    x = _currents(5)
    p = LIFParameters(beta=0.7, threshold=0.8, reset="zero")
    spk, mem = lif_sequence(x, p, return_membrane=True)
    spk2, mem2 = ms.LIF(beta=0.7, threshold=0.8, reset="zero")(x, return_membrane=True)
    assert torch.equal(spk, spk2) and torch.equal(mem, mem2)


def test_lif_bad_input():
    lif = ms.LIF()
    with pytest.raises(ValueError, match=r"\(T, B"):
        lif(torch.zeros(5))
    with pytest.raises(ValueError, match="floating"):
        lif(torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="beta"):
        ms.LIF(beta=1.5)
    with pytest.raises(ValueError, match="reset"):
        ms.LIF(reset="bounce")
    with pytest.raises(ValueError, match="threshold"):
        ms.LIF(threshold=0.0)


def test_loaded_state_dict_sets_the_beta_and_threshold_used_in_forward():
    x = _currents(6)
    src = ms.LIF(beta=0.5, threshold=0.7)
    dst = ms.LIF(beta=0.9, threshold=1.0)
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst(x), src(x))
    assert dst.params.beta == pytest.approx(0.5) and dst.params.threshold == pytest.approx(0.7)


def test_reloading_the_same_model_keeps_exact_scalar_parameters():
    lif = ms.LIF(beta=0.9, threshold=0.7)
    lif.load_state_dict(ms.LIF(beta=0.9, threshold=0.7).state_dict())
    assert lif.params.beta == 0.9 and lif.params.threshold == 0.7      # not their float32 roundings


def test_single_step_call_equals_the_sequence_and_snntorch():
    """``spk, mem = lif(x_t, mem)`` (snnTorch's habit) gives the sequence call's numerics."""
    import snntorch as snn
    torch.manual_seed(0)
    x = torch.randn(12, 3, 5) + 0.8
    for reset in ("subtract", "zero"):
        lif = ms.LIF(beta=0.75, threshold=1.0, reset=reset)
        ref = snn.Leaky(beta=0.75, threshold=1.0, reset_mechanism=reset)
        s_seq, v_seq = lif(x, return_membrane=True)
        mem, mem_ref = lif.init_state(x[0]), ref.init_leaky()
        for t in range(x.shape[0]):
            spk, mem = lif(x[t], mem)
            spk_ref, mem_ref = ref(x[t], mem_ref)
            assert torch.equal(spk, s_seq[t]) and torch.allclose(mem, v_seq[t], atol=1e-6)
            assert torch.equal(spk, spk_ref) and torch.allclose(mem, mem_ref, atol=1e-6)
    with pytest.raises(ValueError, match="mem must have x_t's shape"):
        ms.LIF()(x[0], torch.zeros(2, 5))
    with pytest.raises(ValueError, match="init_state"):
        ms.LIF()(torch.ones(5))


def test_mlp_returns_recordings_on_request():
    torch.manual_seed(0)
    net = ms.SpikingMLP([6, 7, 3])
    x = torch.rand(5, 2, 6) * 3
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out, rec = net(x, samples=2, generator=g1, record=True)
    assert torch.equal(out, net(x, samples=2, generator=g2))
    assert [tuple(s.shape) for s in rec["spikes"]] == [(2, 5, 2, 7), (2, 5, 2, 3)]
    assert [tuple(v.shape) for v in rec["membrane"]] == [(2, 5, 2, 7), (2, 5, 2, 3)]
    assert set(rec["spikes"][0].unique().tolist()) <= {0.0, 1.0}
    rec["spikes"][0].sum().backward()                     # a spike-count regulariser reaches μ
    assert net.layers[0].weight_mu.grad is not None
