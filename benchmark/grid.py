"""Experiment grids: the cross product datasets x archs x rules x seeds.

Each cell is an ordinary run in a folder named after its config, so a grid is
resumable: complete (or diverged) cells are skipped, interrupted ones resume
from their checkpoint, missing ones start. An OS lock (``benchmark.locks``)
keeps two processes off the same cell.
"""
import json
import os
import signal
import sys
import time
import traceback

from models import RULES

from .config import RunConfig, make_checked_rule, resolve_run_config, weight_decay_for
from .early_stopping import fits_before
from .errors import ConfigError, DeadlineReached, GridFailed, RunInterrupted
from .io import write_json
from .locks import RunLock
from .pools import forget_pool_wakeups, pool_died_message, run_in_pool
from .records import CHECKPOINT_NAME, read_record, record_path
from .runs import discard_if_nothing_kept

ALL_RULES = RULES.registered(plugins=False)
TABLE1_RULES = ["bp", "fa", "dfa", "dtp-par", "dtp-alt", "sdtp-par", "sdtp-alt", "aosdtp-par", "aosdtp-alt"]
VIT_RULES = ["bp", "fa", "dfa", "usf", "frsf", "kp"]
PRESETS = {
    # Table 1 of Bartunov et al. 2018 (BP, FA, DFA and the six target-propagation
    # rows on FC and LC, plus the shared-weight conv baseline), extended with
    # every other registered rule.
    "bartunov-mnist": {"datasets": ["mnist"], "archs": ["fc", "lc", "conv"], "rules": ALL_RULES},
    "bartunov-fashion-mnist": {"datasets": ["fashion-mnist"], "archs": ["fc", "lc", "conv"], "rules": ALL_RULES},
    "bartunov-cifar10": {"datasets": ["cifar10-jpeg"], "archs": ["fc", "lc", "conv"], "rules": TABLE1_RULES},
    # Table 1 at length (issue 34): one preset per block of the CPU campaign,
    # each with its own length and folder, so one command runs (and resumes) a
    # block. Today's default settings (Adam lr 3e-4): the paper's per-cell
    # searched settings are not published for these cells.
    # Per-cell settings where Bartunov et al. publish one (../shared/reference:
    # MNIST FC DTP-parallel's forward lr 7.6e-4 from their Table 5; MNIST
    # DFA's lr "about 1.6e-3" from their text, net not named).
    "table1-mnist-fc": {"datasets": ["mnist"], "archs": ["fc"], "rules": TABLE1_RULES,
                        "settings": {"epochs": 100, "val_split": 0.1, "seeds": 3,
                                     "out": "results/table1-at-length/mnist-fc"},
                        "rule_settings": {"dtp-par": {"lr": 7.6e-4}, "dfa": {"lr": 1.6e-3}}},
    "table1-mnist-lc": {"datasets": ["mnist"], "archs": ["lc"], "rules": TABLE1_RULES[3:],
                        "settings": {"epochs": 60, "val_split": 0.1, "seeds": 3,
                                     "out": "results/table1-at-length/mnist-lc"}},
    "table1-cifar10-fc": {"datasets": ["cifar10-jpeg"], "archs": ["fc"], "rules": TABLE1_RULES,
                          "settings": {"epochs": 100, "val_split": 0.1, "seeds": 3,
                                       "out": "results/table1-at-length/cifar10-fc"}},
    # Transformers (issue 37): the small ViT under BP and the feedback-
    # alignment family, DFA at both placements (one cell each), today's
    # defaults (Adam lr 3e-4, constant). Lengths chosen so a seed of every
    # rule fits this 2-core CPU (results/transformers/README.md).
    "vit-mnist": {"datasets": ["mnist"], "archs": ["vit"], "rules": VIT_RULES,
                  "rule_variants": {"dfa": [{"placement": "layer"}, {"placement": "block"}]},
                  "settings": {"epochs": 10, "val_split": 0.1, "seeds": 3, "out": "results/transformers/mnist-vit"}},
    "vit-cifar10": {"datasets": ["cifar10-jpeg"], "archs": ["vit"], "rules": VIT_RULES,
                    "rule_variants": {"dfa": [{"placement": "layer"}, {"placement": "block"}]},
                    "settings": {"epochs": 10, "val_split": 0.1, "seeds": 3,
                                 "out": "results/transformers/cifar10-vit"}},
}
TERMINAL = ("complete", "diverged")
ERROR_NAME = "error.txt"  # a cell that raised leaves its traceback here


