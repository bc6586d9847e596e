"""Datasets, decoded once into uint8 tensors held in memory.

Training slices batches straight from these tensors on the target device;
there is no per-sample DataLoader. Image folders (ImageNet layout, and the
JPEG copy of CIFAR-10) are decoded once and cached on disk under the user's
cache folder (never inside the data root, which may be read-only).
"""
import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from models.registry import Registry

from .errors import DataError
from .io import atomic_path
from .paths import DATA_ENV

CACHE_ENV = "BIOBENCH_CACHE"
# name -> a loader: data root -> the dataset
DATASETS: "Registry[Callable[[str], InMemoryDataset]]" = Registry("dataset", group="biobench.datasets")




def default_data_dir():
    return os.environ.get(DATA_ENV) or "data"


def cache_dir():
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "biobench")
    return base


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self):
        return self.labels.shape[0]

    def to(self, device):
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, index):
        return Split(self.images[index], self.labels[index])


@dataclass
class InMemoryDataset:
    """A dataset decoded into uint8 tensors (not a torch ``Dataset``: batches are slices)."""
    name: str
    family: str  # input family of the networks: mnist, cifar10, imagenet
    train: Split
    test: Split
    classes: list
    augment_default: bool = False
    mean: torch.Tensor = field(default=None)
    std: torch.Tensor = field(default=None)

    def __post_init__(self):
        if self.mean is None:
            self.mean, self.std = channel_stats(self.train.images)

    @property
    def input_shape(self):
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self):
        return len(self.classes)


def channel_stats(images, chunk=8192):
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        block = images[start:start + chunk].to(torch.float64).div_(255)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.pow(2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean ** 2).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


# torchvision datasets ------------------------------------------------------------
def _torchvision_split(cls, root, train, folder_hint):
    where = os.path.join(os.path.abspath(root), folder_hint)
    present = os.path.isdir(where) and any(os.scandir(where))
    if not present:
        try:
            cls(root, train=train, download=True)
        except Exception as exc:  # offline, torchvision raises several types
            raise DataError(
                f"{cls.__name__} not found under {where} and it could not be downloaded "
                f"({type(exc).__name__}); put the files there, or point --data-dir / ${DATA_ENV} at a "
                f"torchvision data root that has them") from None
    try:
        ds = cls(root, train=train, download=False)
        split = _as_split(ds)
    except Exception as exc:  # torchvision asserts / raises on truncated or corrupt files
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise DataError(f"{cls.__name__} files under {where} are missing, truncated or corrupt ({detail}); "
                        f"replace them with intact copies") from None
    return split, list(ds.classes)


def _as_split(ds):
    images = torch.as_tensor(ds.data)
    if images.dtype != torch.uint8 or images.dim() not in (3, 4):
        raise ValueError(f"images are {images.dtype} of shape {list(images.shape)}, expected uint8 images")
    if images.dim() == 3:  # MNIST-style [N, H, W]
        images = images.unsqueeze(1)
    else:  # CIFAR-style [N, H, W, C]
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(ds.classes)):
        raise ValueError(f"labels outside 0..{len(ds.classes) - 1}")
    return Split(images.contiguous(), labels)


def _load_torchvision(name, cls, family, folder_hint, augment=False):
    def load(root):
        train, classes = _torchvision_split(cls, root, True, folder_hint)
        test, _ = _torchvision_split(cls, root, False, folder_hint)
        return InMemoryDataset(name, family, train, test, classes, augment_default=augment)
    return load


def _register_torchvision():
    from torchvision import datasets as tvd
    DATASETS.register("mnist", _load_torchvision("mnist", tvd.MNIST, "mnist", "MNIST/raw"))
    DATASETS.register("fashion-mnist", _load_torchvision("fashion-mnist", tvd.FashionMNIST, "mnist",
                                                         "FashionMNIST/raw"))
    DATASETS.register("cifar10", _load_torchvision("cifar10", tvd.CIFAR10, "cifar10",
                                                   "cifar-10-batches-py", augment=True))


