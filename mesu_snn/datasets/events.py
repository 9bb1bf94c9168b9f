"""EventDataset: a list of Tonic-style structured event arrays with labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


class EventDataset:
    """Event recordings held in memory, indexed like a Tonic dataset.

    ``events[i]`` is a numpy structured array with Tonic's field names
    (``x``, ``y``, ``t``, ``p``; SHD has no ``y``), ``t`` in microseconds.
    ``labels`` is an int64 tensor (N,). ``sensor_size`` is Tonic's (W, H, P).
    ``transform`` (optional) is applied to the event array in ``__getitem__``;
    ``ds[i]`` returns ``(events, label)`` with ``label`` an int.
    """

    def __init__(
        self,
        events: Sequence[np.ndarray],
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        sensor_size: tuple[int, int, int],
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if len(events) != len(labels):
            raise ValueError(f"{len(events)} event arrays but {len(labels)} labels")
        if len(sensor_size) != 3 or any(int(s) < 1 for s in sensor_size):
            raise ValueError(f"sensor_size must be 3 positive ints (W, H, P), got {sensor_size}")
        self.events = list(events)
        self.labels = labels
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        ev = self.events[index]
        if self.transform is not None:
            ev = self.transform(ev)
        return ev, int(self.labels[index])

    def get_events(self, indices: Sequence[int] | torch.Tensor) -> list[np.ndarray]:
        """Transformed event arrays for ``indices`` (a batch, no labels)."""
        return [self[int(i)][0] for i in indices]

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> EventDataset:
        """New dataset sharing the arrays (no copy) for the given indices."""
        idx = [int(i) for i in indices]
        return EventDataset([self.events[i] for i in idx], self.labels[idx], self.sensor_size, self.transform)

    def with_transform(self, transform: Callable[[np.ndarray], np.ndarray]) -> EventDataset:
        """Same arrays, with ``transform`` applied after the existing one."""
        if self.transform is None:
            composed = transform
        else:
            first = self.transform

            def composed(ev: np.ndarray) -> np.ndarray:
                return transform(first(ev))

        return EventDataset(self.events, self.labels, self.sensor_size, composed)

    @property
    def num_events(self) -> np.ndarray:
        """Number of events per recording (N,)."""
        return np.array([len(e) for e in self.events], dtype=np.int64)

    def __repr__(self) -> str:
        return f"EventDataset(n={len(self)}, sensor_size={self.sensor_size}, classes={sorted(set(self.labels.tolist()))})"
