"""Random hyperparameter search per (dataset, arch, rule) cell, the protocol of
Bartunov et al. 2018: sample configurations, train each, choose on the
validation split only, then train the choice with several seeds.

Every trial is an ordinary run (its own folder and record under
``<search>/trials``), so a search resumes, runs in parallel and can be audited
exactly like a grid. Trial ``i`` is drawn from a generator seeded by
``(search_seed, i)``: more trials never change the earlier ones. The search's
own record, ``search.json`` (schema ``biobench.search/1``), lists every
trial's settings and validation error, the successive-halving rungs and the
choice.

Successive halving (optional, ``halving=eta``): every trial trains
``min_epochs``; the best ``1/eta`` (rounded up) continue to ``eta`` times as
many epochs (resumed from their checkpoints), and so on until ``epochs``.
Under a cosine schedule, whose rates depend on the run's length, a longer
trial is a run of its own (``RunConfig.identity``): each rung trains afresh.
"""
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from models import RULES

from .config import make_checked_rule, resolve_run_config, weight_decay_for
from .errors import ConfigError
from .io import write_json
from .records import PROTOCOL_FIELDS, SEARCH_NAME, SEARCH_SCHEMA, SEARCH_TRIALS, read_record

# Search always chooses on held-out training data; this much unless --val-split says otherwise.
DEFAULT_VAL_SPLIT = 0.1


@dataclass(frozen=True)
class Dimension:
    """One searched setting: ``log:LOW:HIGH`` (log-uniform), ``uniform:LOW:HIGH``,
    ``int:LOW:HIGH`` (inclusive) or ``choice:A,B,...``."""
    kind: str
    low: float = None
    high: float = None
    choices: tuple = ()

    @classmethod
    def parse(cls, text, name):
        kind, _, rest = text.partition(":")
        try:
            if kind == "choice":
                choices = tuple(float(v) for v in rest.split(","))
                if not choices:
                    raise ValueError
                return cls(kind, choices=choices)
            if kind in ("log", "uniform", "int"):
                low, high = (float(v) for v in rest.split(":"))
                if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                    raise ValueError
                if kind == "log" and low <= 0:
                    raise ValueError
                return cls(kind, low, high)
        except ValueError:
            pass
        raise ConfigError(f"search range {name}={text!r} is not one of log:LOW:HIGH (LOW > 0), "
                         f"uniform:LOW:HIGH, int:LOW:HIGH or choice:A,B,...")

    def sample(self, rng):
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "log":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.kind == "int":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        return float(rng.uniform(self.low, self.high))

    def text(self):
        if self.kind == "choice":
            return "choice:" + ",".join(f"{c:g}" for c in self.choices)
        return f"{self.kind}:{self.low:g}:{self.high:g}"


# The optimiser settings every search draws (Bartunov et al., appendix; the
# learning-rate range is wider than the paper's [1e-5, 3e-4] because some of
# its best values lie outside it).
OPTIMIZER_SPACE = {"lr": "log:1e-5:3e-3", "beta2": "choice:0.99,0.999", "eps": "choice:1e-4,1e-6,1e-8"}


def search_space(rule, overrides=None):
    """``{name: Dimension}``: the optimiser space, the rule's declared
    ``search_space`` and the user's ``overrides`` (``{name: spec text}``;
    only names of the optimiser settings or of the rule's options)."""
    rule_class = RULES.get(rule)
    specs = {**OPTIMIZER_SPACE, **rule_class.search_space}
    allowed = set(OPTIMIZER_SPACE) | set(rule_class.defaults)
    for name, text in (overrides or {}).items():
        if name not in allowed:
            raise ConfigError(f"--space {name}: not a setting of {rule}; allowed: {', '.join(sorted(allowed))}")
        specs[name] = text
    return {name: Dimension.parse(text, name) for name, text in sorted(specs.items())}


def sample_trials(space, trials, search_seed):
    """``trials`` settings dicts; trial ``i`` depends only on ``(search_seed, i)``."""
    samples = []
    for index in range(trials):
        rng = np.random.default_rng([search_seed, index])
        samples.append({name: dim.sample(rng) for name, dim in space.items()})
    return samples


def trial_config(base, rule, params, rule_options, epochs):
    """The run config of one trial: seed 0, ``params`` drawn from the space
    (optimiser settings and rule options) over the fixed ``base`` settings."""
    rule_params = {k: v for k, v in params.items() if k not in OPTIMIZER_SPACE}
    optimizer_params = {k: params[k] for k in OPTIMIZER_SPACE if k in params}
    return resolve_run_config({**base, **optimizer_params, "rule": rule, "seed": 0, "epochs": epochs},
                              {**rule_options, **rule_params})


