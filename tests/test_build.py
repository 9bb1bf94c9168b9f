"""build.py: SHD through a config (``dataset = "shd"``) on a file written in SHD's real layout,
and Tonic transforms named in ``[encoder] transforms``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest_data import write_shd
from mesu_snn.build import build_pipeline, build_tasks, build_trainer
from mesu_snn.config import ConfigError, parse_config
from mesu_snn.encoders import events_to_frames


def _shd_root(tmp_path, n_per_class=16, classes=4):
    """shd_train.h5 / shd_test.h5 under <root>/SHD: class c fires channels c·175 … c·175+174."""
    rng = np.random.default_rng(0)
    (tmp_path / "SHD").mkdir()
    for split, n in (("train", n_per_class), ("test", n_per_class // 2)):
        times, units, labels = [], [], []
        for c in range(classes):
            for _ in range(n):
                k = int(rng.integers(300, 500))
                times.append(np.sort(rng.uniform(0, 0.8, k)))
                units.append(rng.integers(c * 175, c * 175 + 175, k))
                labels.append(c)
        write_shd(tmp_path / "SHD" / f"shd_{split}.h5", times, units, labels)
    return tmp_path


def _shd_config(root, **encoder):
    return parse_config({
        "seed": 0, "data": {"dataset": "shd", "root": str(root)},
        "stream": {"kind": "split", "classes_per_task": 2, "batch_size": 8, "epochs_per_task": 4},
        "encoder": {"kind": "frames", "num_steps": 4, **encoder}, "model": {"hidden": [16]},
        "rule": {"name": "mesu", "memory": 2000.0},
        "schedule": {"train_samples": 2, "eval_samples": 2, "checkpoint_every": 0}})


def test_shd_dataset_trains_through_the_config(tmp_path):
    root = _shd_root(tmp_path)
    cfg = _shd_config(root)
    tr = build_trainer(cfg)
    assert tr.model.sizes[0] == 700 and tr.model.sizes[-1] == 4      # 700 channels; classes seen: 0..3
    x, _ = next(iter(tr.stream))
    assert tr.encode(x).shape == (4, 8, 700)
    m = tr.fit()
    assert m["tasks"] == ["split-0-1", "split-2-3"] and len(m["accuracy_matrix"]) == 2
    assert np.mean(m["learning_accuracy_per_task"]) > 0.6          # channels tell the classes apart
    ood = m["uncertainty"]["ood"]
    assert ood["n_out"] == 16 and "permutation" in ood["set"] and 0 <= ood["auroc_entropy"] <= 1
    with pytest.raises(ConfigError, match="shd holds events: use 'frames'"):
        parse_config({"data": {"dataset": "shd"}, "encoder": {"kind": "rate"}, "rule": {"name": "sgd"}})


def test_tonic_transforms_from_the_config(tmp_path):
    """Downsample shrinks the sensor the model sees; a final ToFrame bins with Tonic itself; a
    transform that cannot take the data fails at build time, naming the field."""
    import tonic.transforms as T
    root = _shd_root(tmp_path, n_per_class=4)
    cfg = _shd_config(root, transforms=[{"name": "Downsample", "spatial_factor": 0.1}])
    tasks = build_tasks(cfg)
    tr = build_trainer(cfg, tasks=tasks)
    assert tr.model.sizes[0] == 70                                     # floor(699 · 0.1) + 1
    ev = tasks[0].train_x.get_events([0, 1])
    want = np.stack([events_to_frames(T.Downsample(spatial_factor=0.1)(e), (70, 1, 1), 4) for e in ev], axis=1)
    got = build_pipeline(cfg, tasks)(ev)
    assert torch.equal(got, torch.from_numpy(want * 2.0).flatten(2))   # gain 2 (frames default)
    cfg2 = _shd_config(root, transforms=[{"name": "ToFrame"}], gain=1.0)
    got2 = build_pipeline(cfg2, tasks)(ev)
    want2 = np.stack([T.ToFrame(sensor_size=(700, 1, 1), n_time_bins=4)(e) for e in ev], axis=1)
    assert torch.equal(got2, torch.from_numpy(want2.astype(np.float32)).flatten(2))
    bad = _shd_config(root, transforms=[{"name": "Denoise", "filter_time": 5000}])   # SHD has no y
    with pytest.raises(ValueError, match=r"encoder.transforms: Denoise fails on a shd recording.*no field of name y"):
        build_pipeline(bad, tasks)


def test_tonic_transform_names_are_a_whitelist():
    """Names and keywords are looked up, never evaluated."""
    def err(transforms, **extra):
        with pytest.raises(ConfigError) as e:
            parse_config({"data": {"dataset": "nmnist"}, "encoder": {"kind": "frames", "transforms": transforms,
                                                                     **extra}, "rule": {"name": "sgd"}})
        return str(e.value)
    assert "encoder.transforms[0].name: must be one of 'Denoise'" in err([{"name": "__import__('os')"}])
    assert "DropEvent" in err([{"name": "DropEvent", "p": 0.1}])                  # random: left out
    assert "transforms[0].eval: not a keyword of Denoise" in err([{"name": "Denoise", "filter_time": 1, "eval": 1}])
    assert "transforms[0].filter_time: required by Denoise" in err([{"name": "Denoise"}])
    assert "transforms[1].spatial_factor: must be a number in (0, 1]" in err(
        [{"name": "Denoise", "filter_time": 1}, {"name": "Downsample", "spatial_factor": 2}])
    assert "ToFrame turns events into frames, so it must come last" in err([{"name": "ToFrame"}, {"name": "MergePolarities"}])
    assert "n_time_bins: must equal encoder.num_steps (10)" in err([{"name": "ToFrame", "n_time_bins": 3}])
    assert "encoder.duration_us" in err([{"name": "ToFrame"}], duration_us=1e5)
    with pytest.raises(ConfigError, match="Tonic transforms take event data"):
        parse_config({"encoder": {"transforms": [{"name": "MergePolarities"}]}, "rule": {"name": "sgd"}})
    ok = parse_config({"data": {"dataset": "nmnist"}, "encoder": {"kind": "frames", "transforms": [
        {"name": "Denoise", "filter_time": 10000}, {"name": "Downsample", "spatial_factor": [0.5, 0.5]},
        {"name": "MergePolarities"}, {"name": "ToFrame"}]}, "rule": {"name": "sgd"}})
    from mesu_snn.config import dump_toml
    assert 'transforms = [{name = "Denoise", filter_time = 10000}' in dump_toml(ok)
