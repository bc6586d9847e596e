"""A run's kept models: which it keeps, each loaded by the trainer's own
path and checked against the run's record before anything is measured on it.

Every run keeps ``final`` (the last epoch's checkpoint.pt); a run with a
validation split trained by a biobench that keeps it also keeps ``best``
(model_best.pt). A model file is proved to be its record's by the config it
was saved with, its epoch, and its error on the whole test set.
"""
import hashlib
import os

from ..errors import ConfigError, RunError
from ..records import BEST_MODEL_NAME, CHECKPOINT_NAME

_DATA_CACHE = {}
_DIGESTS = {}


def dataset_of(name, data_dir):
    """The dataset, loaded once per process."""
    from ..data import load_dataset
    key = (name, os.path.abspath(data_dir))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(name, data_dir)
    return _DATA_CACHE[key]


def model_path(run_dir, state):
    """The file that keeps the run's ``state`` model."""
    return os.path.join(run_dir, CHECKPOINT_NAME if state == "final" else BEST_MODEL_NAME)


def kept_models(run_dir, record, states):
    """``{state: model file}``: ``final`` (the last epoch's checkpoint.pt, which
    every run keeps) and ``best`` (model_best.pt, kept when the run had a
    validation split and was trained by a biobench that keeps it); empty
    when only ``best`` is asked for and the run has none."""
    models = {}
    if "final" in states:
        if not os.path.isfile(os.path.join(run_dir, CHECKPOINT_NAME)):
            raise ConfigError(f"run folder {run_dir} keeps no model ({CHECKPOINT_NAME} is missing; results "
                              f"committed without their git-ignored checkpoints need retraining)")
        models["final"] = CHECKPOINT_NAME
    if "best" in states and record["summary"].get("best_val_epoch") is not None:
        if os.path.isfile(os.path.join(run_dir, BEST_MODEL_NAME)):
            models["best"] = BEST_MODEL_NAME
    return models


def file_digest(path):
    """sha256 of a model file, read once per process while its size and mtime stay."""
    info = os.stat(path)
    key = (os.path.realpath(path), info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def load_model(run_dir, record, state, data, device):
    """``(model, rule, epoch)``: the run's network built by the trainer's own
    path (``build_model`` with the record's config, so the rule is attached
    exactly as in training) with the ``state``'s weights, in eval mode."""
    import torch

    from ..checkpoints import verify_checkpoint
    from ..config import RunConfig
    from ..run_model import build_model, seed_everything
    config = RunConfig.from_record(record["config"])
    path = model_path(run_dir, state)
    verify_checkpoint(path)
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise RunError(f"cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if state == "final":
        epoch = saved["record"]["summary"]["epochs_done"]
        expected = record["summary"]["epochs_done"]
    else:
        epoch, expected = saved["epoch"], record["summary"]["best_val_epoch"]
    if epoch != expected:
        raise RunError(f"{path} holds epoch {epoch}, but the record says {expected}; the folder is inconsistent")
    check_saved_config(path, saved["record"]["config"] if state == "final" else saved["config"], record, run_dir)
    seed_everything(config.seed)
    model, rule, _ = build_model(config, data, device)
    check_state_dict(path, saved["model"], model.state_dict(), f"the {config.arch} network of {run_dir}'s record")
    model.load_state_dict(saved["model"])
    if state == "final":
        rule.load_state_dict(saved["rule_state"])
    model.eval()
    return model, rule, epoch


def check_state_dict(path, kept, expected, what):
    """RunError naming ``path`` unless the state dict ``kept`` has the tensors
    of ``expected`` (torch's own message spans lines and names no file)."""
    missing = [k for k in expected if k not in kept]
    unexpected = [k for k in kept if k not in expected]
    reshaped = [k for k in expected if k in kept and tuple(kept[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0]
        raise RunError(f"{path} does not hold {what}: {len(missing)} tensor(s) missing, {len(unexpected)} "
                       f"unexpected, {len(reshaped)} of another shape (the first: {first!r})")


def check_saved_config(path, saved, record, run_dir):
    """The config a model file was saved with must be its folder's record's
    (but ``epochs``: a resumed run extends it after its best epoch): a file
    copied from another run (another seed) has the same epoch and may well have
    the same test error."""
    from ..config import RunConfig
    kept, recorded = (RunConfig.from_record(c).as_record() for c in (saved, record["config"]))
    differing = sorted(k for k in recorded if k != "epochs" and kept.get(k) != recorded[k])
    if differing:
        shown = ", ".join(f"{k} {kept.get(k)!r}" for k in differing[:3])
        raise RunError(f"{path} holds the model of another run ({shown}; the record of {run_dir} says "
                       f"{', '.join(f'{k} {recorded[k]!r}' for k in differing[:3])})")


def load_checked_model(run_dir, record, state, data, data_dir, device):
    """:func:`load_model` checked against the run's record, for the evaluated
    model and its transfer source alike: the test set's size and, on the whole
    test set, the error the record has for that state (proof that the data
    under --data-dir and the weights are the run's). Returns ``(model, rule,
    epoch, whole test error)``."""
    from ..config import RunConfig
    from ..data import Normalizer
    from ..run_model import error_and_loss
    config = RunConfig.from_record(record["config"])
    name = os.path.basename(os.path.normpath(run_dir))
    recorded_size = record.get("data", {}).get("test_size")
    if recorded_size is not None and recorded_size != len(data.test):
        raise RunError(f"run {name} was tested on {recorded_size} images, but {config.dataset} "
                       f"under {data_dir} has {len(data.test)}: point --data-dir at the data it was trained on")
    model, rule, epoch = load_model(run_dir, record, state, data, device)
    whole = error_and_loss(model, data.test.to(device), Normalizer(data.mean, data.std, device),
                           config.eval_batch_size)[0]
    check_test_error(model_path(run_dir, state), record, state, whole)
    return model, rule, epoch, whole


def check_test_error(path, record, state, measured):
    """The loaded model (kept in ``path``) on the whole test set must give the
    error its record has for that state. Up to 0.1% of the test images may
    flip (another processor or thread count rounds the logits differently),
    which on a small test set means none."""
    summary = record["summary"]
    recorded = summary["final_test_error"] if state == "final" else summary["test_error_at_best_val"]
    if recorded is not None and abs(measured - recorded) > 0.1 + 1e-9:
        raise RunError(f"the {state} model {path} has test error {measured:.2f}% on this data, but its record "
                       f"says {recorded:.2f}%: the data under --data-dir or the kept model is not the run's")