# image folders -----------------------------------------------------------------
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _list_image_folder(folder):
    if not os.path.isdir(folder):
        raise DataError(f"image folder {os.path.abspath(folder)} does not exist; expected "
                        f"<folder>/<class name>/<image files>")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DataError(f"image folder {os.path.abspath(folder)} has no class sub-folders")
    files, ignored = [], 0
    for label, name in enumerate(classes):
        for entry in sorted(os.scandir(os.path.join(folder, name)), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append((entry.path, label, entry.stat().st_size, entry.stat().st_mtime_ns))
            elif entry.is_file():
                ignored += 1
    if ignored:
        warnings.warn(f"{ignored} file(s) in {folder} are not images ({', '.join(IMAGE_EXTENSIONS)}) and were ignored")
    if not files:
        raise DataError(f"image folder {os.path.abspath(folder)} has no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    return classes, files


def _decode_image(path, size):
    """RGB uint8 [3, size, size]; other sizes: shorter side resized to ``size``,
    then centre-cropped. Returns (tensor, whether it was resized)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            resized = image.size != (size, size)
            if resized:
                scale = size / min(image.size)
                width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
                image = image.resize((width, height), Image.BILINEAR)
                left, top = (width - size) // 2, (height - size) // 2
                image = image.crop((left, top, left + size, top + size))
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}".splitlines()[0]) from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1), resized


def _decode_folder(files, size):
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    resized = 0
    for i, (path, _, _, _) in enumerate(files):
        images[i], was_resized = _decode_image(path, size)
        resized += was_resized
    if resized:
        warnings.warn(f"{resized} of {len(files)} images were not {size}x{size}; resized (shorter "
                      f"side to {size}) and centre-cropped")
    labels = torch.tensor([label for _, label, _, _ in files], dtype=torch.long)
    return Split(images, labels)


def load_image_folder(folder, size):
    """Decode ``folder`` (``<class>/<image>``) to ``size`` x ``size`` RGB, cached."""
    classes, files = _list_image_folder(folder)
    key = hashlib.sha256(repr(("pil-v1", os.path.abspath(folder), size, files)).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), "images", f"{os.path.basename(os.path.normpath(folder))}-{key}.pt")
    if os.path.exists(path):
        try:
            cached = torch.load(path, weights_only=True)
            return Split(cached["images"], cached["labels"]), classes
        except Exception:
            pass  # a damaged cache is rebuilt below
    split = _decode_folder(files, size)
    try:
        with atomic_path(path) as tmp:
            torch.save({"images": split.images, "labels": split.labels}, tmp)
    except OSError as exc:
        warnings.warn(f"could not cache decoded images at {path}: {exc}")
    return split, classes


def _folder_dataset(name, family, subdir, size, augment, test_names=("test", "val")):
    def load(root):
        base = os.path.join(root, subdir) if subdir else root
        test_dir = next((os.path.join(base, t) for t in test_names
                         if os.path.isdir(os.path.join(base, t))), None)
        if not os.path.isdir(os.path.join(base, "train")) or test_dir is None:
            raise DataError(f"{name}: expected {os.path.abspath(base)}/train and "
                            f"{os.path.abspath(base)}/{{{','.join(test_names)}}} as image folders; "
                            f"point --data-dir / ${DATA_ENV} at the folder that holds them")
        train, classes = load_image_folder(os.path.join(base, "train"), size)
        test, test_classes = load_image_folder(test_dir, size)
        if test_classes != classes:
            raise DataError(f"{name}: class folders differ between train ({len(classes)}) and "
                            f"{os.path.basename(test_dir)} ({len(test_classes)})")
        return InMemoryDataset(name, family, train, test, classes, augment_default=augment)
    return load


DATASETS.register("cifar10-jpeg", _folder_dataset("cifar10-jpeg", "cifar10", "CIFAR10-JPEG", 32, True))
DATASETS.register("imagefolder", _folder_dataset("imagefolder", "imagenet", "", 224, True))
_register_torchvision()


def load_dataset(name, root=None):
    root = root or default_data_dir()
    return DATASETS.get(name)(root)


# splits --------------------------------------------------------------------------
def stratified_subset(labels, size, seed=0):
    """Indices of ``size`` samples with the classes in the training set's
    proportions, the same for every run (fixed ``seed``): a random order,
    then classes taken round-robin by each sample's rank within its class."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels.cpu()[order]
    counts = torch.bincount(shuffled)
    rank = torch.empty(len(order), dtype=torch.float64)
    for label in range(len(counts)):
        where = (shuffled == label).nonzero().flatten()
        rank[where] = (torch.arange(len(where), dtype=torch.float64) + 0.5) / max(len(where), 1)
    keep = order[torch.sort(rank, stable=True).indices[:size]]
    return keep.sort().values


def training_splits(data, train_subset=0, val_split=0.0):
    """``(train, val or None)`` of ``data``'s training set: an optional
    class-stratified subset, then a validation split fixed for every seed and
    rule (seed 0)."""
    train = data.train
    if train_subset:
        if train_subset > len(train):
            raise DataError(f"--train-subset {train_subset} is larger than the {data.name} training set "
                            f"({len(train)} images)")
        train = train.subset(stratified_subset(train.labels, train_subset))
    if val_split <= 0:
        return train, None
    n_val = int(round(val_split * len(train)))
    # An empty split would record 0% validation error (and stop early on it), an empty training set divide by 0.
    if n_val == 0 or n_val == len(train):
        empty, size = ("validation", 0) if n_val == 0 else ("training", len(train) - n_val)
        raise DataError(f"--val-split {val_split:g} of {len(train)} training images leaves the {empty} split "
                        f"{size} images; choose a split that keeps at least one image on each side")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return train.subset(order[n_val:]), train.subset(order[:n_val])


# batches -------------------------------------------------------------------------
class Normalizer:
    """uint8 batch -> float, normalised per channel (one fused multiply-add)."""

    def __init__(self, mean, std, device):
        self.scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
        self.shift = (mean / std).view(1, -1, 1, 1).to(device)

    def __call__(self, images):
        return torch.addcmul(-self.shift, images.float(), self.scale)


def random_crop_flip(images, pad, generator):
    """Random crop after zero padding by ``pad``, and random horizontal flip,
    on a whole batch at once (``images``: float [N, C, H, W])."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    flip = torch.rand(n, 1, generator=generator, device=device) < 0.5
    rows = dy + torch.arange(h, device=device)
    cols = dx + torch.arange(w, device=device)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
