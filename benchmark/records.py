"""Run records: one JSON file per run, the only input of tables and plots.

Schema ``biobench.run/1`` (all errors in percent):

* ``schema``, ``status`` (``running`` | ``complete`` | ``diverged`` | ``interrupted``),
  ``run_id``, ``started_at``, ``finished_at``, ``wall_seconds``
* ``config``: the fully resolved run configuration (see ``RunConfig``)
* ``seed``, ``device``, ``versions`` (python, torch, torchvision, numpy, biobench),
  ``code`` (``biobench_version``; ``git_commit`` and ``git_dirty`` of the
  checkout the code ran from, null outside a git checkout), ``host``
  (platform, cpu, torch threads)
* ``optimizer_step``: the kernel the optimizer stepped with, ``fused`` or
  ``default`` (torch's for-loop on a CPU; records without the field); the
  two round differently (``models/optim.py``)
* ``early_stop`` (only when a run stopped early, ``--patience``): ``epoch``,
  ``best_val_epoch``, ``patience``, ``reason``
* ``repeat_of`` (only when present): the folder of an earlier run of the same
  config and seed that this run did not resume, so it is a second run of it
* ``rule``: name, options and how the first and output layers are treated
* ``params``: ``forward_total``, ``feedback_total``, ``per_layer`` rows
  (layer, kind, weight, bias, forward, feedback, shape); ``block_feedback``
  where DFA's feedback at transformer blocks' outputs (in feedback_total)
  belongs to no layer
* ``curves``: per-epoch lists ``epoch``, ``train_loss``, ``train_error``,
  ``test_loss``, ``test_error``, ``val_error`` (null without a validation
  split), ``seconds``
* ``alignment``: per epoch, per layer: ``wb_angle`` (degrees between W and
  the backward matrix B; null where there is none), ``update_angle`` (degrees
  between the rule's weight gradient and the BP gradient on one fixed batch),
  ``norm_ratio`` (|B| / |W|); for a network with transformer blocks also
  ``parts``: per block and part (``q``, ``k``, ``v``, ``out``, ``mlp_in``,
  ``mlp_out``), ``block``, ``part``, ``layer`` and the same three values on
  that part's rows of the layer
* ``summary``: ``epochs_done``, ``final_test_error``, ``best_test_error``
  (the paper's metric), ``best_test_epoch``, ``best_val_epoch``,
  ``test_error_at_best_val`` (the honest metric), ``final_train_error``,
  ``diverged_at_epoch``

:func:`load_record` checks the type of every field that tables, plots, the
report, grids and searches read (:func:`check_record`), so a record they
accept cannot fail them half-way.
"""
import json
import os
import platform
import sys

from .errors import RecordError

SCHEMA = "biobench.run/1"
RECORD_NAME = "record.json"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_MODEL_NAME = "model_best.pt"  # the best-validation model, with a validation split only
SEARCH_NAME = "search.json"  # a search's own record (benchmark.search)
SEARCH_TRIALS = "trials"  # the folder of a search's trial runs
SEARCH_SCHEMA = "biobench.search/1"
# cli.py robustness's results beside a run's record (benchmark.robustness), and
# its finished units of an unfinished evaluation
ROBUSTNESS_NAME = "robustness.json"
ROBUSTNESS_PARTIAL_NAME = "robustness.partial.json"
ROBUSTNESS_SCHEMA = "biobench.robustness/1"
ROBUSTNESS_STATES = ("final", "best")  # the kept models: checkpoint.pt, model_best.pt
ROBUSTNESS_CONFIG_KEYS = ("dataset", "arch", "algo", "seed")  # the run's cell, copied from its record's config
REQUIRED_KEYS = ("schema", "status", "config", "curves", "summary", "params", "alignment")
CURVE_KEYS = ("epoch", "train_loss", "train_error", "test_loss", "test_error", "val_error", "seconds")
STATUSES = ("running", "complete", "diverged", "interrupted")
# Config fields added after the first release, with the value that leaves a
# run as it was: an older record without the field ran at that value.
# The optimiser protocol (added for the peers' SGD protocols): records without
# these fields ran Adam at a constant learning rate.
PROTOCOL_FIELDS = {"optimizer": "adam", "momentum": 0.0, "l2_penalty": 0.0, "lr_schedule": "constant",
                   "lr_milestones": [], "lr_gamma": 0.1}