def plan_search(dataset, arch, rule, options, rule_options, space_overrides=None, fixed=(), **search):
    """The :class:`Search` of one cell from the user's options: ``options``
    are the run settings (RunConfig fields), ``fixed`` the names the user set
    explicitly (a searched setting cannot also be fixed), ``search`` the
    Search fields (trials, epochs, search_seed, halving, min_epochs,
    final_seeds). Bad combinations are ConfigErrors."""
    space = search_space(rule, space_overrides)
    for name in sorted(set(fixed) & set(space)):
        flag = f"--{name}" if name in OPTIMIZER_SPACE else f"--rule-opt {name}"
        raise ConfigError(f"{flag} is searched; fix it with --space {name}=choice:VALUE instead")
    options = dict(options)
    if "val_split" not in fixed:
        options["val_split"] = DEFAULT_VAL_SPLIT
    if not options["val_split"]:
        raise ConfigError("--val-split 0: search chooses on a validation split, so it needs one in (0, 1), e.g. "
                          f"{DEFAULT_VAL_SPLIT} (the test set is never used for choosing)")
    typed = make_checked_rule(rule, rule_options)
    options["weight_decay"] = weight_decay_for(typed, options.get("weight_decay"))
    base = {k: v for k, v in options.items() if k not in space and k != "epochs"}
    return Search(dataset=dataset, arch=arch, rule=rule, space=space, base=base,
                  rule_options={k: typed.options[k] for k in rule_options}, **search)


def rung_epochs(epochs, halving, min_epochs):
    """Epochs of each successive-halving rung, the last being ``epochs``."""
    if not halving:
        return [epochs]
    rungs, current = [], max(1, min(min_epochs, epochs))
    while current < epochs:
        rungs.append(current)
        current *= halving
    return rungs + [epochs]


def best_validation_error(record):
    """The trial's selection score: its lowest validation error over epochs."""
    values = [v for v in record["curves"]["val_error"] if v is not None]
    if record["status"] not in ("complete",) or not values:
        return math.inf
    return min(values)


def choose(scores):
    """Index of the lowest validation score (ties: the earlier trial)."""
    return min(range(len(scores)), key=lambda i: (scores[i], i))


