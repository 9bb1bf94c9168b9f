"""Continual-learning task streams: permuted, split and class-incremental tasks.

A :class:`TaskStream` hands training batches ``(x, y, task_index)`` task after
task; :class:`TaskFreeStream` hands plain ``(x, y)`` batches with no boundary
signal, the tasks following each other either sharply or with a blurred
transition. ``x`` is a tensor (N, ...) of static inputs (batches (B, ...)) or an
:class:`~mesu_snn.datasets.EventDataset` (batches: list of B event arrays).
Everything random is drawn from a ``torch.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .datasets.events import EventDataset


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


class PermutedInputs:
    """Lazy pixel permutation of a tensor (N, ...): ``view[idx]`` is computed on access.

    Features of each sample are flattened, reordered as ``flat[:, permutation]`` and
    reshaped back, so ``N`` permuted tasks share one copy of the data.
    """

    def __init__(self, base: torch.Tensor, permutation: torch.Tensor):
        d = int(np.prod(base.shape[1:]))
        if permutation.shape != (d,):
            raise ValueError(f"permutation has shape {tuple(permutation.shape)}, expected ({d},)")
        self.base = base
        self.permutation = permutation.long()

    def __len__(self) -> int:
        return len(self.base)

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def __getitem__(self, idx) -> torch.Tensor:
        x = self.base[idx]
        single = x.dim() == self.base.dim() - 1
        if single:
            x = x.unsqueeze(0)
        out = x.reshape(len(x), -1)[:, self.permutation].reshape(x.shape)
        return out[0] if single else out

    def materialize(self) -> torch.Tensor:
        """The whole permuted tensor (N, ...)."""
        return self[:]


@dataclass(frozen=True)
class PermuteAddresses:
    """Event transform: pixel address ``a = y * W + x`` moves to ``inverse[a]``.

    ``permutation`` follows the static convention (new pixel ``i`` shows old pixel
    ``permutation[i]``), so frames of permuted events equal permuted frames.
    """

    permutation: np.ndarray
    width: int

    def __call__(self, events: np.ndarray) -> np.ndarray:
        inv = np.empty_like(self.permutation)
        inv[self.permutation] = np.arange(len(self.permutation))
        out = events.copy()
        y = events["y"].astype(np.int64) if "y" in events.dtype.names else np.zeros(len(events), np.int64)
        a = inv[y * self.width + events["x"].astype(np.int64)]
        out["x"] = a % self.width
        if "y" in events.dtype.names:
            out["y"] = a // self.width
        return out


@dataclass
class Task:
    """One task: inputs (N, ...) or EventDataset, labels int64 (N,), classes (global ids)."""

    name: str
    train_x: object
    train_y: torch.Tensor
    test_x: object
    test_y: torch.Tensor
    classes: tuple[int, ...]
    permutation: torch.Tensor | None = None
    label_map: dict[int, int] | None = field(default=None)  # global -> local, when remapped

    def __post_init__(self):
        if len(self.train_x) != len(self.train_y) or len(self.test_x) != len(self.test_y):
            raise ValueError(
                f"task {self.name!r}: {len(self.train_x)} train inputs vs {len(self.train_y)} labels, "
                f"{len(self.test_x)} test inputs vs {len(self.test_y)} labels"
            )


def _labels(x, y, what: str) -> torch.Tensor:
    if isinstance(x, EventDataset):
        if y is None:
            return x.labels
        y = torch.as_tensor(y, dtype=torch.int64)
        if not torch.equal(y, x.labels):
            raise ValueError(f"{what}: labels differ from the EventDataset's own labels")
        return y
    if y is None:
        raise ValueError(f"{what}: labels are required for tensor inputs")
    if not isinstance(x, torch.Tensor | PermutedInputs):
        raise ValueError(f"{what}: inputs must be a torch.Tensor or EventDataset, got {type(x).__name__}")
    y = torch.as_tensor(y)
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"{what}: labels must have shape ({len(x)},), got {tuple(y.shape)}")
    if torch.is_floating_point(y):
        raise ValueError(f"{what}: labels must be integers, got {y.dtype}")
    return y.long()


def take(x, idx):
    """Rows ``idx`` (a sequence or int64 tensor) of raw inputs: a tensor-like (N, ...) -> (B, ...),
    an EventDataset -> list of B event arrays."""
    idx = torch.as_tensor(list(idx) if not isinstance(idx, torch.Tensor) else idx, dtype=torch.long)
    if isinstance(x, EventDataset):
        return x.get_events(idx.tolist())
    return x[idx]


def _subset(x, idx: torch.Tensor):
    if isinstance(x, EventDataset):
        return x.subset(idx.tolist())
    if isinstance(x, PermutedInputs):
        return PermutedInputs(x.base[idx], x.permutation)
    return x[idx]


def permuted_tasks(
    x_train,
    y_train,
    x_test,
    y_test,
    n_tasks: int,
    seed: int = 0,
    first_identity: bool = True,
) -> TaskStream:
    """Permuted tasks: task k applies one fixed random pixel permutation to every input.

    Tensors (N, ...): all features of a sample are permuted (lazily, see
    :class:`PermutedInputs`). EventDatasets: the (x, y) addresses of the sensor
    are permuted (polarity and time unchanged). Labels and classes are unchanged.
    """
    if int(n_tasks) != n_tasks or n_tasks < 1:
        raise ValueError(f"n_tasks must be an integer >= 1, got {n_tasks}")
    y_train, y_test = _labels(x_train, y_train, "train"), _labels(x_test, y_test, "test")
    events = isinstance(x_train, EventDataset)
    if events != isinstance(x_test, EventDataset):
        raise ValueError("train and test inputs must both be tensors or both EventDatasets")
    if events:
        if x_train.sensor_size != x_test.sensor_size:
            raise ValueError(f"sensor sizes differ: {x_train.sensor_size} vs {x_test.sensor_size}")
        W, H, _ = x_train.sensor_size
        d = W * H
    else:
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(f"train/test sample shapes differ: {x_train.shape[1:]} vs {x_test.shape[1:]}")
        d = int(np.prod(x_train.shape[1:]))
    classes = tuple(sorted(set(y_train.tolist())))
    g = _gen(seed)
    tasks = []
    for k in range(int(n_tasks)):
        perm = torch.arange(d) if (k == 0 and first_identity) else torch.randperm(d, generator=g)
        if events:
            t = PermuteAddresses(perm.numpy(), W)
            tr, te = x_train.with_transform(t), x_test.with_transform(t)
        else:
            tr, te = PermutedInputs(x_train, perm), PermutedInputs(x_test, perm)
        tasks.append(Task(f"permuted-{k}", tr, y_train, te, y_test, classes, permutation=perm))
    return TaskStream(tasks)


def split_tasks(
    x_train,
    y_train,
    x_test,
    y_test,
    class_groups: Sequence[Sequence[int]] | None = None,
    remap_labels: bool = False,
) -> TaskStream:
    """Split tasks: task k holds only the samples of ``class_groups[k]``.

    Default groups: consecutive pairs of the sorted classes ([0, 1], [2, 3], ...).
    Labels stay global (class ids) unless ``remap_labels``, which maps each group's
    classes to 0..len(group)-1 in group order (task-incremental, multi-head use);
    ``Task.classes`` always holds the global ids and ``Task.label_map`` the mapping.
    """
    y_train, y_test = _labels(x_train, y_train, "train"), _labels(x_test, y_test, "test")
    present = sorted(set(y_train.tolist()))
    if class_groups is None:
        class_groups = [present[i : i + 2] for i in range(0, len(present), 2)]
    groups = [tuple(int(c) for c in g) for g in class_groups]
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError(f"class_groups must be non-empty lists of classes, got {class_groups}")
    flat = [c for g in groups for c in g]
    if len(flat) != len(set(flat)):
        raise ValueError(f"class_groups overlap: {groups}")
    missing = [c for c in flat if c not in present]
    if missing:
        raise ValueError(f"class_groups name classes absent from the training labels: {missing}")
    tasks = []
    for k, grp in enumerate(groups):
        gt = torch.tensor(grp)
        itr = torch.nonzero(torch.isin(y_train, gt)).flatten()
        ite = torch.nonzero(torch.isin(y_test, gt)).flatten()
        ytr, yte = y_train[itr], y_test[ite]
        label_map = None
        if remap_labels:
            label_map = {c: i for i, c in enumerate(grp)}
            lut = torch.full((max(present + flat) + 1,), -1, dtype=torch.int64)
            lut[gt] = torch.arange(len(grp))
            ytr, yte = lut[ytr], lut[yte]
        name = "split-" + "-".join(str(c) for c in grp)
        tasks.append(Task(name, _subset(x_train, itr), ytr, _subset(x_test, ite), yte, grp, label_map=label_map))
    return TaskStream(tasks)


def class_incremental_tasks(
    x_train,
    y_train,
    x_test,
    y_test,
    classes_per_task: int = 2,
    class_order: Sequence[int] | None = None,
    seed: int | None = None,
) -> TaskStream:
    """Class-incremental tasks: new classes per task, labels global (single head).

    ``class_order`` defaults to the sorted classes, shuffled with ``seed`` when given;
    it is cut into chunks of ``classes_per_task``. Each task's test set holds its own
    classes; evaluating on all tasks seen so far gives the class-incremental score.
    """
    if int(classes_per_task) != classes_per_task or classes_per_task < 1:
        raise ValueError(f"classes_per_task must be an integer >= 1, got {classes_per_task}")
    y_tr = _labels(x_train, y_train, "train")
    present = sorted(set(y_tr.tolist()))
    if class_order is None:
        order = present
        if seed is not None:
            order = [present[i] for i in torch.randperm(len(present), generator=_gen(seed)).tolist()]
    else:
        order = [int(c) for c in class_order]
        if sorted(order) != present:
            raise ValueError(f"class_order {order} must be a permutation of the classes {present}")
    groups = [order[i : i + classes_per_task] for i in range(0, len(order), classes_per_task)]
    stream = split_tasks(x_train, y_tr, x_test, y_test, groups, remap_labels=False)
    for k, t in enumerate(stream.tasks):
        t.name = f"class-inc-{k}"
    return stream


def _balanced_pick(y: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` indices (sorted) with class counts as equal as possible, random within class."""
    if n >= len(y):
        return torch.arange(len(y))
    order = torch.randperm(len(y), generator=g)
    ys = y[order]
    rank = torch.empty(len(y), dtype=torch.int64)
    for c in torch.unique(ys):
        m = ys == c
        rank[m] = torch.arange(int(m.sum()))
    # primary key: rank within class; secondary: random position
    key = rank * len(y) + torch.arange(len(y))
    chosen = order[torch.argsort(key)[:n]]
    return torch.sort(chosen).values


