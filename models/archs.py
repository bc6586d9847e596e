"""Architectures, by name: a function ``(input family, num_classes) -> nn.Module``.
Registered as ``"module:function"`` (imported on first use); plug-ins come
through the ``biobench.archs`` entry points."""
from .registry import Registry

ARCHS = Registry("architecture", group="biobench.archs")
for _name, _target in (("fc", "fully_connected"), ("lc", "locally_connected"), ("conv", "convolutional")):
    ARCHS.register(_name, f"models.networks:{_target}")
