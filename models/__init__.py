"""biobench models: layers, learning rules and the Bartunov et al. 2018 networks.

The names below are imported on first use (PEP 562), so reading the
registries' names (``cli.py table``, ``cite``) does not import torch.
"""
import importlib

_LAZY = {
    "LocallyConnected2d": "models.lc", "Conv2d": "models.layers", "Linear": "models.layers",
    "feedback_layers": "models.layers", "build_network": "models.archs",
    "parameter_counts": "models.networks", "ARCHS": "models.archs", "RULES": "models.rules",
    "make_rule": "models.rules",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
