"""A run's configuration and the one function that builds it from options.

``run``, ``grid``, ``search`` and ``grid --from-search`` all turn what the user
gave into a :class:`RunConfig` through :func:`resolve_run_config`, so a rule
option is typed, and a rule's default weight decay applied, in one place.
This module imports no torch: tables and reports read configs too.
"""
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from .errors import ConfigError
from .records import LATER_FIELDS

# Records were first written with ``algo`` for the learning rule; they keep
# that field name (old records load unchanged), while the code says ``rule``.
RECORD_NAMES = {"rule": "algo"}
CODE_NAMES = {v: k for k, v in RECORD_NAMES.items()}


@dataclass
class RunConfig:
    """Everything that defines a run's result (not where it runs or writes)."""
    dataset: str = "mnist"
    arch: str = "lc"
    rule: str = "bp"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    val_split: float = 0.0
    augment: bool = None  # None: the dataset's default (on for CIFAR-10 and image folders)
    train_subset: int = 0  # 0: the whole training set; else N samples, class-stratified (quick runs)
    rule_options: dict = field(default_factory=dict)
    eval_batch_size: int = 1000
    weight_decay: float = 0.0  # per step, on every forward weight (see LearningRule.decay_weights)
    patience: int = 0  # stop once validation error has not improved for this many epochs (0: never)

    def as_record(self):
        """The config as records store it (field names of the record schema)."""
        return {RECORD_NAMES.get(k, k): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_record(cls, fields):
        """The config of a record's (or a checkpoint's) ``config`` dict."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{CODE_NAMES.get(k, k): v for k, v in fields.items() if CODE_NAMES.get(k, k) in names})

    def identity(self):
        """Short hash of the config without ``epochs``: the same run continued
        for more epochs (``--resume``) keeps its folder. Fields added after
        the first release are hashed only when set, so older runs keep their
        names."""
        fields = dict(self.as_record(), epochs=None)
        for key, unset in LATER_FIELDS.items():
            if fields[key] == unset:
                del fields[key]
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def run_name(self):
        return f"{self.dataset}-{self.arch}-{self.rule}-seed{self.seed}-{self.identity()}"


def make_checked_rule(name, options):
    """The rule ``name`` built with ``options`` (typed and range-checked by the
    rule itself); a bad name or option is a ConfigError."""
    from models import make_rule
    try:
        return make_rule(name, **options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def weight_decay_for(rule, given):
    """The weight decay a run of ``rule`` (a rule instance) uses: the one
    given, else the rule's default (0, as in Bartunov et al., except
    Kolen-Pollack's)."""
    return rule.default_weight_decay if given is None else given


def resolve_run_config(options, rule_options=None):
    """The :class:`RunConfig` of ``options`` (RunConfig fields; ``weight_decay``
    None or absent means the rule's default) and ``rule_options`` (``{key:
    value}``, strings allowed: the rule types them)."""
    rule_options = dict(rule_options or {})
    rule = make_checked_rule(options["rule"], rule_options)
    resolved = dict(options, rule_options={key: rule.options[key] for key in rule_options},
                    weight_decay=weight_decay_for(rule, options.get("weight_decay")))
    unknown = sorted(set(resolved) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise ConfigError(f"unknown run setting(s) {', '.join(unknown)}")
    if resolved.get("patience") and not resolved.get("val_split"):
        raise ConfigError(f"--patience {resolved['patience']} needs a validation split (--val-split > 0): early "
                          f"stopping looks at validation error, never at the test set")
    return RunConfig(**resolved)
