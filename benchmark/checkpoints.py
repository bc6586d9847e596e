"""Epoch checkpoints: everything a run needs to continue exactly (model,
optimiser, the rule's state, every random stream, the record so far),
written atomically after every epoch; and, for runs with a validation split,
the model of the best validation epoch (``model_best.pt``), which evaluations
after training (``cli.py robustness``) use beside the last epoch's."""
import os
import random
import zipfile

import numpy as np
import torch

from .errors import RunError
from .io import atomic_path
from .records import BEST_MODEL_NAME, CHECKPOINT_NAME


def checkpoint_path(run_dir):
    return os.path.join(run_dir, CHECKPOINT_NAME)


def verify_checkpoint(path):
    """RunError unless every member of the checkpoint's zip archive (torch's
    format) passes its CRC-32 check: ``torch.load`` checks none, so a damaged
    file could resume silently into a wrong run. Costs one read of the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        bad = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if bad is not None:
        raise RunError(f"checkpoint {path} is damaged ({bad} fails its check); it cannot be resumed: move the "
                       f"run folder away and run again")


def best_model_path(run_dir):
    return os.path.join(run_dir, BEST_MODEL_NAME)


def save_checkpoint(run_dir, state):
    """Write, verify, then atomically put in place: a bad write never replaces a good checkpoint."""
    save_verified(checkpoint_path(run_dir), state)


def save_best_model(run_dir, model, record):
    """The model of the epoch ``record`` just ended, as the best-validation
    model: its state dict (forward weights and the feedback buffers a rule
    keeps on the layers; nothing of the optimiser), the epoch and its errors.
    Written before the epoch's checkpoint, so the record on disk never names a
    best epoch whose model is missing; a resumed run redoes that epoch exactly."""
    summary = record["summary"]
    save_verified(best_model_path(run_dir), {
        "model": model.state_dict(), "epoch": summary["best_val_epoch"],
        "val_error": record["curves"]["val_error"][-1], "test_error": summary["test_error_at_best_val"],
        "config": record["config"]})


def save_verified(path, state):
    with atomic_path(path) as tmp:
        with open(tmp, "wb", buffering=0) as handle:
            sink = ErrorKeepingFile(handle)
            try:
                torch.save(state, sink)
            except RuntimeError:
                # torch reports anything raised inside a write as a RuntimeError about positions:
                # give back what really happened (a full disk, or a signal's KeyboardInterrupt)
                if sink.error is None:
                    raise
                if isinstance(sink.error, OSError):
                    raise OSError(sink.error.errno, sink.error.strerror, path) from None
                raise sink.error from None
        verify_checkpoint(tmp)


class ErrorKeepingFile:
    """A file for ``torch.save`` that keeps what a write raised (an OSError, or
    what a signal handler raised while Python was inside the write)."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data):
        try:
            return self.handle.write(data)
        except BaseException as exc:
            self.error = exc
            raise

    def flush(self):
        self.handle.flush()


def load_checkpoint(run_dir, config_fields, device):
    """The state saved in ``run_dir``; RunError when there is none, it cannot
    be read, or it belongs to another config (``config_fields``: the record
    form of the config; ``epochs`` may differ: resuming extends a run)."""
    path = checkpoint_path(run_dir)
    if not os.path.exists(path):
        raise RunError(f"nothing to resume: no checkpoint at {path}")
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many kinds for a damaged file
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise RunError(f"cannot read checkpoint {path}: {reason}") from None
    saved = dict(state["config"], epochs=config_fields["epochs"])
    if saved != config_fields:
        diff = sorted(k for k in saved if saved[k] != config_fields.get(k))
        raise RunError(f"checkpoint {path} is from a different config (differs in: "
                       f"{', '.join(diff)}); rerun without --resume or with the same options")
    return state


def training_state(config, model, optimizer, rule, generators, record):
    """What a checkpoint holds: the config (record form), model, optimiser,
    the rule's own state and stream, the run's ``generators`` (by name), the
    global random streams and the record so far."""
    rule_gen = rule.generator
    return {"config": config.as_record(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            **{name: generator.get_state() for name, generator in generators.items()},
            "rule_gen": rule_gen.get_state() if rule_gen is not None else None,
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(), "rule_state": rule.state_dict(), "record": record}


def restore_training_state(state, model, optimizer, rule, generators):
    """Put ``state`` (from :func:`training_state`) back; returns its record."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for name, generator in generators.items():
        generator.set_state(state[name].to(generator.get_state().device))
    if state["rule_gen"] is not None:  # a generator's state is a CPU tensor, whatever map_location did to it
        rule.generator.set_state(state["rule_gen"].cpu())
    rule.load_state_dict(state["rule_state"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])
    return state["record"]
