"""Architectures, by name: a function ``(input family, num_classes) -> nn.Module``.
Registered as ``"module:function"`` (imported on first use); plug-ins come
through the ``biobench.archs`` entry points."""
from .registry import Registry

ARCHS = Registry("architecture", group="biobench.archs")
for _name, _target in (("fc", "networks:fully_connected"), ("lc", "networks:locally_connected"),
                       ("conv", "networks:convolutional"), ("lenet", "zoo:lenet"), ("resnet20", "zoo:resnet20"),
                       ("resnet56", "zoo:resnet56")):
    ARCHS.register(_name, f"models.{_target}")