@dataclass
class Search:
    dataset: str
    arch: str
    rule: str
    trials: int
    epochs: int
    search_seed: int
    space: dict  # name -> Dimension
    base: dict  # RunConfig fields shared by every trial (no lr/beta2/eps when searched)
    rule_options: dict
    halving: int = 0
    min_epochs: int = 1
    final_seeds: int = 0

    def __post_init__(self):
        first = RULES.get(self.rule).first_forward_epoch
        shortest = rung_epochs(self.epochs, self.halving, self.min_epochs)[0]
        if shortest < first:
            option = "--min-epochs" if self.halving and shortest < self.epochs else "--epochs"
            raise ConfigError(f"{option} {shortest} is too short for {self.rule}: it changes the forward weights "
                             f"only from epoch {first} on, so every trial would score at chance; give {option} "
                             f"{first} or more")

    def identity(self):
        # "algo": the field name search records were first written with, and the optimiser
        # protocol hashed only when it is not the default: older searches keep their folders.
        base = {k: v for k, v in self.base.items() if PROTOCOL_FIELDS.get(k, object()) != v}
        blob = json.dumps({"dataset": self.dataset, "arch": self.arch, "algo": self.rule, "trials": self.trials,
                           "epochs": self.epochs, "search_seed": self.search_seed, "halving": self.halving,
                           "min_epochs": self.min_epochs, "rule_options": self.rule_options,
                           "space": {k: d.text() for k, d in self.space.items()}, "base": base},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def folder(self, out):
        return os.path.join(out, f"search-{self.dataset}-{self.arch}-{self.rule}-{self.identity()}")

    def configs(self, epochs):
        params = sample_trials(self.space, self.trials, self.search_seed)
        return params, [trial_config(dict(self.base, dataset=self.dataset, arch=self.arch), self.rule, p,
                                     self.rule_options, epochs) for p in params]

    def run(self, out, data_dir, executor=None, echo=print):
        """Run (or resume) the search, then the final seeds, with ``executor``
        (default: one local worker); returns the search record."""
        from .executors import ExecutorSettings, make_executor
        executor = executor or make_executor("local", ExecutorSettings(echo=echo))
        folder = self.folder(out)
        trials_dir = os.path.join(folder, SEARCH_TRIALS)
        record = self._record(folder)
        params, _ = self.configs(self.epochs)
        alive = list(range(self.trials))
        for rung, epochs in enumerate(rung_epochs(self.epochs, self.halving, self.min_epochs)):
            _, configs = self.configs(epochs)
            echo(f"search rung {rung + 1}: {len(alive)} trial(s) x {epochs} epoch(s)")
            counts = executor.run([configs[i] for i in alive], trials_dir, data_dir)
            if counts.get("stopped") or counts.get("deferred"):  # the deadline: choose nothing on half a rung
                return self._stopped(folder, record)
            records = {i: self._trial_record(trials_dir, configs[i]) for i in alive}
            counts = _status_counts(records.values())
            scores = {i: best_validation_error(records[i]) for i in alive}
            keep = alive if epochs == self.epochs else \
                sorted(alive, key=lambda i: (scores[i], i))[:math.ceil(len(alive) / self.halving)]
            record["rungs"] = record["rungs"][:rung] + [{"epochs": epochs, "trials": alive, "kept": keep,
                                                         "status_counts": counts}]
            for i in alive:
                record["trials"][i].update(run=configs[i].run_name(), epochs=epochs,
                                           best_val_error=None if math.isinf(scores[i]) else scores[i])
            write_json(os.path.join(folder, SEARCH_NAME), record)
            alive = keep
        finals = [i for i in alive if record["trials"][i]["best_val_error"] is not None]
        if not finals:
            record["status"] = "failed"
            write_json(os.path.join(folder, SEARCH_NAME), record)
            return record
        chosen = choose([record["trials"][i]["best_val_error"] for i in finals])
        index = finals[chosen]
        record["chosen"] = {"trial": index, "settings": params[index],
                            "best_val_error": record["trials"][index]["best_val_error"],
                            "run": record["trials"][index]["run"]}
        if self.final_seeds:
            _, configs = self.configs(self.epochs)
            final_dir = os.path.join(folder, "final")
            cells = fresh_seeds(configs[index], self.final_seeds)
            seeds = [c.seed for c in cells]
            echo(f"final: the chosen settings (trial {index}) with seeds {seeds[0]}..{seeds[-1]}")
            counts = executor.run(cells, final_dir, data_dir)
            if counts.get("stopped") or counts.get("deferred"):
                return self._stopped(folder, record)
            record["final"] = {"folder": "final", "seeds": seeds,
                               "status_counts": _status_counts(self._trial_record(final_dir, c) for c in cells)}
        record["status"] = "complete"
        write_json(os.path.join(folder, SEARCH_NAME), record)
        return record

    @staticmethod
    def _stopped(folder, record):
        """The deadline stopped a rung: the record says so; rerunning the search goes on."""
        write_json(os.path.join(folder, SEARCH_NAME), dict(record, status="running"))
        return dict(record, status="stopped")

    def _record(self, folder):
        params, _ = self.configs(self.epochs)
        return {"schema": SEARCH_SCHEMA, "status": "running", "dataset": self.dataset, "arch": self.arch,
                "algo": self.rule, "search_seed": self.search_seed, "epochs": self.epochs,
                "halving": self.halving, "min_epochs": self.min_epochs, "base": self.base,
                "rule_options": self.rule_options, "space": {k: d.text() for k, d in self.space.items()},
                "selection": "lowest validation error over epochs of each trial; the test set is never used",
                "trials": [{"trial": i, "settings": p, "run": None, "epochs": 0, "best_val_error": None}
                           for i, p in enumerate(params)],
                "rungs": [], "chosen": None, "final": None}

    @staticmethod
    def _trial_record(trials_dir, config):
        return read_record(os.path.join(trials_dir, config.run_name())) or {"status": "missing",
                                                                            "curves": {"val_error": []}}


def _status_counts(records):
    """``{status: count}`` of these run records as they stand (not just what
    this invocation trained), so a resumed search records the same."""
    counts = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return dict(sorted(counts.items()))


def fresh_seeds(config, count):
    """``config`` with seeds 1..``count``: the trials ran seed 0, whose result
    took part in the choice and so is optimistic."""
    return [dataclasses.replace(config, seed=seed) for seed in range(1, count + 1)]


def chosen_configs(searches, epochs, seeds, patience=0):
    """Run configs that train each finished search's chosen settings for
    ``epochs`` with fresh seeds 1..``seeds``; everything else as the search had it."""
    configs = []
    for record in searches:
        if record.get("status") != "complete" or not record.get("chosen"):
            continue
        base = dict(record["base"], dataset=record["dataset"], arch=record["arch"], patience=patience)
        chosen = trial_config(base, record["algo"], record["chosen"]["settings"], record["rule_options"], epochs)
        configs += fresh_seeds(chosen, seeds)
    return configs
