"""Learning rules, by name. To add one: write a module with a
:class:`~models.rules.base.LearningRule` subclass and register it below."""
from ..registry import Registry
from .base import LearningRule
from .bp import Backprop
from .dfa import DirectFeedbackAlignment
from .fa import FeedbackAlignment
from .kp import KolenPollack
from .ldrl import LayerwiseDRL
from .sign import BatchRandomSignSymmetry, FixedRandomSignSymmetry, UniformSignSymmetry
from .tp import (AOSDTPAlternating, AOSDTPParallel, DTPAlternating, DTPParallel, SDTPAlternating,
                 SDTPParallel)

RULES = Registry("learning rule", group="biobench.rules")
for _rule in (Backprop, FeedbackAlignment, DirectFeedbackAlignment, UniformSignSymmetry,
              BatchRandomSignSymmetry, FixedRandomSignSymmetry, KolenPollack,
              DTPParallel, DTPAlternating, SDTPParallel, SDTPAlternating, AOSDTPParallel,
              AOSDTPAlternating, LayerwiseDRL):
    RULES.register(_rule.name, _rule)


def make_rule(name, **options):
    return RULES.get(name)(**options)
