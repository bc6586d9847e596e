import os

import pytest
import torch

from helpers import make_tiny_mnist

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def tiny_root(tmp_path):
    root = tmp_path / "data"
    make_tiny_mnist(str(root))
    return str(root)


@pytest.fixture
def shared_data():
    root = os.environ.get("BIOBENCH_DATA") or SHARED_DATA
    if not os.path.isfile(os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte")):
        pytest.skip("real MNIST not found (set BIOBENCH_DATA to a torchvision data root)")
    return root


@pytest.fixture
def float64():
    """Tensors default to float64 inside the test, for comparisons to rounding."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
