"""Starting one run from the user's options: validation, the run folder, the trainer."""
import os
import shutil

from .config import resolve_run_config
from .errors import ConfigError, RunError
from .locks import RunLock
from .records import CHECKPOINT_NAME


def claim_run_dir(out, name, resume):
    """The run's folder. ``resume`` reuses the config's folder; otherwise a
    fresh one is created exclusively (``name``, ``name-2``, ...) so two
    processes never write into the same folder."""
    base = os.path.join(out, name)
    if resume:
        return base
    try:
        os.makedirs(out, exist_ok=True)
        for attempt in range(1, 10_000):
            path = base if attempt == 1 else f"{base}-{attempt}"
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise RunError(f"--out {out!r}: cannot create the run folder: {exc.strerror}") from None
    raise RunError(f"too many runs named {name} in {out}")


def discard_if_nothing_kept(run_dir, epochs_kept, resumed):
    """Remove the folder of a run that stopped (or crashed) before its first
    epoch, when it was not resumed: there is nothing to resume, and rerunning
    the command then reuses the name. Returns whether it did."""
    if epochs_kept != 0 or resumed:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def start_run(options, rule_options, data_dir, out, device="auto", progress=True, resume=False, dataset=None,
              tensorboard=None, warn=print):
    """Resolve the config, load the data and build the model (nothing written
    yet, so bad input leaves no trace), claim the run folder and train.
    Returns ``(record, run_dir)``; user errors are BiobenchErrors."""
    from .train import Trainer
    config = resolve_run_config(options, rule_options)
    try:
        trainer = Trainer(config, data_dir=data_dir, device=device, progress=progress, dataset=dataset,
                          tensorboard=tensorboard).prepare()
    except ValueError as exc:  # a network or rule refusing this dataset's shapes
        raise ConfigError(str(exc)) from None
    first = os.path.join(out, config.run_name())
    if resume and not os.path.exists(os.path.join(first, CHECKPOINT_NAME)):
        if config.schedule_spans_the_run():
            raise RunError(f"--resume: no checkpoint for this config at {first}: a {config.lr_schedule} schedule "
                           f"depends on --epochs, so a run of {config.epochs} epochs is a run of its own and no "
                           f"shorter one is extended into it; run without --resume to train it")
        raise RunError(f"--resume: no checkpoint for this config at {first}; run without --resume first")
    run_dir = claim_run_dir(out, config.run_name(), resume)
    # The same lock grid cells take: two processes never train in one folder, resumed or not.
    with RunLock(run_dir) as lock:
        if not lock.acquire():
            raise RunError(f"{run_dir} is being trained by another process ({lock.holder()}); wait for it to end")
        notes = {}
        if run_dir != first:
            warn(f"warning: {first} already holds a run of this config and seed; this is a second run of "
                 f"it, in {run_dir} (use --resume to continue the first instead)")
            notes["repeat_of"] = os.path.basename(first)
        try:
            return trainer.run(run_dir, resume=resume, notes=notes), run_dir
        except Exception:  # stopped or crashed: the record on disk is the checkpoint's, marked interrupted
            discard_if_nothing_kept(run_dir, trainer.epochs_kept(), resume)
            raise