def grid_cells(datasets, archs, rules, seeds, options, rule_options=None, rule_settings=None, rule_variants=None):
    """Every cell's config. Each rule gets the ``rule_options`` it declares
    (e.g. ``alpha`` goes to dtp-* only; an option no chosen rule knows is an
    error) and, unless ``options["weight_decay"]`` is given, its own default
    weight decay. ``rule_settings`` ({rule: {training option: value}}) gives
    one rule its own training settings (a preset's published per-cell
    learning rate); ``rule_variants`` ({rule: [rule options, ...]}) runs one
    rule once per option set (DFA at both placements), typed
    ``rule_options`` winning. When bp is in the grid, it also runs at every
    other weight decay used (a BP control for, e.g., Kolen-Pollack's)."""
    rule_options, rule_settings, rule_variants = rule_options or {}, rule_settings or {}, rule_variants or {}
    known = {k for r in rules for k in RULES.get(r).defaults}
    unknown = sorted(set(rule_options) - known)
    if unknown:
        raise ConfigError(f"rule option(s) {', '.join(unknown)} not known to any of {', '.join(rules)}")
    typed = {r: {k: v for k, v in rule_options.items() if k in RULES.get(r).defaults} for r in rules}
    variants = {}
    for r in rules:  # one cell per distinct resolved option set, spelled as first given
        chosen = {}
        for variant in rule_variants.get(r, [{}]):
            given = {**variant, **typed[r]}
            chosen.setdefault(json.dumps({**RULES.get(r).defaults, **given}, sort_keys=True), given)
        variants[r] = list(chosen.values())
    decays = {r: [weight_decay_for(make_checked_rule(r, variants[r][0]), options.get("weight_decay"))] for r in rules}
    if "bp" in rules:
        decays["bp"] = list(dict.fromkeys(decays["bp"] + [d for r in rules for d in decays[r]]))
    # Seed-major: a stopped grid leaves every cell's first seed done before any
    # cell's second, so its partial tables cover the whole grid.
    return [resolve_run_config(dict(options, **rule_settings.get(r, {}), dataset=d, arch=a, rule=r, seed=s,
                                    weight_decay=wd), variant)
            for s in seeds for d in datasets for a in archs for r in rules for variant in variants[r]
            for wd in decays[r]]


def select_grid(preset, datasets, archs, rules):
    """``{datasets, archs, rules}`` of a grid: the comma-separated selections
    (each name checked against its registry), narrowing ``preset``'s."""
    from models import ARCHS

    from .data import DATASETS
    base = PRESETS.get(preset, {"datasets": ["mnist"], "archs": ["fc", "lc", "conv"], "rules": ["bp"]})
    chosen = {}
    for key, flag, value, registry in (("datasets", "--datasets", datasets, DATASETS),
                                       ("archs", "--archs", archs, ARCHS), ("rules", "--algos", rules, RULES)):
        names = value.split(",") if value else base[key]
        for name in names:
            if name not in registry:
                raise ConfigError(f"{flag}: unknown {registry.kind} {name!r}; allowed: "
                                  f"{', '.join(registry.names())}")
            # A preset names its block's cells; a selection narrows it, never
            # adds cells that would land in the preset's folder unannounced.
            if preset and name not in base[key]:
                raise ConfigError(f"{flag}: {name!r} is not in preset {preset!r}; it has "
                                  f"{', '.join(base[key])}")
        chosen[key] = names
    return chosen