LATER_FIELDS = {"weight_decay": 0.0, "patience": 0, **PROTOCOL_FIELDS}


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
    return {
        "schema": SCHEMA, "status": "running", "run_id": run_id, "started_at": now(), "finished_at": None,
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
    record["status"] = status
    record["summary"]["diverged_at_epoch"] = diverged_epoch
    record["finished_at"] = now()
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
    try:
        check_record(record)
    except InvalidRecord as exc:
        raise RecordError(f"{path}: {exc}") from None
    return record


class InvalidRecord(ValueError):
    """A field of a record is missing or of the wrong type (the message names the field)."""


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a count


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # NaN counts: a run can reach it


# A field's test and how a message says it: (test, "a number").
INT = (_is_int, "an integer")
NUMBER = (_is_number, "a number")
TEXT = (lambda value: isinstance(value, str), "a string")
OBJECT = (lambda value: isinstance(value, dict), "an object")
LIST = (lambda value: isinstance(value, list), "a list")
FILLED_LIST = (lambda value: isinstance(value, list) and len(value) > 0, "a non-empty list")


def _or_null(kind):
    test, words = kind
    return (lambda value: value is None or test(value)), f"{words} or null"


# What tables, plots, the report, grids and searches read, and what each must
# be; null only where the code writes it (no validation split, no epochs yet,
# a layer without B, a metric a rule does not have at a layer).
RECORD_FIELDS = {"config": OBJECT, "summary": OBJECT, "params": OBJECT, "curves": OBJECT, "alignment": LIST}
OPTIONAL_RECORD_FIELDS = {"finished_at": _or_null(TEXT), "device": TEXT, "versions": OBJECT,
                          "code": _or_null(OBJECT), "optimizer_step": TEXT}
# (required, optional) fields of the record's objects
OBJECT_FIELDS = {
    "config": ({"dataset": TEXT, "arch": TEXT, "algo": TEXT, "seed": INT, "epochs": INT},
               {"train_subset": _or_null(INT), "rule_options": OBJECT}),
    # all optional: a run with no epochs yet has epochs_done only
    "summary": ({}, {"epochs_done": INT, "final_test_error": _or_null(NUMBER), "best_test_error": _or_null(NUMBER),
                     "test_error_at_best_val": _or_null(NUMBER), "final_train_error": _or_null(NUMBER),
                     "best_test_epoch": _or_null(INT), "best_val_epoch": _or_null(INT),
                     "diverged_at_epoch": _or_null(INT)}),
    "params": ({"forward_total": INT, "feedback_total": INT, "per_layer": FILLED_LIST}, {}),  # plots: a panel a layer
    "code": ({}, {"git_commit": _or_null(TEXT)}),
    "curves": (dict.fromkeys(CURVE_KEYS, LIST), {}),
}
CURVE_ENTRIES = dict.fromkeys(CURVE_KEYS, NUMBER) | {"epoch": INT, "val_error": _or_null(NUMBER)}
ALIGNMENT_FIELDS = ({"layers": LIST}, {"parts": LIST})
LAYER_FIELDS = ({"layer": INT}, dict.fromkeys(("wb_angle", "update_angle", "norm_ratio", "reconstruction_error",
                                               "target_distance", "nudge_distance", "free_residual",
                                               "energy_before", "energy_after", "goodness_positive",
                                               "goodness_negative"),
                                              _or_null(NUMBER)))
PART_FIELDS = ({"block": INT, "part": TEXT, "layer": INT},
               dict.fromkeys(("wb_angle", "update_angle", "norm_ratio"), _or_null(NUMBER)))


def _fail(field, value, words):
    shown = repr(value)
    raise InvalidRecord(f"{field} is {shown if len(shown) <= 40 else shown[:37] + '...'}, not {words}")


def _check_fields(mapping, where, fields):
    """The ``(required, optional)`` ``fields`` of the object ``mapping``, named
    ``where`` + key in a message (built only when a check fails: records are
    checked on every load)."""
    required, optional = fields
    for key, (test, words) in required.items():
        if key not in mapping:
            raise InvalidRecord(f"{where}{key} is missing")
        if not test(mapping[key]):
            _fail(where + key, mapping[key], words)
    for key, (test, words) in optional.items():
        if key in mapping and not test(mapping[key]):
            _fail(where + key, mapping[key], words)


def check_record(record):
    """Raise InvalidRecord at the first field of ``record`` that a reader of
    records would trip on; every record this code writes passes."""
    if record["status"] not in STATUSES:
        _fail("status", record["status"], f"one of {', '.join(STATUSES)}")
    _check_fields(record, "", (RECORD_FIELDS, OPTIONAL_RECORD_FIELDS))
    for key, fields in OBJECT_FIELDS.items():
        if record.get(key) is not None:
            _check_fields(record[key], f"{key}.", fields)
    curves = record["curves"]
    for key, (test, words) in CURVE_ENTRIES.items():
        if len(curves[key]) != len(curves["epoch"]):
            raise InvalidRecord(f"curves.{key} has {len(curves[key])} entries, curves.epoch {len(curves['epoch'])}")
        if not all(map(test, curves[key])):
            index = next(i for i, value in enumerate(curves[key]) if not test(value))
            _fail(f"curves.{key}[{index}]", curves[key][index], words)
    if record["status"] == "complete" and not curves["epoch"]:  # --epochs is at least 1; plots need a point
        raise InvalidRecord("curves.epoch is empty in a complete record")
    for index, epoch in enumerate(record["alignment"]):
        try:
            _check_alignment(epoch)
        except InvalidRecord as exc:  # the epoch's name only now
            raise InvalidRecord(f"alignment[{index}]{exc}") from None


def _check_alignment(epoch):
    """One epoch's alignment rows; a message names the field below the epoch."""
    if not isinstance(epoch, dict):
        _fail("", epoch, OBJECT[1])
    _check_fields(epoch, ".", ALIGNMENT_FIELDS)
    for key, fields in (("layers", LAYER_FIELDS), ("parts", PART_FIELDS)):
        for index, row in enumerate(epoch.get(key, [])):
            if not isinstance(row, dict):
                _fail(f".{key}[{index}]", row, OBJECT[1])
            try:
                _check_fields(row, ".", fields)
            except InvalidRecord as exc:
                raise InvalidRecord(f".{key}[{index}]{exc}") from None


# robustness.json and robustness.partial.json -------------------------------------------------------------
def _list_of(kind):
    test, words = kind
    return (lambda value: isinstance(value, list) and all(map(test, value))), f"a list, each {words}"


# What tables, plots, the report, TensorBoard and a later robustness call read
# (all optional but ``states``: files written by hand for tests hold less).
ROBUSTNESS_FIELDS = ({"states": OBJECT}, {"schema": TEXT, "settings": OBJECT, "test_images": INT, "fingerprint": TEXT,
                                          "notes": _list_of(TEXT)})
ROBUSTNESS_SETTINGS = ({}, {"eps": _list_of(NUMBER), "attacks": _list_of(TEXT), "gradients": _list_of(TEXT),
                            "states": _list_of(TEXT), "corruptions": OBJECT, "pgd": OBJECT})
ROBUSTNESS_PGD = ({}, {"steps": INT, "step_size": NUMBER, "random_start": (lambda v: isinstance(v, bool), "true or "
                                                                                                        "false")})
ROBUSTNESS_STATE = ({}, {"model_file": TEXT, "epoch": _or_null(INT), "sha256": TEXT, "clean_error": NUMBER,
                         "attacks": LIST, "corruptions": LIST, "transfer_source": OBJECT})
ROBUSTNESS_ROWS = {"attacks": ({"attack": TEXT, "gradient": TEXT, "eps": NUMBER, "error": NUMBER}, {}),
                   "corruptions": ({"corruption": TEXT, "severity": INT, "error": NUMBER}, {"level": NUMBER})}
PARTIAL_FIELDS = ({"fingerprint": TEXT, "units": OBJECT}, {"call": TEXT})
PARTIAL_UNIT = ({"error": NUMBER, "seconds": NUMBER}, {})


def _read_json_object(path, what):
    """The JSON object in ``path``; RecordError (one line, naming the file) otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not isinstance(content, dict):
        raise RecordError(f"{path}: not a {what} (top level is {type(content).__name__})")
    return content


def read_robustness(run_dir):
    """The robustness.json of ``run_dir``, checked (:func:`load_robustness_result`),
    or None when it has none: how every reader (tables, plots, the report,
    TensorBoard, a later robustness call) reads it."""
    path = os.path.join(run_dir, ROBUSTNESS_NAME)
    return load_robustness_result(path) if os.path.exists(path) else None


def load_robustness_result(path):
    """Read and check one robustness.json; RecordError naming the file and
    the first field a reader would trip on."""
    result = _read_json_object(path, ROBUSTNESS_SCHEMA + " file")
    try:
        check_robustness_result(result)
    except InvalidRecord as exc:
        raise RecordError(f"{path}: {exc}") from None
    return result


def check_robustness_result(result):
    _check_fields(result, "", ROBUSTNESS_FIELDS)
    if result.get("schema", ROBUSTNESS_SCHEMA) != ROBUSTNESS_SCHEMA:
        _fail("schema", result["schema"], repr(ROBUSTNESS_SCHEMA))
    settings = result.get("settings", {})
    _check_fields(settings, "settings.", ROBUSTNESS_SETTINGS)
    _check_fields(settings.get("pgd", {}), "settings.pgd.", ROBUSTNESS_PGD)
    for state, entry in result["states"].items():
        if state not in ROBUSTNESS_STATES:
            raise InvalidRecord(f"states.{state} is not a model state; allowed: {', '.join(ROBUSTNESS_STATES)}")
        if not isinstance(entry, dict):
            _fail(f"states.{state}", entry, OBJECT[1])
        _check_fields(entry, f"states.{state}.", ROBUSTNESS_STATE)
        for key, fields in ROBUSTNESS_ROWS.items():
            for index, row in enumerate(entry.get(key, [])):
                where = f"states.{state}.{key}[{index}]"
                if not isinstance(row, dict):
                    _fail(where, row, OBJECT[1])
                _check_fields(row, where + ".", fields)


def load_robustness_partial(path):
    """Read and check a robustness.partial.json (the finished units of an
    unfinished evaluation); RecordError naming the file and the bad field."""
    partial = _read_json_object(path, "robustness partial file")
    try:
        _check_fields(partial, "", PARTIAL_FIELDS)
        for unit, done in partial["units"].items():
            if not isinstance(done, dict):
                _fail(f"units[{unit!r}]", done, OBJECT[1])
            _check_fields(done, f"units[{unit!r}].", PARTIAL_UNIT)
    except InvalidRecord as exc:
        raise RecordError(f"{path}: {exc}") from None
    return partial


def walk_folders(root):
    """``os.walk(root)``, top-down, that enters a symlinked folder like a real
    one (a run folder linked in from elsewhere is a run of these results, as
    it is to the grid that reads and writes through the link) but each real
    folder once: a second link to it, or a link back up, is passed by. Real
    folders come before links beside them; callers may prune ``subfolders``."""
    seen = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders.sort(key=lambda name: (os.path.islink(os.path.join(folder, name)), name))
        yield folder, subfolders, files


def run_folders(root):
    """Names of the folders directly in ``root``, by :func:`walk_folders`'s rule."""
    walk = walk_folders(root)
    next(walk, None)
    names = []
    for folder, subfolders, _ in walk:
        subfolders.clear()  # one level
        names.append(os.path.basename(folder))
    return names


def find_records(root):
    """Paths of every record.json under ``root`` (sorted; see
    :func:`walk_folders` for symlinks), except a search's trials: they are
    that search's working material, reported through its chosen settings
    (``root`` pointing into ``<search>/trials`` lists them)."""
    found = []
    for folder, subfolders, files in walk_folders(root):
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
        for folder, subfolders, files in walk_folders(root):
            if SEARCH_NAME in files:
                subfolders.clear()  # a search's own folders hold runs, not searches
                record = load_search(os.path.join(folder, SEARCH_NAME))
                if record is not None:
                    found.append(record)
    return found
