"""Smoke test of the benchmark runner on a tiny workload (CPU)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench  # noqa: E402


def test_bench_tiny_writes_json_and_markdown(tmp_path):
    args = ["--device", "cpu", "--workload", "tiny", "--rounds", "1", "--iters", "1", "--warmup", "1",
            "--only", "det_snntorch,naive,mesu_snn_delayed,mesu_snn_reference,stream1_mesu_snn", "--out-dir", str(tmp_path)]
    assert bench.main(args) == 0
    js = next(tmp_path.glob("cpu_tiny_*.json"))
    data = json.loads(js.read_text())
    rows = {r["name"]: r for r in data["results"]}
    assert set(rows) == {"det_snntorch", "bayes_naive_snntorch", "mesu_snn_delayed", "mesu_snn_reference",
                         "stream1_naive_snntorch", "stream1_mesu_snn"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["ms_per_step"] > 0 and r["saved_mib"] > 0
    assert rows["mesu_snn_delayed"]["speedup_vs_naive"] == pytest.approx(
        rows["bayes_naive_snntorch"]["ms_per_step"] / rows["mesu_snn_delayed"]["ms_per_step"], rel=0.01)
    assert "stream1_mesu_snn" in js.with_suffix(".md").read_text()
    with pytest.raises(FileExistsError, match="--force"):
        bench.main(args)


def test_streaming_runs_every_row(tmp_path):
    """benchmarks/streaming.py: every row builds and runs (one round of one step); ratios are derived."""
    import streaming
    args = ["--rounds", "1", "--iters", "1", "--warmup", "1", "--out-dir", str(tmp_path)]
    assert streaming.main(args) == 0
    data = json.loads(next(tmp_path.glob("cpu_streaming_*.json")).read_text())
    rows = {r["name"]: r for r in data["results"]}
    assert len(rows) == 23 and not [r for r in rows.values() if "error" in r]
    r = rows["stream-50/mesu_snn_local"]
    assert r["x_torch"] == pytest.approx(rows["stream-50/mesu_snn_local_torch"]["ms_per_step"] / r["ms_per_step"],
                                         rel=0.01)
    r = rows["stream-50/mesu_snn_local"]
    assert r["x_weights"] == pytest.approx(rows["stream-50/mesu_snn_weights"]["ms_per_step"] / r["ms_per_step"],
                                           rel=0.01)
    assert "x_one_by_one" in rows["stream-50/multistream5_stacked_local"]
    for name, auto in (("stream-50/mesu_snn_local_fused", "stream-50/mesu_snn_local"),
                       ("ann-50/ann_mesu_local_fused", "ann-50/ann_mesu_local")):
        assert rows[name]["x_autograd"] == pytest.approx(rows[auto]["ms_per_step"] / rows[name]["ms_per_step"], rel=0.01)
        assert "x_det_snntorch" in rows[name]


def test_online_memory_specs_and_per_synapse_variants():
    """benchmarks/online_memory.py: rule[:chunk][:variant] specs; the per-synapse-trace variants
    (zero reset, per-neuron β) hold more trace state than x̄ per input, and the same at every T."""
    import online_memory as om
    assert om.parse_spec("mesu") == ("mesu", "16", "subtract")
    assert om.parse_spec("mesu:zero") == ("mesu", "16", "zero")
    assert om.parse_spec("mesu_online:1:per_neuron_beta") == ("mesu_online", "1", "per_neuron_beta")
    with pytest.raises(ValueError, match="variant"):
        om.parse_spec("mesu_online:16:sideways")
    state = {}
    for variant in om.VARIANTS:
        rows = [om.child("mesu_online", T, 2, 1, 16, variant) for T in (3, 20)]
        assert rows[0]["state_mib"] == rows[1]["state_mib"] and rows[0]["variant"] == variant
        state[variant] = rows[0]["state_mib"]
    syn = 784 * 100 + 100                       # input-layer synapses (+ bias column) of 784-100-10
    assert state["zero"] - state["subtract"] >= 2 * syn * 4 / 2**20 * 0.99        # x̃ (M, B, J, I), M = 2
    assert state["per_neuron_beta"] - state["subtract"] >= syn * 4 / 2**20 * 0.99  # x̃ (B, J, I), shared