def preset_option_names(preset):
    """The command-line options ``preset`` sets where they are not typed."""
    preset = PRESETS.get(preset, {})
    return list(preset.get("settings", {})) + [k for values in preset.get("rule_settings", {}).values() for k in values]


def apply_preset(preset, options, seeds, out, typed):
    """A campaign preset's own epochs, validation split, seeds and folder,
    except those ``typed`` on the command line. Returns (seeds, out,
    rule_settings): the preset's per-rule settings the command line leaves.
    (Its ``rule_variants`` go to ``grid_cells`` as they are.)"""
    settings = PRESETS.get(preset, {}).get("settings", {})
    per_rule = PRESETS.get(preset, {}).get("rule_settings", {})
    rule_settings = {rule: {k: v for k, v in values.items() if k not in typed} for rule, values in per_rule.items()}
    for name, value in settings.items():
        if name in typed:
            continue
        if name == "seeds":
            seeds = value
        elif name == "out":
            out = value
        else:
            options[name] = value
    return seeds, out, rule_settings


def stale_rule_options(record, config):
    """``{option: (value the record ran with, value now)}`` where a rule
    default changed since the record was made: the folder name hashes only
    the options a run was given, so the old record would otherwise pass for
    the current rule's. Options the record does not name are not compared."""
    recorded = ((record or {}).get("rule") or {}).get("options") or {}
    if not recorded:
        return {}
    from models import make_rule
    current = make_rule(config.rule, **config.rule_options).options
    return {key: (recorded[key], value) for key, value in current.items()
            if key in recorded and recorded[key] != value}


def cell_state(run_dir, epochs, config=None):
    """complete | diverged | resumable | missing, for a cell wanting ``epochs``
    (with ``config``: stale when its record ran with other rule defaults).
    A complete run with fewer epochs is resumable (the grid extends it) unless
    it stopped early."""
    record = read_record(run_dir)
    if config is not None and stale_rule_options(record, config):
        return "stale"
    if record is not None:
        status = record["status"]
        if status == "diverged" or (status == "complete" and (
                record["summary"].get("epochs_done", 0) >= epochs or record.get("early_stop"))):
            return status
    if os.path.exists(os.path.join(run_dir, CHECKPOINT_NAME)):
        return "resumable"
    return "missing"


def run_cell(config_dict, out, data_dir, device, threads, epoch_lines=False, notes=None, tensorboard=None,
             deadline=None):
    """Run one cell (in a worker process or a Slurm task). Returns (run name,
    status, message). With ``epoch_lines``, every finished epoch prints one
    line naming the cell; ``notes`` go into the record (e.g. Slurm ids). With
    a ``deadline`` (time.time()), a cell whose next epoch would end after it
    does not start ("deferred") or stops at an epoch boundary ("stopped")."""
    import torch
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_cell(RunConfig.from_record(config_dict), out, data_dir, device, epoch_lines, sys.stderr, notes,
                         tensorboard, deadline)
    finally:
        torch.set_num_threads(previous_threads)  # the calling process (jobs=1) keeps its own setting


