"""Starting a run from user options: validation, the run folder, the trainer."""
import os

import click

from .data import DataError
from .records import CHECKPOINT_NAME
from .train import RunConfig, RunError, RunInterrupted, Trainer


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


def start_run(options, rule_options, data_dir, out, device, progress, resume, bad_input,
              check_data_dir=None, check_out_dir=None, dataset=None, tensorboard=None):
    """Validate, create the run folder and train. Errors about the user's input
    are raised as ``bad_input`` (one line, nothing written)."""
    from models import make_rule
    try:
        rule = make_rule(options["algo"], **rule_options)
    except ValueError as exc:
        raise bad_input(str(exc)) from None
    rule_options = {key: rule.options[key] for key in rule_options}  # typed, e.g. "1e-3" -> 0.001
    if options.get("weight_decay") is None:
        options = dict(options, weight_decay=rule.default_weight_decay)
    if check_data_dir and dataset is None:
        check_data_dir(data_dir)
    if check_out_dir:
        check_out_dir(out)
    config = RunConfig(rule_options=rule_options, **options)
    try:
        trainer = Trainer(config, run_dir=None, data_dir=data_dir, device=device, progress=progress,
                          dataset=dataset, tensorboard=tensorboard)
        trainer._setup()  # loads data and builds the model before anything is written
    except (DataError, RunError, ValueError) as exc:
        raise bad_input(str(exc)) from None
    if resume and not os.path.exists(os.path.join(out, config.run_name(), CHECKPOINT_NAME)):
        raise bad_input(f"--resume: no checkpoint for this config at {os.path.join(out, config.run_name())}; "
                        f"run without --resume first")
    run_dir = claim_run_dir(out, config.run_name(), resume)
    trainer.run_dir = run_dir
    first = os.path.join(out, config.run_name())
    if run_dir != first:
        click.echo(f"warning: {first} already holds a run of this config and seed; this is a second run of "
                   f"it, in {run_dir} (use --resume to continue the first instead)", err=True)
        trainer.notes["repeat_of"] = os.path.basename(first)
    try:
        record = trainer.run(resume=resume, setup_done=True)
    except RunError as exc:
        raise bad_input(str(exc)) from None
    except RunInterrupted as exc:
        raise click.ClickException(str(exc)) from None
    return record, run_dir
