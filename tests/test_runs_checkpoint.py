"""Checkpoints: safe to load from anyone (no code runs), checksummed, validated.

A malicious pickle is refused through every command that reads a checkpoint, no reader picks
up a stray ``*.pt``, a flipped byte is a clear error, and NaN μ / non-positive σ are refused."""
from __future__ import annotations

import hashlib
import io
import pathlib

import pytest
import torch

import mesu_snn as ms
from mesu_snn.runs.checkpoint import CHECKPOINT_VERSION, FORMAT, load_checkpoint, save_checkpoint
from mesu_snn.cli import main

from test_commands_plot_inspect_export import _make_run


class _Evil:
    """Unpickling this touches ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _evil_outer(marker) -> bytes:
    return _bytes({"format": FORMAT, "version": CHECKPOINT_VERSION, "evil": _Evil(marker)})


def _evil_payload(marker) -> bytes:
    """A well-formed outer file with the right checksum around a payload that wants code."""
    data = _bytes({"model": {}, "evil": _Evil(marker)})
    return _bytes({"format": FORMAT, "version": CHECKPOINT_VERSION, "sha256": hashlib.sha256(data).hexdigest(),
                   "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)})


def test_round_trip_keeps_tensors_and_plain_types(tmp_path):
    import numpy as np
    from mesu_snn.seeding import capture_rng, restore_rng
    net = ms.SpikingMLP([4, 3, 2])
    np.random.seed(3)
    rng = capture_rng({"g": torch.Generator().manual_seed(1)})
    save_checkpoint(tmp_path / "c.pt", {"model": net.state_dict(), "rng": rng, "hist": [{"a": 1, "b": None}]})
    ck = load_checkpoint(tmp_path / "c.pt")
    assert all(torch.equal(ck["model"][k], v) for k, v in net.state_dict().items())
    assert ck["hist"] == [{"a": 1, "b": None}]
    a = np.random.rand(3)
    restore_rng(ck["rng"], {"g": torch.Generator()})
    assert np.array_equal(np.random.rand(3), a)           # numpy's state survives as plain types
    with pytest.raises(TypeError, match="non-plain object"):
        save_checkpoint(tmp_path / "d.pt", {"obj": _Evil(tmp_path / "never")})
    assert not (tmp_path / "d.pt").exists() and not (tmp_path / "never").exists()


@pytest.mark.parametrize("maker", [_evil_outer, _evil_payload], ids=["outer", "payload"])
def test_malicious_pickle_never_runs_through_any_reader(tmp_path, capsys, maker):
    r = tmp_path / "run"
    _make_run(r)
    marker = tmp_path / "PWNED"
    (r / "checkpoints" / "last.pt").write_bytes(maker(marker))
    for argv in (["inspect", str(r / "checkpoints" / "last.pt")], ["inspect", str(r)],
                 ["plot", str(r), "--out", str(tmp_path / "p1")],
                 ["plot", str(r), "--importance", "8", "--out", str(tmp_path / "p2"), "--force"],
                 ["export", str(r), "--out", str(tmp_path / "m.nir")],
                 ["export", str(r), "--evaluate", "--out", str(tmp_path / "m2.nir")]):
        rc = main(argv)
        assert not marker.exists(), f"code ran through {argv}"
        err = capsys.readouterr().err
        if argv[1] == str(r) and argv[0] == "inspect" or argv[2:4] == ["--out", str(tmp_path / "p1")]:
            continue            # these read the checkpoint only if they can; the other files still work
        assert rc == 1 and "checkpoint" in err, (argv, err)
    with pytest.raises(ValueError, match="last.pt"):
        load_checkpoint(r / "checkpoints" / "last.pt")
    assert not marker.exists()


def test_resume_refuses_a_malicious_checkpoint(tmp_path, capsys):
    from test_commands_train import CONFIG
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace("n_tasks = 3", "n_tasks = 1").replace("train_per_task = 300", "train_per_task = 40"))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    marker = tmp_path / "PWNED"
    (out / "checkpoints" / "last.pt").write_bytes(_evil_outer(marker))
    assert main(["train", str(cfg), "--out", str(out), "--resume"]) == 1
    assert not marker.exists() and "checkpoint" in capsys.readouterr().err


def test_no_reader_picks_up_a_stray_pt(tmp_path):
    from mesu_snn.runs.layout import run_files
    r = tmp_path / "run"
    _make_run(r)
    (r / "checkpoints" / "last.pt").unlink()
    (r / "model.pt").write_bytes(_evil_outer(tmp_path / "PWNED"))
    (r / "checkpoints" / "other.pt").write_bytes(_evil_outer(tmp_path / "PWNED"))
    assert run_files(r)["checkpoint"] is None
    assert main(["export", str(r)]) == 1
    assert not (tmp_path / "PWNED").exists()


def test_flipped_byte_is_a_checksum_error(tmp_path):
    net = ms.SpikingMLP([6, 5, 2])
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"model": net.state_dict()})
    raw = bytearray(p.read_bytes())
    # flip one byte inside the payload tensor (its bytes are the file's largest stored record)
    data = _bytes({"model": net.state_dict()})
    i = bytes(raw).find(data[-200:-100])
    assert i > 0
    raw[i + 10] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_checkpoint(p)


@pytest.mark.parametrize("key,value,msg", [("layers.0.weight_sigma", -1.0, "weight_sigma"),
                                           ("layers.0.weight_sigma", 0.0, "weight_sigma"),
                                           ("layers.1.bias_mu", float("nan"), "bias_mu"),
                                           ("layers.0.weight_mu", float("inf"), "weight_mu")])
def test_bad_mu_sigma_are_refused_naming_the_tensor(tmp_path, key, value, msg):
    net = ms.SpikingMLP([6, 5, 2])
    sd = net.state_dict()
    sd[key].view(-1)[0] = value
    save_checkpoint(tmp_path / "c.pt", {"model": sd})
    with pytest.raises(ValueError, match=msg):
        load_checkpoint(tmp_path / "c.pt")


def test_old_pickled_checkpoints_get_a_clear_error(tmp_path):
    torch.save({"model": ms.SpikingMLP([3, 2]).state_dict(), "version": 1}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="before version 2"):
        load_checkpoint(tmp_path / "old.pt")