def _run_cell(config, out, data_dir, device, epoch_lines, stream, notes, tensorboard, deadline=None):
    run_dir = os.path.join(out, config.run_name())
    state = cell_state(run_dir, config.epochs, config)
    if state == "stale":
        changed = stale_rule_options(read_record(run_dir), config)
        return config.run_name(), "stale", ("not run: its record ran with " + ", ".join(
            f"{key}={then!r} (now {now!r})" for key, (then, now) in changed.items())
            + f"; move {run_dir} away to rerun it with the current defaults")
    if state in TERMINAL:
        return config.run_name(), state, "skipped (already done)"
    estimate = epoch_estimate(out, config) if deadline is not None else None
    if deadline is not None and not fits_before(deadline, read_record(run_dir) or NO_EPOCHS, estimate):
        return config.run_name(), "deferred", "not started: its next epoch would end after the deadline"
    lock = RunLock(run_dir)
    if not lock.acquire():
        return config.run_name(), "busy", "skipped (another process is running it)"
    try:
        start = time.time()

        def echo(message, name=config.run_name()):
            print(f"  {name}: {message}", file=stream, flush=True)
        from .train import Trainer
        trainer = Trainer(config, data_dir=data_dir, device=device, progress=False, epoch_lines=epoch_lines,
                          echo=echo, tensorboard=tensorboard, deadline=deadline, epoch_estimate=estimate)
        try:
            record = trainer.run(run_dir, resume=state == "resumable", notes=notes)
        except DeadlineReached as exc:
            if discard_if_nothing_kept(run_dir, exc.epochs_kept, resumed=state != "missing"):
                return config.run_name(), "deferred", "not started: the deadline came first"
            return config.run_name(), "stopped", f"{exc} (resumable)"
        s = record["summary"]
        # The validation error first: it is what a search chooses by.
        val = [v for v in record["curves"].get("val_error", []) if v is not None]
        val_text = f"validation error {val[-1]:.2f}% (best {min(val):.2f}%), " if val else ""
        return (config.run_name(), record["status"],
                f"{val_text}test error {s.get('final_test_error')}% (best {s.get('best_test_error')}%) "
                f"in {time.time() - start:.0f}s")
    except (KeyboardInterrupt, RunInterrupted):
        raise  # stop the grid; the cell's checkpoint lets the next run resume it
    except Exception as exc:  # one failing cell must not stop the grid
        if _worker_state["stopping"]:
            # A SIGTERM's KeyboardInterrupt that landed inside torch (a save, a
            # load) comes out as a RuntimeError: the cell was stopped, not broken;
            # its last checkpoint stands and the grid marks its record interrupted.
            raise RunInterrupted("stopped by a signal") from exc
        with open(os.path.join(run_dir, ERROR_NAME), "w", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
        return config.run_name(), "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        lock.release()


def run_grid(cells, out, data_dir, device="auto", jobs=1, echo=print, threads=None, epoch_lines=False,
             tensorboard=None, deadline=None):
    """Run every cell; returns {status: count}. Cells run in ``jobs`` worker
    processes, each with ``threads`` torch threads (default ``cores // jobs``)."""
    os.makedirs(out, exist_ok=True)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    todo = [c for c in cells if cell_state(os.path.join(out, c.run_name()), c.epochs, c) not in TERMINAL]
    echo(f"grid: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run "
         f"({jobs} job(s) x {threads} thread(s))")
    counts = {}
    started = time.time()

    def report(done, task, result):
        name, status, message = result
        counts[status] = counts.get(status, 0) + 1
        elapsed = time.time() - started
        eta = elapsed / done * (len(todo) - done)
        echo(f"[{done}/{len(todo)}] {name}: {status}: {message}  (elapsed {elapsed / 60:.1f} min, "
             f"ETA {eta / 60:.1f} min)")

    args = [(c.as_record(), out, data_dir, device, threads, epoch_lines, None, tensorboard, deadline) for c in todo]
    # A killed worker: the pool has sent the others SIGTERM, so their cells
    # keep their last epoch. Stopped (Ctrl-C): every worker stops the same
    # way (_quiet_worker), then the caller prints one line.
    run_in_pool(_worker_cell, args, jobs, report, died=lambda workers: GridFailed(worker_died_message(todo, out)),
                stopped=lambda: mark_orphans_interrupted(todo, out), initializer=_quiet_worker)
    return counts


NO_EPOCHS = {"summary": {"epochs_done": 0}, "wall_seconds": 0.0}


def epoch_estimate(out, config):
    """Seconds one epoch of ``config`` takes, from the records of this grid's
    other cells (evaluation and checkpoint included): those of the same
    dataset, architecture and rule, else of the same dataset and architecture
    (the slowest of them); None before any has finished an epoch."""
    names = os.listdir(out) if os.path.isdir(out) else []
    for prefix in (f"{config.dataset}-{config.arch}-{config.rule}-", f"{config.dataset}-{config.arch}-"):
        per_epoch = []
        for name in names:
            record = read_record(os.path.join(out, name)) if name.startswith(prefix) else None
            if record is not None and record["summary"].get("epochs_done"):
                per_epoch.append(record["wall_seconds"] / record["summary"]["epochs_done"])
        if per_epoch:
            return max(per_epoch)
    return None


def mark_orphans_interrupted(cells, out):
    """Once every worker has ended: a record that still says running, with
    nobody holding its lock, belongs to a cell whose process died mid-run;
    mark it interrupted (its checkpoint is what resumes). Returns their names."""
    orphans = []
    for cell in cells:
        run_dir = os.path.join(out, cell.run_name())
        record = read_record(run_dir)
        if record is not None and record["status"] == "running" and not RunLock(run_dir).held():
            orphans.append(cell.run_name())
            write_json(record_path(run_dir), dict(record, status="interrupted"))
    return orphans


def worker_died_message(cells, out):
    """Name the cells whose worker died (their record still said running) and mark them interrupted."""
    killed = mark_orphans_interrupted(cells, out)
    return pool_died_message("grid", f"training {', '.join(killed) or 'a cell'}",
                             "the other running cells kept their last complete epoch")


_worker_state = {"in_cell": False, "stopping": False}  # of this worker process


def _quiet_worker():
    """Worker set-up: Ctrl-C is the parent's business; the first SIGTERM
    interrupts a running cell (which checkpoints), an idle worker waits for
    the pool's shutdown, and a stopping worker starts no other cell."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forget_pool_wakeups()

    def on_sigterm(signum, frame):
        if not _worker_state["in_cell"]:
            # Idle: start no cell; the pool's shutdown ends this worker. (Leaving
            # at once would break the pool, whose exit handler then trips on it.)
            _worker_state["stopping"] = True
            return
        if not _worker_state["stopping"]:
            _worker_state["stopping"] = True
            raise KeyboardInterrupt
        # a second SIGTERM (the group's and the parent's) lets the checkpoint finish
    signal.signal(signal.SIGTERM, on_sigterm)


def _worker_cell(*args):
    if _worker_state["stopping"]:
        raise RunInterrupted("the grid is stopping")
    _worker_state["in_cell"] = True
    try:
        return run_cell(*args)
    finally:
        _worker_state["in_cell"] = False


def refuse_cells_no_network_takes(cells):
    """One line before anything trains where a rule cannot attach to an
    architecture at all (a rule that runs its own passes along a chain on a
    net with branches, DFA's block placement on a net without blocks, ...):
    every such cell would fail. Each (architecture, rule, options) is tried
    once, on the first input family the architecture is defined for (these
    refusals do not depend on the input size)."""
    import torch

    from models import build_network, make_rule
    from models.errors import BiobenchError as ModelError
    from models.inputs import INPUT_SHAPES
    tried = set()
    for cell in cells:
        key = (cell.arch, cell.rule, tuple(sorted(cell.rule_options.items())))
        if key in tried:
            continue
        tried.add(key)
        for family in INPUT_SHAPES:
            try:
                model = build_network(cell.arch, family, 10)
            except (ValueError, ModelError):
                continue
            try:
                make_rule(cell.rule, **cell.rule_options).attach(model, torch.Generator().manual_seed(0),
                                                                 INPUT_SHAPES[family])
            except (ValueError, ModelError) as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConfigError(f"--algos {cell.rule} cannot train --archs {cell.arch}: {reason}") from None
            break
