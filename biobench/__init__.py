"""biobench's public API, under a name no other project uses.

``models`` and ``benchmark`` are the folders the code lives in (the product's
layout), but a user's own ``models.py`` next to their script would shadow
them; users and plug-ins import from here instead::

    from biobench import FeedbackAlignment, LearningRule, LocallyConnected2d, RULES

Each name is imported on first use (PEP 562): a plug-in that imports one rule
class, loaded while the CLI lists names, pulls in that rule's module only.
"""
import importlib

from benchmark import __version__

# module -> the public names it defines; every built-in rule class is one of them
_LAZY = {
    "models.rules.base": ("LearningRule",),
    "models.rules.bp": ("Backprop",),
    "models.rules.fa": ("FeedbackAlignment",),
    "models.rules.dfa": ("DirectFeedbackAlignment",),
    "models.rules.drtp": ("DirectRandomTargetProjection",),
    "models.rules.sign": ("UniformSignSymmetry", "BatchRandomSignSymmetry", "FixedRandomSignSymmetry"),
    "models.rules.kp": ("KolenPollack",),
    "models.rules.tp": ("TargetPropagation", "DifferenceTargetPropagation", "SimplifiedDTP", "AuxiliaryOutputSDTP",
                        "DTPParallel", "DTPAlternating", "SDTPParallel", "SDTPAlternating", "AOSDTPParallel",
                        "AOSDTPAlternating"),
    "models.rules.ldrl": ("LayerwiseDRL",),
    "models.rules.pepita": ("Pepita",),
    "models.rules.ff": ("ForwardForward",),
    "models.rules.pc": ("PredictiveCoding", "PredictiveCodingRandomFeedback"),
    "models.rules.ep": ("EquilibriumPropagation",),
    "models.rules": ("RULES", "make_rule"),
    "models.archs": ("ARCHS", "build_network"),
    "models.inputs": ("INPUT_SHAPES",),
    "models.convert": ("convert", "plain_state_dict"),
    "models.layers": ("FeedbackLayer", "Linear", "Conv2d", "feedback_layers"),
    "models.lc": ("LocallyConnected2d",),
    "models.attention": ("MultiheadAttention",),
    "models.networks": ("parameter_counts",),
    "benchmark.errors": ("BiobenchError", "ConfigError"),
    "benchmark.config": ("RunConfig",),
    "benchmark.data": ("DATASETS", "InMemoryDataset", "Split"),
    "benchmark.executors": ("EXECUTORS",),
    "benchmark.records": ("find_records", "load_record"),
    "benchmark.train": ("Trainer",),
}
_ORIGIN = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["__version__", *_ORIGIN]


def __getattr__(name):
    if name not in _ORIGIN:
        raise AttributeError(f"module 'biobench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ORIGIN[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