class TaskStream:
    """Ordered list of :class:`Task` s with batching helpers (a read-only sequence)."""

    def __init__(self, tasks: Sequence[Task]):
        tasks = list(tasks)
        if not tasks:
            raise ValueError("a TaskStream needs at least one task")
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __repr__(self) -> str:
        return f"TaskStream({[(t.name, len(t.train_y), len(t.test_y)) for t in self.tasks]})"

    @property
    def classes(self) -> tuple[int, ...]:
        """Sorted union of the tasks' global classes."""
        return tuple(sorted({c for t in self.tasks for c in t.classes}))

    def subsample(self, n_train_per_task: int, n_test_per_task: int | None = None, seed: int = 0) -> TaskStream:
        """Class-balanced random subset of every task (keeps CI fast); None keeps all test samples."""
        for name, v in (("n_train_per_task", n_train_per_task), ("n_test_per_task", n_test_per_task)):
            if v is not None and (int(v) != v or v < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v}")
        g = _gen(seed)
        out = []
        for t in self.tasks:
            itr = _balanced_pick(t.train_y, int(n_train_per_task), g)
            ite = torch.arange(len(t.test_y)) if n_test_per_task is None else _balanced_pick(t.test_y, int(n_test_per_task), g)
            out.append(
                replace(t, train_x=_subset(t.train_x, itr), train_y=t.train_y[itr],
                        test_x=_subset(t.test_x, ite), test_y=t.test_y[ite])
            )
        return TaskStream(out)

    def task_free(
        self,
        batch_size: int,
        boundary: str = "sharp",
        transition: float = 0.2,
        epochs_per_task: int = 1,
        seed: int = 0,
    ) -> TaskFreeStream:
        """The same tasks as a :class:`TaskFreeStream` (no boundary signal)."""
        return TaskFreeStream(self, batch_size, boundary, transition, epochs_per_task, seed)


