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
from .records import LATER_FIELDS, PROTOCOL_FIELDS

# Records were first written with ``algo`` for the learning rule; they keep
# that field name (old records load unchanged), while the code says ``rule``.
RECORD_NAMES = {"rule": "algo"}
CODE_NAMES = {v: k for k, v in RECORD_NAMES.items()}


OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "multistep", "cosine")
LENGTH_DEPENDENT_SCHEDULES = ("cosine",)


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
    weight_decay: float = 0.0  # decoupled: per step, on every forward weight (see LearningRule.decay_weights)
    patience: int = 0  # stop once validation error has not improved for this many epochs (0: never)
    optimizer: str = "adam"  # adam | sgd (lr, betas and eps above; momentum for sgd)
    momentum: float = 0.0
    l2_penalty: float = 0.0  # coupled: l2_penalty * W added to the gradient (the optimisers' weight_decay)
    lr_schedule: str = "constant"  # constant | multistep | cosine (see learning_rate)
    lr_milestones: list = field(default_factory=list)  # multistep: epochs after which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1

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
        for more epochs (``--resume``, a grid rerun) keeps its folder; except
        under a schedule whose shape depends on the run's length (cosine),
        where a longer run is another run (its early epochs had larger
        rates), so ``epochs`` is hashed. Fields added after the first release
        are hashed only when set, so older runs keep their names."""
        fields = dict(self.as_record(), epochs=self.epochs if self.schedule_spans_the_run() else None)
        for key, unset in LATER_FIELDS.items():
            if fields[key] == unset:
                del fields[key]
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def schedule_spans_the_run(self):
        """Whether every epoch's learning rate depends on ``epochs`` (cosine);
        multistep's milestones are absolute epochs."""
        return self.lr_schedule in LENGTH_DEPENDENT_SCHEDULES

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


def check_protocol(options):
    """The optimiser settings make sense together (ConfigError otherwise)."""
    optimizer, schedule = options.get("optimizer", "adam"), options.get("lr_schedule", "constant")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"--lr-schedule {schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    if options.get("momentum") and optimizer != "sgd":
        raise ConfigError(f"--momentum {options['momentum']:g} applies to --optimizer sgd (Adam has --beta1)")
    if options.get("lr_milestones") and schedule != "multistep":
        raise ConfigError("--lr-milestones applies to --lr-schedule multistep")
    if schedule == "multistep" and not options.get("lr_milestones"):
        raise ConfigError("--lr-schedule multistep needs --lr-milestones, e.g. 50,75")
    gamma = options.get("lr_gamma", PROTOCOL_FIELDS["lr_gamma"])
    if gamma != PROTOCOL_FIELDS["lr_gamma"] and schedule != "multistep":
        # refused rather than ignored: it would change the run's name and table label, not its training
        raise ConfigError(f"--lr-gamma {gamma:g} applies to --lr-schedule multistep only (--lr-schedule is "
                          f"{schedule})")


def learning_rate(config, epoch):
    """The learning rate of 1-based ``epoch``: constant; multistep (times
    ``lr_gamma`` for every milestone M with epoch > M: milestones 50,75 train
    epochs 1-50 at lr, 51-75 at lr/10, 76- at lr/100, as torch's MultiStepLR
    stepped once per epoch); cosine (lr (1 + cos(pi (epoch - 1) / epochs)) / 2).
    A pure function of the config, so a resumed run needs no scheduler state."""
    import math
    if config.lr_schedule == "multistep":
        return config.lr * config.lr_gamma ** sum(epoch > m for m in config.lr_milestones)
    if config.lr_schedule == "cosine":
        return config.lr * (1 + math.cos(math.pi * (epoch - 1) / config.epochs)) / 2
    return config.lr


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
    check_protocol(resolved)
    if resolved.get("patience") and not resolved.get("val_split"):
        raise ConfigError(f"--patience {resolved['patience']} needs a validation split (--val-split > 0): early "
                          f"stopping looks at validation error, never at the test set")
    return RunConfig(**resolved)
