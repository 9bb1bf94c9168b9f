"""Callbacks of mesu_snn/callbacks.py: the σ-collapse warning and the progress output."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

import mesu_snn as ms
from mesu_snn.callbacks import Progress, SigmaCollapseWarning, SigmaWatch


def _caught(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fn()
    return [str(x.message) for x in w if issubclass(x.category, SigmaCollapseWarning)]


def test_sigma_collapse_warns_once_per_layer_with_the_fan_in_hint():
    net = ms.SpikingMLP([16, 8, 3])                        # sigma_init 0.5: σ·√fan_in = 0.5
    watch = SigmaWatch(fraction=0.1, within=100, every=10)
    assert _caught(lambda: watch.on_start(net, None, {"start_update": 0})) == []
    assert _caught(lambda: watch.on_update(10, net, None)) == []
    with torch.no_grad():
        net.layers[0].weight_sigma.mul_(0.05)             # the first layer collapses to 5 % of its start
    msgs = _caught(lambda: watch.on_update(20, net, None))
    assert len(msgs) == 1 and "layers.0.weight" in msgs[0] and "update 20" in msgs[0]
    assert "5.0%" in msgs[0] and "1/√fan_in" in msgs[0] and "sigma_init" in msgs[0]
    assert _caught(lambda: watch.on_update(30, net, None)) == []          # once per layer
    with torch.no_grad():
        net.layers[1].weight_sigma.mul_(0.05)
    assert _caught(lambda: watch.on_update(200, net, None)) == []         # past `within`: quiet


def test_sigma_too_small_from_the_start_warns_at_update_0():
    """The issue's case: sigma_init = 0.05 does not shrink further but stalls learning."""
    net = ms.SpikingMLP([16, 8, 3], sigma_init=0.05)
    msgs = _caught(lambda: SigmaWatch().on_start(net, None, {}))
    assert len(msgs) == 2 and all("σ·√fan_in = 0.05" in m for m in msgs)
    assert _caught(lambda: SigmaWatch().on_start(net, None, {"start_update": 1000})) == []   # a late resume


def test_trainer_warns_for_a_small_sigma_init_and_not_for_the_default():
    from mesu_snn.build import build_trainer
    from mesu_snn.config import parse_config
    raw = {"data": {"dataset": "digits", "train_per_task": 40, "test_per_task": 10}, "stream": {"n_tasks": 1},
           "encoder": {"num_steps": 3}, "model": {"hidden": [8]}, "rule": {"name": "mesu"},
           "schedule": {"train_samples": 1, "eval_samples": 1, "ood": False}}
    assert _caught(lambda: build_trainer(parse_config(raw)).fit()) == []
    raw["model"]["sigma_init"] = 0.05
    msgs = _caught(lambda: build_trainer(parse_config(raw)).fit())
    assert msgs and "layers.0.weight" in msgs[0]
    raw["rule"] = {"name": "sgd"}                          # σ is frozen in mean mode: no watch
    assert _caught(lambda: build_trainer(parse_config(raw)).fit()) == []


def test_progress_prints_a_line_per_task_when_not_a_terminal():
    """A log file gets one plain line per task, no tqdm ``\\r`` updates."""
    from mesu_snn.build import build_trainer
    from mesu_snn.config import parse_config
    cfg = parse_config({"data": {"dataset": "digits", "train_per_task": 32, "test_per_task": 10},
                        "stream": {"n_tasks": 3}, "encoder": {"num_steps": 3}, "model": {"hidden": [8]},
                        "rule": {"name": "sgd"}, "schedule": {"ood": False}})
    buf = io.StringIO()
    build_trainer(cfg, callbacks=[Progress("sgd", stream=buf)]).fit()
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 3 and [l.split("task ")[1].split("/")[0] for l in lines] == ["1", "2", "3"]
    assert all(l.startswith("sgd: task ") and "average accuracy" in l for l in lines)
