"""Spike encoders: rate, latency (vs snntorch), current, event frames (vs tonic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_data import require, shared_data_dir

from mesu_snn.encoders import (
    CurrentEncoder,
    EventFrameEncoder,
    LatencyEncoder,
    RateEncoder,
    events_to_frames,
    latency_encode,
    rate_encode,
    to_unit_interval,
)

NMNIST_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])


def make_events(n=500, W=34, H=34, P=2, t_max=300_000, seed=0):
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, NMNIST_DTYPE)
    ev["x"], ev["y"], ev["p"] = rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, P, n)
    ev["t"] = np.sort(rng.integers(0, t_max, n))
    return ev


# ---------------------------------------------------------------- rate
def test_rate_mean_matches_intensity():
    x = torch.linspace(0, 1, 11).reshape(1, 11).repeat(4, 1)  # (B=4, 11)
    s = RateEncoder(num_steps=4000)(x, seed=3)
    assert s.shape == (4000, 4, 11) and s.dtype == torch.float32
    assert set(torch.unique(s).tolist()) <= {0.0, 1.0}
    rate = s.mean(0)
    assert torch.allclose(rate, x, atol=0.03)
    assert torch.all(s[:, :, 0] == 0) and torch.all(s[:, :, -1] == 1)
    g = RateEncoder(num_steps=4000, gain=0.5)(x, seed=3).mean(0)
    assert torch.allclose(g, 0.5 * x, atol=0.03)
    assert torch.allclose(RateEncoder(100, gain=3.0)(x, seed=0)[:, :, -1], torch.ones(100, 4))  # clamped at 1


def test_rate_determinism():
    x = torch.rand(8, 5, 5, generator=torch.Generator().manual_seed(1))
    enc = RateEncoder(20)
    a, b, c = enc(x, seed=7), enc(x, seed=7), enc(x, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(enc(x, generator=g1), rate_encode(x, 20, generator=g2))
    assert not torch.equal(enc(x, generator=g1), enc(x, seed=5))  # generator advanced
    with pytest.raises(ValueError, match="either generator or seed"):
        enc(x, generator=torch.Generator(), seed=1)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.tensor([[0.5, 1.2]]), r"\[0, 1\]"),
        (torch.tensor([[-0.1, 0.2]]), r"\[0, 1\]"),
        (torch.tensor([[float("nan")]]), r"\[0, 1\]"),
        (torch.tensor([[3, 4]], dtype=torch.uint8), "to_unit_interval"),
        (torch.tensor(0.5), "batch"),
    ],
)
def test_static_encoders_reject_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        RateEncoder(5)(x)
    with pytest.raises(ValueError, match=match):
        LatencyEncoder(5)(x)


@pytest.mark.parametrize("cls", [RateEncoder, LatencyEncoder, CurrentEncoder])
@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_num_steps_validated(cls, steps):
    with pytest.raises(ValueError, match="num_steps"):
        cls(steps)


def test_parameter_validation():
    with pytest.raises(ValueError, match="gain"):
        RateEncoder(5, gain=-1)
    with pytest.raises(ValueError, match="threshold"):
        LatencyEncoder(5, threshold=0)
    with pytest.raises(ValueError, match="tau"):
        LatencyEncoder(5, tau=0)
    with pytest.raises(ValueError, match="n_time_bins"):
        EventFrameEncoder((34, 34, 2), 0)
    with pytest.raises(ValueError, match="sensor_size"):
        EventFrameEncoder((34, 34), 3)
    with pytest.raises(ValueError, match="duration_us"):
        EventFrameEncoder((34, 34, 2), 3, duration_us=-5)


def test_to_unit_interval():
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.allclose(to_unit_interval(x), torch.tensor([[0.0, 0.2, 1.0]]))
    with pytest.raises(ValueError, match="uint8 or float"):
        to_unit_interval(torch.tensor([1, 2]))


# ---------------------------------------------------------------- latency
@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_latency_one_spike_brighter_earlier(linear, normalize):
    x = torch.linspace(0.02, 1.0, 50).reshape(1, 50).repeat(3, 1)
    x[1] = x[1].flip(0)
    T = 60
    s = LatencyEncoder(T, tau=5.0, normalize=normalize, linear=linear)(x)
    assert s.shape == (T, 3, 50) and s.dtype == torch.float32
    counts = s.sum(0)
    assert torch.all(counts <= 1)
    assert torch.all(counts == 1)  # all above threshold and within T steps here
    first = s.argmax(0).float()
    assert torch.all(first[0, :-1] >= first[0, 1:])  # increasing intensity -> non-increasing time
    assert first[0, -1] == 0 and first[0, 0] > first[0, -1]
    assert torch.equal(first[1], first[0].flip(0))
    assert torch.equal(s, LatencyEncoder(T, tau=5.0, normalize=normalize, linear=linear)(x, seed=9))


def test_latency_threshold_and_late_spikes():
    x = torch.tensor([[0.0, 0.005, 0.5, 1.0]])
    s = latency_encode(x, 10, threshold=0.01, clip=True)
    assert s[:, 0, :2].sum() == 0 and s[:, 0, 2:].sum() == 2  # below threshold: silent
    s = latency_encode(x, 10, threshold=0.01, clip=False)
    assert s[-1, 0, :2].tolist() == [1.0, 1.0]  # snntorch: sub-threshold fires last
    # without normalize, spikes later than num_steps - 1 are dropped
    s = latency_encode(torch.tensor([[0.011, 1.0]]), 5, tau=5.0, normalize=False, clip=False)
    assert s[:, 0, 0].sum() == 0 and s[0, 0, 1] == 1


@pytest.mark.parametrize(
    "kwargs, data",
    [
        (dict(normalize=True, linear=True), [[0.0, 0.02, 0.5, 1.0]]),
        (dict(normalize=True, linear=True), [[0.3, 0.7, 0.9, 0.15]]),
        (dict(normalize=True, linear=False), [[0.0, 0.02, 0.2, 0.5, 1.0]]),  # batch holds a sub-threshold value
        (dict(normalize=False, linear=False, tau=5.0), [[0.02, 0.03, 0.1, 0.6, 1.0]]),
        (dict(normalize=False, linear=True, tau=4.0), [[0.02, 0.3, 0.6, 1.0]]),
    ],
)
def test_latency_matches_snntorch(kwargs, data):
    spikegen = pytest.importorskip("snntorch.spikegen")
    x = torch.tensor(data)
    T = 9
    ours = latency_encode(x, T, threshold=0.01, clip=False, **{"tau": 1.0, **kwargs})
    ref = spikegen.latency(x, num_steps=T, threshold=0.01, clip=False, **{"tau": 1.0, **kwargs})
    assert torch.equal(ours, ref.float())
    ours_c = latency_encode(x, T, threshold=0.01, clip=True, **{"tau": 1.0, **kwargs})
    ref_c = spikegen.latency(x, num_steps=T, threshold=0.01, clip=True, **{"tau": 1.0, **kwargs})
    assert torch.equal(ours_c, ref_c.float())


def test_latency_is_batch_independent():
    # unlike snntorch's log normalize (batch max), a sample's code never depends on its batch mates
    a = torch.tensor([[0.3, 0.6, 0.9]])
    b = torch.cat([a, torch.tensor([[0.5, 0.02, 0.8]])])
    enc = LatencyEncoder(20)
    assert torch.equal(enc(a)[:, 0], enc(b)[:, 0])


# ---------------------------------------------------------------- current
def test_current_repeats_input():
    x = torch.tensor([[0.1, 2.5], [-1.0, 0.0]])
    c = CurrentEncoder(7)(x)
    assert c.shape == (7, 2, 2) and c.dtype == torch.float32
    assert all(torch.equal(c[t], x) for t in range(7))
    c[0, 0, 0] = 9.0  # a real copy, not a view of the input
    assert x[0, 0] == 0.1
    with pytest.raises(ValueError, match="NaN"):
        CurrentEncoder(3)(torch.tensor([[float("inf")]]))
    with pytest.raises(ValueError, match="float"):
        CurrentEncoder(3)(torch.tensor([[1, 2]]))


# ---------------------------------------------------------------- event frames
def reference_frames(ev, n, W, H, P, start, width):
    b = np.floor((ev["t"] - start) * n / width).astype(int)
    keep = (b >= 0) & (b < n)
    ref = np.zeros((n, P, H, W))
    np.add.at(ref, (b[keep], ev["p"][keep].astype(int), ev["y"][keep], ev["x"][keep]), 1)
    return ref


@pytest.mark.parametrize("n_bins", [1, 3, 7, 33, 128])
def test_frames_sum_equals_event_count(n_bins):
    batch = [make_events(400, seed=s) for s in range(3)] + [make_events(0)]
    f = EventFrameEncoder((34, 34, 2), n_bins)(batch)
    assert f.shape == (n_bins, 4, 2, 34, 34) and f.dtype == torch.float32
    assert f.sum((0, 2, 3, 4)).tolist() == [400, 400, 400, 0]
    for i, ev in enumerate(batch[:3]):
        span = ev["t"][-1] - ev["t"][0] + 1
        ref = reference_frames(ev, n_bins, 34, 34, 2, ev["t"][0], span)
        assert np.array_equal(f[:, i].numpy(), ref)


def test_frames_fixed_duration_matches_tonic_toframe():
    from tonic.transforms import ToFrame

    ev = make_events(1000, t_max=400_000, seed=4)
    ev_before = ev.copy()
    n, window = 10, 30_000
    f = EventFrameEncoder((34, 34, 2), n, duration_us=n * window)([ev])[:, 0].numpy()
    assert np.array_equal(ev, ev_before)  # input not modified
    assert f.sum() == int((ev["t"] < n * window).sum())  # later events dropped
    tonic_frames = ToFrame(sensor_size=(34, 34, 2), time_window=window, start_time=0, end_time=n * window)(ev.copy())
    assert np.array_equal(f, tonic_frames[:n].astype(np.float32))


def test_frames_unsorted_and_single_channel_sensor():
    ev = make_events(300, seed=2)
    shuffled = ev[np.random.default_rng(0).permutation(len(ev))]
    enc = EventFrameEncoder((34, 34, 2), 5)
    assert torch.equal(enc([ev]), enc([shuffled]))
    # SHD-like (t, x, p) events on a (700, 1, 1) sensor -> (T, B, 1, 1, 700)
    shd = np.zeros(50, np.dtype([("t", int), ("x", int), ("p", int)]))
    shd["t"], shd["x"], shd["p"] = np.arange(50) * 1000, np.arange(50) * 14, 1
    f = EventFrameEncoder((700, 1, 1), 4)([shd, shd[:10]])
    assert f.shape == (4, 2, 1, 1, 700)
    assert f.sum((0, 2, 3, 4)).tolist() == [50, 10]
    assert f[:, 0, 0, 0].sum(0)[::14].tolist() == [1.0] * 50


def test_frames_bad_events():
    enc = EventFrameEncoder((34, 34, 2), 3)
    ev = make_events(10)
    ev["x"][0] = 40
    with pytest.raises(ValueError, match="outside sensor_size"):
        enc([ev])
    with pytest.raises(ValueError, match="fields"):
        enc([np.zeros(3, np.dtype([("a", int)]))])
    with pytest.raises(ValueError, match="list of event arrays"):
        enc(make_events(5))
    with pytest.raises(ValueError, match="no y field"):
        events_to_frames(np.zeros(3, np.dtype([("t", int), ("x", int), ("p", int)])), (34, 34, 2), 2)


def test_frames_on_real_nmnist():
    root = shared_data_dir()
    require(root / "NMNIST-small" / "test100.txt")
    from mesu_snn.datasets import load_nmnist

    ds = load_nmnist(root, "test")
    f = EventFrameEncoder(ds.sensor_size, 20)(ds.events)
    assert f.shape == (20, 100, 2, 34, 34)
    assert np.array_equal(f.sum((0, 2, 3, 4)).numpy(), ds.num_events)
    on = np.array([int((e["p"] == 1).sum()) for e in ds.events])
    assert np.array_equal(f[:, :, 1].sum((0, 2, 3)).numpy(), on)


def test_the_trainer_pipeline_uses_the_encoder_transforms():
    """build.InputPipeline composes the Tonic-style encoder classes: same output as calling them."""
    from mesu_snn.build import InputPipeline
    x = torch.rand(4, 8, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(InputPipeline("rate", 5, gain=0.8)(x, g1), RateEncoder(5, 0.8)(x, generator=g2).flatten(2))
    assert torch.equal(InputPipeline("latency", 5)(x), LatencyEncoder(5)(x).flatten(2))
    assert torch.equal(InputPipeline("current", 3, gain=2.0)(x), CurrentEncoder(3)(2.0 * x).flatten(2))


def test_tonic_sensor_size_follows_downsample_and_merge_polarities():
    """The sensor the model sees after the Tonic transforms equals the largest address Tonic's
    Downsample writes, + 1."""
    import tonic.transforms as T
    from mesu_snn.encoders import check_tonic_transforms, tonic_sensor_size
    specs = check_tonic_transforms([{"name": "Downsample", "spatial_factor": [0.5, 0.3]},
                                    {"name": "MergePolarities"}], 5)
    assert tonic_sensor_size(specs, (34, 34, 2)) == (17, 10, 1)
    ev = np.zeros(1, dtype=[("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
    ev["x"], ev["y"] = 33, 33
    out = T.Downsample(spatial_factor=(0.5, 0.3))(ev)
    assert (int(out["x"][0]) + 1, int(out["y"][0]) + 1) == (17, 10)
