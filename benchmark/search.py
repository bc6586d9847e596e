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
"""
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from models import RULES

from .grid import run_grid
from .io import write_json
from .records import RECORD_NAME, SEARCH_NAME, SEARCH_TRIALS
from .train import RunConfig

SCHEMA = "biobench.search/1"


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
        raise ValueError(f"search range {name}={text!r} is not one of log:LOW:HIGH (LOW > 0), "
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


def search_space(algo, overrides=None):
    """``{name: Dimension}``: the optimiser space, the rule's declared
    ``search_space`` and the user's ``overrides`` (``{name: spec text}``;
    only names of the optimiser settings or of the rule's options)."""
    rule = RULES.get(algo)
    specs = {**OPTIMIZER_SPACE, **getattr(rule, "search_space", {})}
    allowed = set(OPTIMIZER_SPACE) | set(rule.defaults)
    for name, text in (overrides or {}).items():
        if name not in allowed:
            raise ValueError(f"--space {name}: not a setting of {algo}; allowed: {', '.join(sorted(allowed))}")
        specs[name] = text
    return {name: Dimension.parse(text, name) for name, text in sorted(specs.items())}


def sample_trials(space, trials, search_seed):
    """``trials`` settings dicts; trial ``i`` depends only on ``(search_seed, i)``."""
    samples = []
    for index in range(trials):
        rng = np.random.default_rng([search_seed, index])
        samples.append({name: dim.sample(rng) for name, dim in space.items()})
    return samples


def trial_config(base, algo, params, rule_options, epochs):
    """The run config of one trial (seed 0; the rule's options typed by the rule)."""
    from models import make_rule
    rule_params = {k: v for k, v in params.items() if k not in OPTIMIZER_SPACE}
    typed = make_rule(algo, **{**rule_options, **rule_params}).options
    options = {k: typed[k] for k in {**rule_options, **rule_params}}
    run = {k: params[k] for k in OPTIMIZER_SPACE if k in params}
    return RunConfig(**{**base, **run, "algo": algo, "seed": 0, "epochs": epochs, "rule_options": options})


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
    algo: str
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
        first = RULES.get(self.algo).first_forward_epoch
        shortest = rung_epochs(self.epochs, self.halving, self.min_epochs)[0]
        if shortest < first:
            option = "--min-epochs" if self.halving and shortest < self.epochs else "--epochs"
            raise ValueError(f"{option} {shortest} is too short for {self.algo}: it changes the forward weights "
                             f"only from epoch {first} on, so every trial would score at chance; give {option} "
                             f"{first} or more")

    def identity(self):
        blob = json.dumps({"dataset": self.dataset, "arch": self.arch, "algo": self.algo, "trials": self.trials,
                           "epochs": self.epochs, "search_seed": self.search_seed, "halving": self.halving,
                           "min_epochs": self.min_epochs, "rule_options": self.rule_options,
                           "space": {k: d.text() for k, d in self.space.items()}, "base": self.base},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def folder(self, out):
        return os.path.join(out, f"search-{self.dataset}-{self.arch}-{self.algo}-{self.identity()}")

    def configs(self, epochs):
        params = sample_trials(self.space, self.trials, self.search_seed)
        return params, [trial_config(dict(self.base, dataset=self.dataset, arch=self.arch), self.algo, p,
                                     self.rule_options, epochs) for p in params]

    def run(self, out, data_dir, device="auto", jobs=1, threads=None, echo=print, runner=None):
        """Run (or resume) the search, then the final seeds; returns the search
        record. ``runner(cells, out, data_dir)`` trains cells and returns
        ``{status: count}`` (default: a local grid)."""
        if runner is None:
            def runner(cells, folder, data):
                return run_grid(cells, folder, data, device=device, jobs=jobs, threads=threads, echo=echo)
        folder = self.folder(out)
        trials_dir = os.path.join(folder, SEARCH_TRIALS)
        record = self._record(folder)
        params, _ = self.configs(self.epochs)
        alive = list(range(self.trials))
        for rung, epochs in enumerate(rung_epochs(self.epochs, self.halving, self.min_epochs)):
            _, configs = self.configs(epochs)
            echo(f"search rung {rung + 1}: {len(alive)} trial(s) x {epochs} epoch(s)")
            runner([configs[i] for i in alive], trials_dir, data_dir)
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
            runner(cells, final_dir, data_dir)
            record["final"] = {"folder": "final", "seeds": seeds,
                               "status_counts": _status_counts(self._trial_record(final_dir, c) for c in cells)}
        record["status"] = "complete"
        write_json(os.path.join(folder, SEARCH_NAME), record)
        return record

    def _record(self, folder):
        params, _ = self.configs(self.epochs)
        return {"schema": SCHEMA, "status": "running", "dataset": self.dataset, "arch": self.arch,
                "algo": self.algo, "search_seed": self.search_seed, "epochs": self.epochs,
                "halving": self.halving, "min_epochs": self.min_epochs, "base": self.base,
                "rule_options": self.rule_options, "space": {k: d.text() for k, d in self.space.items()},
                "selection": "lowest validation error over epochs of each trial; the test set is never used",
                "trials": [{"trial": i, "settings": p, "run": None, "epochs": 0, "best_val_error": None}
                           for i, p in enumerate(params)],
                "rungs": [], "chosen": None, "final": None}

    @staticmethod
    def _trial_record(trials_dir, config):
        path = os.path.join(trials_dir, config.run_name(), RECORD_NAME)
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {"status": "missing", "curves": {"val_error": []}}


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


def find_searches(roots):
    """Every search record under ``roots``, in folder order."""
    found = []
    for root in roots:
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            if SEARCH_NAME in files:
                subfolders.clear()  # a search's own folders hold runs, not searches
                with open(os.path.join(folder, SEARCH_NAME), encoding="utf-8") as handle:
                    record = json.load(handle)
                if record.get("schema") == SCHEMA:
                    found.append(record)
    return found
