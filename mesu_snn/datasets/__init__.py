"""Dataset readers: MNIST/Fashion-MNIST (idx), N-MNIST and SHD (Tonic), sklearn digits."""

from .digits import load_digits
from .events import EventDataset
from .mnist import load_mnist, parse_idx, read_idx
from .nmnist import load_nmnist, read_nmnist_file
from .root import resolve_data_root
from .shd import load_shd, read_shd_file

__all__ = [
    "EventDataset",
    "load_digits",
    "load_mnist",
    "load_nmnist",
    "load_shd",
    "parse_idx",
    "read_idx",
    "read_nmnist_file",
    "read_shd_file",
    "resolve_data_root",
]
