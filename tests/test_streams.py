"""Task streams: permuted / split / class-incremental tasks, batching, task-free streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_data import require, shared_data_dir

from mesu_snn.datasets import EventDataset, load_digits
from mesu_snn.encoders import EventFrameEncoder
from mesu_snn.streams import (
    PermutedInputs,
    TaskFreeStream,
    TaskStream,
    class_incremental_tasks,
    permuted_tasks,
    split_tasks,
)

EV_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])


def toy(n_train=120, n_test=40, n_classes=6, shape=(4, 5)):
    """Inputs whose first feature is the sample id (unique), labels cycling over classes."""
    g = torch.Generator().manual_seed(0)
    xtr = torch.rand(n_train, *shape, generator=g)
    xte = torch.rand(n_test, *shape, generator=g)
    xtr.view(n_train, -1)[:, 0] = torch.arange(n_train).float()
    xte.view(n_test, -1)[:, 0] = -1 - torch.arange(n_test).float()
    return xtr, torch.arange(n_train) % n_classes, xte, torch.arange(n_test) % n_classes


def toy_events(n=12, W=6, H=5, seed=0):
    rng = np.random.default_rng(seed)
    evs = []
    for _ in range(n):
        m = int(rng.integers(20, 60))
        e = np.zeros(m, EV_DTYPE)
        e["x"], e["y"], e["p"] = rng.integers(0, W, m), rng.integers(0, H, m), rng.integers(0, 2, m)
        e["t"] = np.sort(rng.integers(0, 10_000, m))
        evs.append(e)
    return EventDataset(evs, np.arange(n) % 4, (W, H, 2))


# ---------------------------------------------------------------- permuted
def test_permuted_tasks_bijection_identity_and_values():
    xtr, ytr, xte, yte = toy()
    s = permuted_tasks(xtr, ytr, xte, yte, n_tasks=4, seed=3)
    assert isinstance(s, TaskStream) and len(s) == 4
    assert torch.equal(s[0].permutation, torch.arange(20))
    assert torch.equal(s[0].train_x[:], xtr)
    perms = [t.permutation for t in s]
    for p in perms:
        assert torch.equal(torch.sort(p).values, torch.arange(20))  # bijection
    assert len({tuple(p.tolist()) for p in perms}) == 4
    t2 = s[2]
    assert torch.equal(t2.train_x[:], xtr.reshape(120, -1)[:, perms[2]].reshape(120, 4, 5))
    assert torch.equal(t2.test_x[5], xte[5].reshape(-1)[perms[2]].reshape(4, 5))
    assert torch.equal(t2.train_y, ytr) and t2.classes == tuple(range(6))
    again = permuted_tasks(xtr, ytr, xte, yte, n_tasks=4, seed=3)
    assert all(torch.equal(a.permutation, b.permutation) for a, b in zip(s, again))
    other = permuted_tasks(xtr, ytr, xte, yte, n_tasks=4, seed=4, first_identity=False)
    assert not torch.equal(other[0].permutation, torch.arange(20))
    assert not torch.equal(other[1].permutation, s[1].permutation)


def test_permuted_inputs_is_lazy_and_shares_data():
    xtr, ytr, xte, yte = toy()
    s = permuted_tasks(xtr, ytr, xte, yte, n_tasks=3, seed=0)
    assert isinstance(s[1].train_x, PermutedInputs)
    assert s[1].train_x.base is xtr and s[2].train_x.base is xtr
    assert s[1].train_x.shape == xtr.shape and len(s[1].train_x) == 120


def test_permuted_events_match_permuted_frames():
    ds = toy_events()
    s = permuted_tasks(ds, None, ds, None, n_tasks=3, seed=1)
    enc = EventFrameEncoder(ds.sensor_size, 4)
    perm = s[2].permutation
    assert torch.equal(torch.sort(perm).values, torch.arange(30))
    for i in range(len(ds)):
        ev_perm, label = s[2].train_x[i]
        ev, label0 = ds[i]
        assert label == label0 and len(ev_perm) == len(ev)
        assert np.array_equal(ev_perm["t"], ev["t"]) and np.array_equal(ev_perm["p"], ev["p"])
        assert ev_perm["x"].max() < 6 and ev_perm["y"].max() < 5
        f, fp = enc([ev]), enc([ev_perm])  # (T, 1, P, H, W)
        expected = f.reshape(4, 1, 2, 30)[..., perm].reshape(fp.shape)
        assert torch.equal(fp, expected)
    ev0, _ = s[0].train_x[3]
    assert np.array_equal(ev0, ds[3][0])  # first task is the identity
    assert np.array_equal(ds.events[3], ds[3][0])  # the stored arrays are untouched


def test_permuted_real_nmnist_events():
    root = shared_data_dir()
    require(root / "NMNIST-small" / "test100.txt")
    from mesu_snn.datasets import load_nmnist

    ds = load_nmnist(root, "test").subset(range(10))
    s = permuted_tasks(ds, None, ds, None, n_tasks=2, seed=0)
    ev, _ = s[1].train_x[0]
    a = ds[0][0]["y"].astype(int) * 34 + ds[0][0]["x"]
    b = ev["y"].astype(int) * 34 + ev["x"]
    inv = torch.argsort(s[1].permutation).numpy()
    assert np.array_equal(b, inv[a])
    assert ev["x"].max() <= 33 and ev["y"].max() <= 33


# ---------------------------------------------------------------- split / class-incremental
def test_split_tasks_global_and_remapped_labels():
    xtr, ytr, xte, yte = toy()
    s = split_tasks(xtr, ytr, xte, yte)
    assert [t.classes for t in s] == [(0, 1), (2, 3), (4, 5)]
    for t in s:
        assert set(t.train_y.tolist()) == set(t.classes) and set(t.test_y.tolist()) == set(t.classes)
        ids = t.train_x.reshape(len(t.train_x), -1)[:, 0].long()
        assert torch.equal(ytr[ids], t.train_y)  # inputs stay paired with their labels
    assert sum(len(t.train_y) for t in s) == 120 and s.classes == tuple(range(6))
    r = split_tasks(xtr, ytr, xte, yte, class_groups=[[5, 2], [0, 1, 3]], remap_labels=True)
    assert r[0].classes == (5, 2) and r[0].label_map == {5: 0, 2: 1}
    assert set(r[1].train_y.tolist()) == {0, 1, 2}
    ids = r[0].train_x.reshape(len(r[0].train_x), -1)[:, 0].long()
    assert torch.equal(torch.where(ytr[ids] == 5, 0, 1), r[0].train_y)
    assert 4 not in {c for t in r for c in t.classes}


@pytest.mark.parametrize(
    "groups, match",
    [([[0, 1], [1, 2]], "overlap"), ([[0, 9]], "absent"), ([[]], "non-empty"), ([], "non-empty")],
)
def test_split_tasks_bad_groups(groups, match):
    xtr, ytr, xte, yte = toy()
    with pytest.raises(ValueError, match=match):
        split_tasks(xtr, ytr, xte, yte, class_groups=groups)


def test_split_events_and_bad_inputs():
    ds = toy_events()
    s = split_tasks(ds, None, ds, None, class_groups=[[0, 1], [2, 3]])
    assert isinstance(s[0].train_x, EventDataset) and len(s[0].train_x) == 6
    assert set(s[1].train_x.labels.tolist()) == {2, 3}
    assert s[1].train_x.events[0] is ds.events[2]  # subsets share arrays
    xtr, ytr, xte, yte = toy()
    with pytest.raises(ValueError, match="labels must have shape"):
        split_tasks(xtr, ytr[:-1], xte, yte)
    with pytest.raises(ValueError, match="integers"):
        split_tasks(xtr, ytr.float(), xte, yte)
    with pytest.raises(ValueError, match="differ from the EventDataset"):
        split_tasks(ds, torch.zeros(12, dtype=torch.long), ds, None)
    with pytest.raises(ValueError, match="n_tasks"):
        permuted_tasks(xtr, ytr, xte, yte, n_tasks=0)
    with pytest.raises(ValueError, match="both be tensors or both EventDatasets"):
        permuted_tasks(xtr, ytr, ds, None, n_tasks=2)


def test_class_incremental_tasks():
    xtr, ytr, xte, yte = toy()
    s = class_incremental_tasks(xtr, ytr, xte, yte, classes_per_task=3)
    assert [t.classes for t in s] == [(0, 1, 2), (3, 4, 5)]
    assert all(t.label_map is None for t in s) and set(s[1].train_y.tolist()) == {3, 4, 5}
    a = class_incremental_tasks(xtr, ytr, xte, yte, 2, seed=5)
    b = class_incremental_tasks(xtr, ytr, xte, yte, 2, seed=5)
    assert [t.classes for t in a] == [t.classes for t in b]
    assert sorted(c for t in a for c in t.classes) == list(range(6))
    orders = {tuple(c for t in class_incremental_tasks(xtr, ytr, xte, yte, 2, seed=k) for c in t.classes) for k in range(6)}
    assert len(orders) > 1
    c = class_incremental_tasks(xtr, ytr, xte, yte, 2, class_order=[4, 5, 0, 1, 2, 3])
    assert c[0].classes == (4, 5)
    with pytest.raises(ValueError, match="permutation of the classes"):
        class_incremental_tasks(xtr, ytr, xte, yte, 2, class_order=[0, 1, 2])


# ---------------------------------------------------------------- batching
def test_event_batches_of_the_task_free_stream():
    ds = toy_events()
    es = permuted_tasks(ds, None, ds, None, 2, seed=0)
    x, y = next(iter(es.task_free(5)))
    assert isinstance(x, list) and len(x) == 5 and x[0].dtype == EV_DTYPE and y.shape == (5,)
    assert EventFrameEncoder(ds.sensor_size, 3)(x).shape == (3, 5, 2, 5, 6)


def test_subsample_balanced_deterministic():
    xtr, ytr, xte, yte = toy(n_train=300, n_test=90)
    s = permuted_tasks(xtr, ytr, xte, yte, 2, seed=0)
    sub = s.subsample(30, 12, seed=4)
    assert [len(t.train_y) for t in sub] == [30, 30] and [len(t.test_y) for t in sub] == [12, 12]
    assert torch.bincount(sub[0].train_y).tolist() == [5] * 6
    assert torch.bincount(sub[1].test_y).tolist() == [2] * 6
    ids = sub[1].train_x.base.reshape(30, -1)[:, 0].long()
    assert torch.equal(ytr[ids], sub[1].train_y)
    assert torch.equal(sub[1].train_x[:], xtr[ids].reshape(30, -1)[:, s[1].permutation].reshape(30, 4, 5))
    again = s.subsample(30, 12, seed=4)
    assert torch.equal(again[0].train_x[:], sub[0].train_x[:])
    other = s.subsample(30, 12, seed=5)[0].train_x.base.reshape(30, -1)[:, 0]
    assert not torch.equal(other, sub[0].train_x.base.reshape(30, -1)[:, 0])
    assert len(s.subsample(10)[0].test_y) == 90  # None keeps all test samples
    es = permuted_tasks(toy_events(), None, toy_events(), None, 2).subsample(4, 4)
    assert torch.bincount(es[0].train_y).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="n_train_per_task"):
        s.subsample(0)


# ---------------------------------------------------------------- task-free
def _ids(x):
    return x.reshape(len(x), -1)[:, 0].long()


@pytest.mark.parametrize("boundary", ["sharp", "blurred"])
def test_task_free_covers_all_without_boundary_signal(boundary):
    xtr, ytr, xte, yte = toy(n_train=240)
    s = split_tasks(xtr, ytr, xte, yte)  # 3 tasks of 80
    tf = s.task_free(batch_size=10, boundary=boundary, transition=0.5, seed=2)
    assert isinstance(tf, TaskFreeStream)
    batches = list(tf)
    assert all(len(b) == 2 for b in batches) and len(batches) == len(tf) == 24
    ids = torch.cat([_ids(x) for x, _ in batches])
    assert torch.equal(torch.sort(ids).values, torch.arange(240))  # every sample exactly once
    assert torch.equal(torch.cat([y for _, y in batches]), ytr[ids])
    again = list(tf)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    same = list(TaskFreeStream(s, 10, boundary, 0.5, seed=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, same))
    assert not torch.equal(ids, torch.cat([_ids(x) for x, _ in s.task_free(10, boundary, 0.5, seed=3)]))
    tids, sids = tf.schedule()
    assert torch.equal(torch.cat([s[int(k)].train_x[int(i)].reshape(1, -1)[:, 0] for k, i in zip(tids, sids)]).long(), ids)


def test_task_free_sharp_vs_blurred_transition():
    xtr, ytr, xte, yte = toy(n_train=600, n_classes=6)
    s = split_tasks(xtr, ytr, xte, yte)  # 3 tasks x 200
    sharp, _ = s.task_free(20, "sharp", seed=0).schedule()
    assert torch.equal(sharp, torch.arange(3).repeat_interleave(200))
    blurred, _ = s.task_free(20, "blurred", transition=0.5, seed=0).schedule()  # window of 100 samples
    assert torch.equal(torch.bincount(blurred), torch.tensor([200, 200, 200]))
    assert not torch.equal(blurred, sharp)
    pos = torch.arange(600)
    for b in (200, 400):  # both tasks inside the window around each boundary
        window = blurred[(pos >= b - 50) & (pos < b + 50)]
        assert set(window.tolist()) == {b // 200 - 1, b // 200}
    assert torch.all(blurred[:150] == 0) and torch.all(blurred[250:350] == 1) and torch.all(blurred[450:] == 2)
    # only consecutive tasks mix: task 2 never precedes a task-0 sample
    last0 = torch.nonzero(blurred == 0).max()
    first2 = torch.nonzero(blurred == 2).min()
    assert last0 < first2
    # share of the next task grows across the window
    early = (blurred[150:200] == 1).float().mean()
    late = (blurred[200:250] == 1).float().mean()
    assert 0 < early < late < 1


def test_task_free_events_and_validation():
    ds = toy_events()
    s = permuted_tasks(ds, None, ds, None, 2, seed=0)
    batches = list(s.task_free(5, "blurred", transition=1.0, seed=0))
    assert sum(len(y) for _, y in batches) == 24 and isinstance(batches[0][0], list)
    assert all(len(x) == len(y) for x, y in batches)
    xtr, ytr, xte, yte = toy()
    ts = split_tasks(xtr, ytr, xte, yte)
    with pytest.raises(ValueError, match="boundary"):
        ts.task_free(8, boundary="soft")
    with pytest.raises(ValueError, match="transition"):
        ts.task_free(8, boundary="blurred", transition=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        ts.task_free(0)
    with pytest.raises(ValueError, match="at least one task"):
        TaskStream([])


def test_digits_permuted_stream_end_to_end():
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    s = permuted_tasks(xtr, ytr, xte, yte, n_tasks=3, seed=0).subsample(100, 50, seed=0)
    n = 0
    for x, y in s.task_free(32):
        assert x.shape[1:] == (8, 8) and x.dtype == torch.float32
        n += len(y)
    assert n == 300
