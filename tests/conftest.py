import os
import struct

import pytest
import torch

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def write_idx_images(path, images):
    n, h, w = images.shape
    with open(path, "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, h, w))
        f.write(images.to(torch.uint8).numpy().tobytes())


def write_idx_labels(path, labels):
    with open(path, "wb") as f:
        f.write(struct.pack(">II", 2049, labels.shape[0]))
        f.write(labels.to(torch.uint8).numpy().tobytes())


def make_tiny_mnist(root, folder="MNIST", n_train=96, n_test=48, seed=0):
    """A learnable 10-class toy in MNIST's raw IDX format: each class lights
    up its own band of the 28x28 image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=g)
        for i, label in enumerate(labels.tolist()):
            images[i, 2 * label + 4:2 * label + 7, 4:24] += 180
        write_idx_images(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images.clamp(0, 255))
        write_idx_labels(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return root


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
