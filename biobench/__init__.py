"""biobench's public API, under a name no other project uses.

``models`` and ``benchmark`` are the folders the code lives in (the product's
layout), but a user's own ``models.py`` next to their script would shadow
them; users and plug-ins import from here instead::

    from biobench import FeedbackAlignment, LearningRule, LocallyConnected2d, RULES
"""
from benchmark import __version__
from benchmark.config import RunConfig
from benchmark.data import DATASETS, InMemoryDataset, Split
from benchmark.errors import BiobenchError
from benchmark.records import find_records, load_record
from models.archs import ARCHS
from models.convert import convert, plain_state_dict
from models.layers import Conv2d, Linear, feedback_layers
from models.lc import LocallyConnected2d
from models.networks import build_network, parameter_counts
from models.rules import RULES, make_rule
from models.rules.base import LearningRule
from models.rules.bp import Backprop
from models.rules.dfa import DirectFeedbackAlignment
from models.rules.fa import FeedbackAlignment
from models.rules.kp import KolenPollack
from models.rules.ldrl import LayerwiseDRL
from models.rules.sign import BatchRandomSignSymmetry, FixedRandomSignSymmetry, UniformSignSymmetry
from models.rules.tp import (
                             AOSDTPAlternating,
                             AOSDTPParallel,
                             DTPAlternating,
                             DTPParallel,
                             SDTPAlternating,
                             SDTPParallel,
                             TargetPropagation,
)

__all__ = [
    "__version__", "convert", "plain_state_dict", "RunConfig", "DATASETS", "InMemoryDataset", "Split",
    "BiobenchError", "find_records", "load_record", "ARCHS", "Conv2d", "Linear", "feedback_layers",
    "LocallyConnected2d", "build_network", "parameter_counts", "RULES", "make_rule", "LearningRule",
    "Backprop", "DirectFeedbackAlignment", "FeedbackAlignment", "KolenPollack", "LayerwiseDRL",
    "BatchRandomSignSymmetry", "FixedRandomSignSymmetry", "UniformSignSymmetry", "AOSDTPAlternating",
    "AOSDTPParallel", "DTPAlternating", "DTPParallel", "SDTPAlternating", "SDTPParallel", "TargetPropagation",
]
