"""Learning rules, by name. To add one: write a module with a
:class:`~models.rules.base.LearningRule` subclass and register it below
(``"module:Class"``: imported only when the rule is used)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..registry import Registry

if TYPE_CHECKING:
    from .base import LearningRule

RULES: Registry[type[LearningRule]] = Registry("learning rule", group="biobench.rules")
# Registration order is the order of presets and tables.
for _name, _target in (
        ("bp", "bp:Backprop"), ("fa", "fa:FeedbackAlignment"), ("dfa", "dfa:DirectFeedbackAlignment"),
        ("usf", "sign:UniformSignSymmetry"), ("brsf", "sign:BatchRandomSignSymmetry"),
        ("frsf", "sign:FixedRandomSignSymmetry"), ("kp", "kp:KolenPollack"),
        ("dtp-par", "tp:DTPParallel"), ("dtp-alt", "tp:DTPAlternating"), ("sdtp-par", "tp:SDTPParallel"),
        ("sdtp-alt", "tp:SDTPAlternating"), ("aosdtp-par", "tp:AOSDTPParallel"),
        ("aosdtp-alt", "tp:AOSDTPAlternating"), ("ldrl", "ldrl:LayerwiseDRL"),
        ("drtp", "drtp:DirectRandomTargetProjection"),
        ("pepita", "pepita:Pepita"), ("ff", "ff:ForwardForward"),
        ("pc", "pc:PredictiveCoding"), ("pc-rf", "pc:PredictiveCodingRandomFeedback"),
        ("ep", "ep:EquilibriumPropagation")):
    RULES.register(_name, f"{__name__}.{_target}")


def make_rule(name: str, **options: Any) -> LearningRule:
    return RULES.get(name)(**options)
