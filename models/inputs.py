"""The input families networks are built for, and one sample's shape in each:
``mnist`` (also Fashion-MNIST), ``cifar10`` and ``imagenet`` (image folders)."""

INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}
