"""scikit-learn's bundled 8 x 8 digits: the offline default dataset."""

from __future__ import annotations

import numpy as np
import torch


def load_digits(
    split: str = "train", test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 (N, 8, 8) in [0, 1] (raw 0..16 divided by 16), labels int64 (N,).

    1797 samples, 10 classes, split by a stratified ``train_test_split``
    (``random_state=seed``); train and test of one seed are disjoint.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    sel = tr if split == "train" else te
    return torch.from_numpy(x[sel]), torch.from_numpy(y[sel])
