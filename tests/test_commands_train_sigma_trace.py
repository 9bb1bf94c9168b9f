"""`mesu-snn train --sigma-trace`: the σ recorder attached from the command line, and the
single-line errors of `python -m mesu_snn`."""
import subprocess
import sys
from pathlib import Path

from mesu_snn.cli import main
from mesu_snn.runs import read_trace

REPO = Path(__file__).resolve().parents[1]


def test_train_with_sigma_trace_records_the_run(tmp_path):
    cfg = (REPO / "experiments/configs/digits_permuted.toml").read_text()
    cfg = cfg.replace("n_tasks = 3", "n_tasks = 2").replace("epochs_per_task = 2", "epochs_per_task = 1")
    (tmp_path / "run.toml").write_text(cfg)
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "run.toml"), "--out", str(out), "--sigma-trace", "10", "--quiet"]) == 0
    trace = read_trace(out / "sigma_trace.h5")
    assert sorted(trace["snapshots"]) == [0, 1]                       # one full snapshot per task end
    last = trace["snapshots"][1]["layers.0.weight"]["sigma"]
    assert last.shape == (64, 64) and (last > 0).all()
    assert len(trace["summary_updates"]) >= 5


def test_python_dash_m_reports_user_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mesu_snn", "train", str(tmp_path / "missing.toml")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"mesu-snn: error: config file {tmp_path / 'missing.toml'} not found"]
