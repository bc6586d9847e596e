"""Run records: one JSON file per run, the only input of tables and plots.

Schema ``biobench.run/1`` (all errors in percent):

* ``schema``, ``status`` (``running`` | ``complete`` | ``diverged`` | ``interrupted``),
  ``run_id``, ``started_at``, ``finished_at``, ``wall_seconds``
* ``config``: the fully resolved run configuration (see ``RunConfig``)
* ``seed``, ``device``, ``versions`` (python, torch, torchvision, numpy, biobench),
  ``code`` (``biobench_version``; ``git_commit`` and ``git_dirty`` of the
  checkout the code ran from, null outside a git checkout), ``host``
  (platform, cpu, torch threads)
* ``early_stop`` (only when a run stopped early, ``--patience``): ``epoch``,
  ``best_val_epoch``, ``patience``, ``reason``
* ``repeat_of`` (only when present): the folder of an earlier run of the same
  config and seed that this run did not resume, so it is a second run of it
* ``rule``: name, options and how the first and output layers are treated
* ``params``: ``forward_total``, ``feedback_total``, ``per_layer`` rows
  (layer, kind, weight, bias, forward, feedback, shape)
* ``curves``: per-epoch lists ``epoch``, ``train_loss``, ``train_error``,
  ``test_loss``, ``test_error``, ``val_error`` (null without a validation
  split), ``seconds``
* ``alignment``: per epoch, per layer: ``wb_angle`` (degrees between W and
  the backward matrix B; null where there is none), ``update_angle`` (degrees
  between the rule's weight gradient and the BP gradient on one fixed batch),
  ``norm_ratio`` (|B| / |W|)
* ``summary``: ``epochs_done``, ``final_test_error``, ``best_test_error``
  (the paper's metric), ``best_test_epoch``, ``best_val_epoch``,
  ``test_error_at_best_val`` (the honest metric), ``final_train_error``,
  ``diverged_at_epoch``
"""
import json
import os
import platform
import sys

from .errors import RecordError

SCHEMA = "biobench.run/1"
RECORD_NAME = "record.json"
CHECKPOINT_NAME = "checkpoint.pt"
SEARCH_NAME = "search.json"  # a search's own record (benchmark.search)
SEARCH_TRIALS = "trials"  # the folder of a search's trial runs
SEARCH_SCHEMA = "biobench.search/1"
REQUIRED_KEYS = ("schema", "status", "config", "curves", "summary", "params")
CURVE_KEYS = ("epoch", "train_loss", "train_error", "test_loss", "test_error", "val_error", "seconds")
# Config fields added after the first release, with the value that leaves a
# run as it was: an older record without the field ran at that value.
LATER_FIELDS = {"weight_decay": 0.0, "patience": 0}




def versions():
    import numpy
    import torch
    import torchvision

    from . import __version__
    return {"biobench": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__}


def code_version():
    """biobench's version and, when the code runs from a git checkout, its
    commit and whether it had uncommitted changes (what makes a cited number
    reproducible)."""
    import subprocess

    from . import __version__
    info = {"biobench_version": __version__, "git_commit": None, "git_dirty": None}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no",
                                     "--", "benchmark", "models", "cli.py"],
                                    capture_output=True, text=True, timeout=10)
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_info():
    import torch
    return {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def now():
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_record(run_id, config, device, data, rule, params):
    """A fresh record of a run about to train (status ``running``, no epochs).
    ``config`` is the record form of the run's config, ``data`` the split sizes."""
    from datetime import datetime, timezone
    return {
        "schema": SCHEMA, "status": "running", "run_id": run_id,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished_at": None,
        "wall_seconds": 0.0, "config": config, "seed": config["seed"], "device": device, "data": data,
        "versions": versions(), "code": code_version(), "host": host_info(), "rule": rule, "params": params,
        "curves": {key: [] for key in CURVE_KEYS}, "alignment": [], "summary": {"epochs_done": 0},
    }


def append_epoch(record, alignment, **values):
    """Add one epoch's curve ``values`` (every key of ``CURVE_KEYS``) and its
    ``alignment`` row to ``record``, and update its summary."""
    for key in CURVE_KEYS:
        record["curves"][key].append(values[key])
    record["alignment"].append(alignment)
    record["summary"] = summarize_curves(record["curves"])


def finish_record(record, status, wall_seconds, diverged_epoch=None):
    """Mark ``record`` ended (complete, diverged) at this moment."""
    from datetime import datetime, timezone
    record["status"] = status
    record["summary"]["diverged_at_epoch"] = diverged_epoch
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["wall_seconds"] = round(wall_seconds, 3)


def summarize_curves(curves):
    """A record's ``summary`` from its curves: the paper's metric (best test
    error) next to the honest one (test error at the best validation epoch)."""
    test = curves["test_error"]
    summary = {"epochs_done": len(test), "final_test_error": test[-1] if test else None,
               "final_train_error": curves["train_error"][-1] if test else None,
               "best_test_error": min(test) if test else None,
               "best_test_epoch": curves["epoch"][test.index(min(test))] if test else None,
               "best_val_epoch": None, "test_error_at_best_val": None, "diverged_at_epoch": None}
    val = [v for v in curves["val_error"] if v is not None]
    if val and len(val) == len(test):
        best = val.index(min(val))
        summary["best_val_epoch"] = curves["epoch"][best]
        summary["test_error_at_best_val"] = test[best]
    return summary


def record_path(run_dir):
    return os.path.join(run_dir, RECORD_NAME)


def read_record(run_dir):
    """The record in ``run_dir``, or None when there is none or it is bad
    (for status checks, which treat such a folder as not done)."""
    try:
        return load_record(record_path(run_dir))
    except RecordError:
        return None


def load_record(path):
    """Read and check one record; RecordError (naming the file) if it is bad."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: unreadable record ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: not a biobench record (top level is {type(record).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing or record.get("schema") != SCHEMA:
        raise RecordError(f"{path}: not a {SCHEMA} record (schema={record.get('schema')!r}, "
                          f"missing keys: {', '.join(missing) or 'none'})")
    return record


def find_records(root):
    """Paths of every record.json under ``root`` (sorted), except a search's
    trials: they are that search's working material, reported through its
    chosen settings (``root`` pointing into ``<search>/trials`` lists them)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if SEARCH_NAME in files and SEARCH_TRIALS in subfolders:
            subfolders.remove(SEARCH_TRIALS)
        if RECORD_NAME in files:
            found.append(os.path.join(folder, RECORD_NAME))
    return sorted(found)


def load_search(path):
    """One search record (``search.json``, schema ``biobench.search/1``), or
    None when the file is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SEARCH_SCHEMA else None


def find_searches(roots):
    """Every search record under ``roots``, in folder order."""
    found = []
    for root in roots:
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            if SEARCH_NAME in files:
                subfolders.clear()  # a search's own folders hold runs, not searches
                record = load_search(os.path.join(folder, SEARCH_NAME))
                if record is not None:
                    found.append(record)
    return found
