"""``mesu-snn train`` as a user runs it: a real subprocess killed with SIGKILL after a
checkpoint and resumed ends bit-exactly like an uninterrupted run; user errors are one line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mesu_snn.runs.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
seed = 0
[data]
dataset = "digits"
train_per_task = 300
test_per_task = 90
[stream]
kind = "permuted"
n_tasks = 3
epochs_per_task = 2
batch_size = 8
[encoder]
kind = "current"
num_steps = 5
[model]
hidden = [32]
[rule]
name = "mesu"
memory = 10000.0
[schedule]
train_samples = 2
eval_samples = 4
eval_every = 20
checkpoint_every = 10
threads = 1
"""


def _cmd(*args):
    # what the mesu-snn console script runs (not "python -m mesu_snn.cli", which would import
    # the cli module twice, as __main__ and as mesu_snn.cli)
    return [sys.executable, "-c", "import sys; from mesu_snn.cli import main; sys.exit(main())", *map(str, args)]


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MESU_SNN_DATA", None)
    return env


def _run(*args, cwd):
    return subprocess.run(_cmd(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _state(run_dir: Path):
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return ck["model"], ck["position"], ck["n_updates"]


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG)
    ref = _run("train", cfg, "--out", tmp_path / "ref", "--quiet", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    # the same run, killed with SIGKILL as soon as a mid-run checkpoint exists
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(_cmd("train", cfg, "--out", tmp_path / "killed", "--quiet"), cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    _, position, n_updates = _state(tmp_path / "killed")
    assert 0 < position < n_updates
    assert not (tmp_path / "killed" / "metrics.json").exists()
    res = _run("train", cfg, "--out", tmp_path / "killed", "--resume", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    model_ref, pos_ref, _ = _state(tmp_path / "ref")
    model_res, pos_res, _ = _state(tmp_path / "killed")
    assert pos_ref == pos_res == n_updates
    assert model_ref.keys() == model_res.keys()
    for k in model_ref:
        assert torch.equal(model_ref[k], model_res[k]), k          # every μ and σ, bit for bit
    assert (tmp_path / "ref" / "metrics.json").read_bytes() == (tmp_path / "killed" / "metrics.json").read_bytes()
    assert (tmp_path / "ref" / "log.csv").read_text() == (tmp_path / "killed" / "log.csv").read_text()
    m = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    for key in ("accuracy_matrix", "average_accuracy", "backward_transfer", "forgetting", "learning_accuracy", "rule"):
        assert key in m
    for f in ("config.toml", "log.csv", "accuracy_matrix.png", "task_accuracy.png", "learning_accuracy.png"):
        assert (tmp_path / "ref" / f).is_file(), f


def _one_error_line(res):
    assert res.returncode != 0
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("mesu-snn: error:"), res.stderr
    return lines[0]


def test_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace("n_tasks = 3", "n_tasks = 0"))
    assert "stream.n_tasks" in _one_error_line(_run("train", bad, "--out", tmp_path / "o1", cwd=tmp_path))
    assert not (tmp_path / "o1").exists()
    assert "not found" in _one_error_line(_run("train", tmp_path / "missing.toml", cwd=tmp_path))
    assert "directory" in _one_error_line(_run("train", tmp_path, cwd=tmp_path))
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(b"\x00\xff\xfe not toml")
    _one_error_line(_run("train", garbage, cwd=tmp_path))
    nodata = tmp_path / "nodata.toml"
    nodata.write_text(CONFIG.replace('dataset = "digits"', f'dataset = "mnist"\nroot = "{tmp_path / "empty"}"'))
    line = _one_error_line(_run("train", nodata, "--out", tmp_path / "o2", cwd=tmp_path))
    assert "MNIST" in line and "not found" in line
    assert not (tmp_path / "o2").exists()


def test_existing_run_dir_needs_force_and_resume_checks_config(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.replace("epochs_per_task = 2", "epochs_per_task = 1").replace("n_tasks = 3", "n_tasks = 2"))
    out = tmp_path / "out"
    assert _run("train", cfg, "--out", out, "--quiet", cwd=tmp_path).returncode == 0
    before = (out / "metrics.json").read_bytes()
    assert "--force" in _one_error_line(_run("train", cfg, "--out", out, "--quiet", cwd=tmp_path))
    assert (out / "metrics.json").read_bytes() == before
    other = tmp_path / "other.toml"
    other.write_text(cfg.read_text().replace("memory = 10000.0", "memory = 20000.0"))
    assert "rule.memory" in _one_error_line(_run("train", other, "--out", out, "--resume", cwd=tmp_path))
    # a folder that is not a run directory is never wiped, even with --force
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert "not a mesu-snn run directory" in _one_error_line(_run("train", cfg, "--out", foreign, "--force", cwd=tmp_path))
    assert (foreign / "thesis.tex").read_text() == "precious"
    res = _run("train", cfg, "--out", out, "--force", "--quiet", cwd=tmp_path)
    assert res.returncode == 0 and "avg acc" in res.stdout
    assert (out / "metrics.json").read_bytes() == before          # same config, same seed: same result


def test_demo_command_small(tmp_path):
    res = subprocess.run(_cmd("demo", "--tasks", "2", "--epochs", "1", "--out", tmp_path / "demo", "--quiet"),
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "avg acc" in res.stdout and "mesu" in res.stdout and "sgd" in res.stdout and "bgd" in res.stdout
    for rule in ("mesu", "sgd", "bgd"):
        m = json.loads((tmp_path / "demo" / rule / "metrics.json").read_text())
        assert m["rule"] == rule and len(m["accuracy_matrix"]) == 2
    assert (tmp_path / "demo" / "comparison.png").is_file()
    again = subprocess.run(_cmd("demo", "--tasks", "2", "--epochs", "1", "--out", tmp_path / "demo", "--quiet"),
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    _one_error_line(again)


def test_resume_of_a_finished_run_says_so_and_rewrites_nothing(tmp_path, capsys):
    """--resume on a finished run leaves metrics and figures untouched (same bytes, same mtimes) and
    exits 0; a run whose last figure is missing (killed during its final writes) is completed."""
    from mesu_snn.cli import main
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.replace("epochs_per_task = 2", "epochs_per_task = 1").replace("n_tasks = 3", "n_tasks = 2"))
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    files = [out / n for n in ("metrics.json", "timing.json", "log.csv", "accuracy_matrix.png", "checkpoints/last.pt")]
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    assert main(["train", str(cfg), "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "is finished" in said and "nothing to resume" in said and "--force" in said
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before
    (out / "learning_accuracy.png").unlink()                  # killed before its last figure
    assert main(["train", str(cfg), "--out", str(out), "--resume", "--quiet"]) == 0
    assert "is finished" not in capsys.readouterr().out and (out / "learning_accuracy.png").is_file()
    assert (out / "metrics.json").read_bytes() == before[out / "metrics.json"][0]


def test_absurd_settings_from_a_config_are_one_line_and_keep_the_last_good_checkpoint(tmp_path):
    # refused at construction / before training: one line, no run directory
    for i, (old, new, words) in enumerate([("memory = 10000.0", "memory = 10000.0\nlr_sigma = 1e6", "lr_sigma·clamp_grad"),
                                           ("memory = 10000.0", "memory = 1e-9", "rule.memory"),
                                           ("eval_samples = 4", "eval_samples = 100000000", "bytes")]):
        bad = tmp_path / f"bad{i}.toml"
        bad.write_text(CONFIG.replace(old, new))
        assert words in _one_error_line(_run("train", bad, "--out", tmp_path / f"o{i}", "--quiet", cwd=tmp_path))
        assert not (tmp_path / f"o{i}" / "checkpoints").exists()
    # diverges during training: metrics say so, one error line, the checkpoint is from before
    cfg = tmp_path / "diverge.toml"
    cfg.write_text(CONFIG.replace("memory = 10000.0", "memory = 10000.0\nlr_mu = 1e12")
                   .replace("checkpoint_every = 10", "checkpoint_every = 5"))
    out = tmp_path / "div"
    line = _one_error_line(_run("train", cfg, "--out", out, "--quiet", cwd=tmp_path))
    assert "diverged at update" in line and "no checkpoint was kept" in line    # μ is absurd after one update
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"] is True and "in magnitude" in metrics["diverged_reason"]
    assert not (out / "checkpoints" / "last.pt").exists()
    # a run that stops learning (at chance at 3 task ends in a row) keeps its checkpoint from before
    cfg.write_text(CONFIG.replace("memory = 10000.0", "memory = 10000.0\nlr_mu = 0.0\nlr_sigma = 0.0")
                   .replace("n_tasks = 3", "n_tasks = 4").replace("epochs_per_task = 2", "epochs_per_task = 1"))
    out = tmp_path / "chance"
    line = _one_error_line(_run("train", cfg, "--out", out, "--quiet", cwd=tmp_path))
    assert "accuracy at chance" in line and "is the last good checkpoint" in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["diverged_at_update"] < metrics["updates"]
    model, position, _ = _state(out)
    assert position < metrics["diverged_at_update"]
    assert not load_checkpoint(out / "checkpoints" / "last.pt")["state"]["diverged"]
