"""Architectures, by name: a function ``(input family, num_classes) -> nn.Module``.
Registered as ``"module:function"`` (imported on first use); plug-ins come
through the ``biobench.archs`` entry points. :func:`build_network` builds one
ready for a rule."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .inputs import INPUT_SHAPES
from .registry import Registry

if TYPE_CHECKING:
    from torch import nn

ARCHS: Registry[Callable[[str, int], nn.Module]] = Registry("architecture", group="biobench.archs")
for _name, _target in (("fc", "networks:fully_connected"), ("lc", "networks:locally_connected"),
                       ("conv", "networks:convolutional"), ("lenet", "zoo:lenet"), ("resnet20", "zoo:resnet20"),
                       ("resnet56", "zoo:resnet56"), ("vit", "vit:vision_transformer")):
    ARCHS.register(_name, f"models.{_target}")


def build_network(arch: str, family: str, num_classes: int) -> nn.Module:
    """The network ``arch`` for ``family`` inputs, its Linear and Conv2d layers
    biobench's (``models.convert.swap_layers``), ready for a rule."""
    # Imported here: listing ARCHS' names (the CLI's option checks) must not import torch.
    from .convert import record_layer_order, swap_layers
    from .zoo import TORCHVISION_PREFIX, torchvision_model
    if family not in INPUT_SHAPES:
        raise ValueError(f"unknown input family {family!r}; allowed: {', '.join(INPUT_SHAPES)}")
    if arch.startswith(TORCHVISION_PREFIX):
        # Code we did not write: its first and output layers are the forward
        # pass's, whatever order its __init__ registered them in.
        model = swap_layers(torchvision_model(arch[len(TORCHVISION_PREFIX):], family, num_classes))
        record_layer_order(model, INPUT_SHAPES[family])
        return model
    return swap_layers(ARCHS.get(arch)(family, num_classes))