def _check_batch(batch_size: int, epochs: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs_per_task must be an integer >= 1, got {epochs}")


class TaskFreeStream:
    """Plain ``(x, y)`` batches over all tasks, with no task index or boundary signal.

    Each task contributes its training set ``epochs_per_task`` times (reshuffled each
    epoch) in task order. ``boundary="sharp"``: tasks follow each other abruptly.
    ``boundary="blurred"``: each sample's position in that sequence gets uniform
    jitter of total width ``transition * L`` (L = shortest task length in samples),
    so around each boundary the share of the next task rises linearly over a window of
    that width; away from boundaries only the order within a task changes, and with
    ``transition <= 1`` only consecutive tasks mix. Every sample appears exactly
    ``epochs_per_task`` times. Iterating twice gives the same batches.
    """

    def __init__(
        self,
        stream: TaskStream,
        batch_size: int,
        boundary: str = "sharp",
        transition: float = 0.2,
        epochs_per_task: int = 1,
        seed: int = 0,
    ):
        _check_batch(batch_size, epochs_per_task)
        if boundary not in ("sharp", "blurred"):
            raise ValueError(f"boundary must be 'sharp' or 'blurred', got {boundary!r}")
        if not 0 < transition <= 1:
            raise ValueError(f"transition must be in (0, 1] (fraction of the shortest task), got {transition}")
        kinds = {isinstance(t.train_x, EventDataset) for t in stream}
        if len(kinds) != 1:
            raise ValueError("all tasks must hold the same kind of inputs (tensors or EventDatasets)")
        self.stream = stream
        self.batch_size = int(batch_size)
        self.boundary = boundary
        self.transition = float(transition)
        self.epochs_per_task = int(epochs_per_task)
        self.seed = int(seed)
        self._task_ids, self._sample_ids = self._schedule()

    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = _gen(self.seed)
        tids, sids = [], []
        for k, t in enumerate(self.stream):
            n = len(t.train_y)
            for _ in range(self.epochs_per_task):
                sids.append(torch.randperm(n, generator=g))
                tids.append(torch.full((n,), k, dtype=torch.int64))
        tids, sids = torch.cat(tids), torch.cat(sids)
        if self.boundary == "blurred" and len(self.stream) > 1:
            shortest = min(len(t.train_y) for t in self.stream) * self.epochs_per_task
            width = self.transition * shortest
            pos = torch.arange(len(tids), dtype=torch.float64)
            key = pos + (torch.rand(len(tids), generator=g, dtype=torch.float64) - 0.5) * width
            order = torch.argsort(key, stable=True)
            tids, sids = tids[order], sids[order]
        return tids, sids

    def schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(task index, sample index) of every sample in presentation order (for evaluation only)."""
        return self._task_ids.clone(), self._sample_ids.clone()

    def __len__(self) -> int:
        return (len(self._task_ids) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[object, torch.Tensor]]:
        tasks = self.stream.tasks
        events = isinstance(tasks[0].train_x, EventDataset)
        for s in range(0, len(self._task_ids), self.batch_size):
            tid = self._task_ids[s : s + self.batch_size]
            sid = self._sample_ids[s : s + self.batch_size]
            y = torch.empty(len(tid), dtype=torch.int64)
            xs: list = [None] * len(tid)
            parts = []
            for k in torch.unique(tid).tolist():
                m = torch.nonzero(tid == k).flatten()
                y[m] = tasks[k].train_y[sid[m]]
                parts.append((m, take(tasks[k].train_x, sid[m])))
            if events:
                for m, evs in parts:
                    for j, ev in zip(m.tolist(), evs):
                        xs[j] = ev
                x = xs
            else:
                pos = torch.cat([m for m, _ in parts])
                x = torch.cat([v for _, v in parts])[torch.argsort(pos)]
            yield x, y
