"""Training one (dataset, architecture, rule, seed) cell and recording it."""
from __future__ import annotations

import copy
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

import click
import torch

from models import parameter_counts
from models.optim import optimizer_step

from . import records
from .alignment import epoch_alignment
from .board import Board
from .checkpoints import load_checkpoint, restore_training_state, save_best_model, save_checkpoint, training_state
from .config import RunConfig, learning_rate
from .data import InMemoryDataset, Normalizer, load_dataset, random_crop_flip, training_splits
from .early_stopping import early_stop, fits_before
from .errors import DeadlineReached, RunError, RunInterrupted
from .io import write_json
from .run_model import build_model, describe_device, error_and_loss, resolve_device, seed_everything


def set_learning_rate(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def batches_of(split, order, batch_size, normalize, augment_gen=None):
    """Normalised ``(x, y)`` batches of ``split`` in ``order``, randomly cropped
    and flipped when ``augment_gen`` is given."""
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        x = normalize(split.images[index])
        if augment_gen is not None:
            x = random_crop_flip(x, 4 if x.shape[-1] <= 64 else 16, augment_gen)
        yield x, split.labels[index]


def weights_finite(model, limit=1e6):
    """Every parameter finite and below ``limit`` in size (else the run diverged)."""
    with torch.no_grad():
        return all(bool(torch.isfinite(p).all()) and float(p.abs().max()) < limit for p in model.parameters())


@contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM are ignored until the block is done: the run is
    already stopping (main thread only; signals reach Python code only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_resumable(record, config, run_dir):
    """RunError unless the run in ``run_dir`` can go on to ``config.epochs``."""
    done, epochs, planned = record["summary"]["epochs_done"], config.epochs, record["config"]["epochs"]
    if config.schedule_spans_the_run() and planned != epochs:
        # Its epochs so far had another schedule's rates: going on would pass a mix for an epochs-long run.
        raise RunError(f"--resume --epochs {epochs}: {run_dir} was trained on a {planned}-epoch "
                       f"{config.lr_schedule} schedule, whose every rate depends on its length; run without "
                       f"--resume for a {epochs}-epoch run (it gets a folder of its own)")
    if done > epochs:
        raise RunError(f"--resume --epochs {epochs}: {run_dir} already has {done} epochs; give --epochs {done} "
                       f"or more to extend it (a record never claims fewer epochs than it has)")


def note_resumed(record, device):
    """Each resumed segment may run elsewhere (other threads change the last bits): the record says so."""
    record.setdefault("resumes", []).append({
        "at": records.now(), "after_epoch": record["summary"]["epochs_done"], "device": device,
        "torch_threads": torch.get_num_threads()})


def mark_stopped(run_dir, kept, resumed, error=None, deadline=False):
    """Write ``kept`` (the record of the checkpoint on disk) marked interrupted
    and return the RunInterrupted that says, in one line, why and what is kept."""
    kept = dict(kept, status="interrupted")
    done = kept["summary"]["epochs_done"]
    with signals_deferred():  # a second Ctrl-C must not leave the record half-marked
        try:
            write_json(records.record_path(run_dir), kept)
            marked = ""
        except OSError:
            marked = "; its record could not be marked interrupted"
    if deadline:
        return DeadlineReached(f"stopped at the deadline after {done} epoch(s), all in the checkpoint{marked}",
                               epochs_kept=done)
    return RunInterrupted(stop_message(run_dir, done, resumed, error) + marked, epochs_kept=done)


def stop_message(run_dir, epochs_kept, resumed, error=None):
    """The one line a stopped run prints: why, and what its checkpoint on disk keeps."""
    if epochs_kept == 0 and not resumed:
        kept = "nothing was kept: rerun the same command"
    else:
        kept = (f"the checkpoint in {run_dir} keeps {epochs_kept} complete epoch(s): rerun the same command "
                f"with --resume")
    cause = "interrupted"
    if error is not None:
        cause = f"cannot write {error.filename or run_dir}: {error.strerror or error}"
    return f"{cause}; {kept}"


def schedule_phase(rule):
    """The epoch's phase worth showing (an alternating schedule's), else None."""
    phase = rule.epoch_info().get("phase")
    return phase if phase not in (None, "parallel") else None


class Trainer:
    """Trains one run. ``prepare()`` loads data, builds model and rule (writes nothing);
    ``run(run_dir)`` trains, writing ``record.json`` and ``checkpoint.pt`` atomically
    every epoch (and ``model_best.pt`` whenever the validation error improves);
    ``train_epoch`` is one pass over the training set (``bench`` times it)."""

    def __init__(self, config: RunConfig, data_dir: str | None = None, device: str | torch.device = "auto",
                 progress: bool = True, echo: Callable[[str], None] | None = None,
                 dataset: InMemoryDataset | None = None, epoch_lines: bool | None = None,
                 tensorboard: str | None = None, deadline: float | None = None,
                 epoch_estimate: float | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self.device = resolve_device(device)
        self.progress = progress  # the per-batch progress bar
        self.epoch_lines = progress if epoch_lines is None else epoch_lines  # one line per epoch
        self.echo = echo or (lambda msg: click.echo(msg, err=True))
        self.tensorboard = tensorboard  # a folder: mirror the epochs as TensorBoard scalars
        self.data = dataset
        # Start no epoch that would end after ``deadline`` (time.time()); until the
        # run has timed one, an epoch is taken to last ``epoch_estimate`` seconds.
        self.deadline, self.epoch_estimate = deadline, epoch_estimate
        self.prepared = False
        self.kept = None  # the record of the checkpoint on disk, once run() has one

    def prepare(self) -> Trainer:
        """Load the data, build the model, attach the rule; idempotent."""
        if self.prepared:
            return self
        cfg, device = self.config, self.device
        seed_everything(cfg.seed)
        data = self.data = self.data or load_dataset(cfg.dataset, self.data_dir)
        train, val = training_splits(data, cfg.train_subset, cfg.val_split)
        self.augment = data.augment_default if cfg.augment is None else cfg.augment
        self.train, self.test = train.to(device), data.test.to(device)
        self.val = val.to(device) if val is not None else None
        self.normalize = Normalizer(data.mean, data.std, device)
        self.model, self.rule, self.optimizer = build_model(cfg, data, device)
        # The run's own random streams, by name (checkpointed with the global ones).
        self.generators = {"shuffle_gen": torch.Generator().manual_seed(cfg.seed + 2),
                           "augment_gen": torch.Generator(device=device).manual_seed(cfg.seed + 3)}
        probe = self.train.subset(slice(0, min(256, len(self.train))))
        self.probe = (self.normalize(probe.images), probe.labels)
        self.prepared = True
        return self

    def run(self, run_dir: str, resume: bool = False, notes: dict | None = None) -> dict:
        """Train (or ``resume`` from ``run_dir``'s checkpoint) up to ``config.epochs``;
        returns the record. Ctrl-C / SIGTERM or a failed write (a full disk)
        raise RunInterrupted saying, like the record, what the checkpoint holds."""
        self.prepare()
        os.makedirs(run_dir, exist_ok=True)
        record = self._resume(run_dir) if resume else self.new_record(os.path.basename(run_dir))
        record["optimizer_step"] = optimizer_step(self.optimizer)  # a resumed run keeps its checkpoint's
        self.kept = copy.deepcopy(record)  # the record of the checkpoint on disk (or of nothing yet)
        record.update({k: v for k, v in (notes or {}).items() if v is not None})
        record["status"] = "running"
        record["config"]["epochs"] = self.config.epochs
        first = self.config.epochs + 1 if record.get("early_stop") else record["summary"]["epochs_done"] + 1
        board = Board(self.tensorboard, run_dir, first) if self.tensorboard else None
        wall_before, started = record["wall_seconds"], time.time()
        try:
            write_json(records.record_path(run_dir), record)
            status = self._train_epochs(record, first, run_dir, board, lambda: wall_before + time.time() - started)
        except KeyboardInterrupt:
            raise mark_stopped(run_dir, self.kept, resume) from None
        except OSError as exc:  # a full disk, a folder gone: what is on disk decides what is kept
            raise mark_stopped(run_dir, self.kept, resume, exc) from None
        except Exception:  # a crash (a bug): the record must not say "running"; the error keeps its traceback
            mark_stopped(run_dir, self.kept, resume)
            raise
        finally:
            if board is not None:
                board.close()
        if status == "stopped":  # the deadline: every epoch so far is in the checkpoint
            raise mark_stopped(run_dir, self.kept, resume, deadline=True)
        diverged = record["summary"]["epochs_done"] + 1 if status == "diverged" else None
        records.finish_record(record, status, wall_before + time.time() - started, diverged)
        write_json(records.record_path(run_dir), record)
        return record

    def epochs_kept(self) -> int:
        """Complete epochs in the run's checkpoint on disk (0 before it has one)."""
        return self.kept["summary"]["epochs_done"] if self.kept is not None else 0

    def _resume(self, run_dir):
        state = load_checkpoint(run_dir, self.config.as_record(), self.device)
        check_resumable(state["record"], self.config, run_dir)
        record = restore_training_state(state, self.model, self.optimizer, self.rule, self.generators)
        note_resumed(record, describe_device(self.device))
        return record

    def _train_epochs(self, record, first, run_dir, board, wall):
        """Epochs ``first..epochs``, each recorded and checkpointed; returns the status."""
        for epoch in range(first, self.config.epochs + 1):
            if not fits_before(self.deadline, record, self.epoch_estimate):
                return "stopped"
            epoch_start = time.time()
            set_learning_rate(self.optimizer, learning_rate(self.config, epoch))
            self.rule.start_epoch()
            train_loss, train_error = self.train_epoch(epoch)
            self.rule.end_epoch()
            if not math.isfinite(train_loss) or not weights_finite(self.model):
                return "diverged"
            self._log_epoch(record, epoch, train_loss, train_error, time.time() - epoch_start, wall)
            if board is not None:
                board.write_epoch(record)
            record["wall_seconds"] = round(wall(), 3)
            stop = early_stop(record["curves"], self.config.patience)
            if stop:
                record["early_stop"] = stop
            if self.val is not None and record["summary"]["best_val_epoch"] == epoch:
                save_best_model(run_dir, self.model, record)
            # The checkpoint first: the record on disk never claims an epoch the checkpoint lacks.
            save_checkpoint(run_dir, training_state(self.config, self.model, self.optimizer, self.rule,
                                                    self.generators, record))
            self.kept = copy.deepcopy(record)
            write_json(records.record_path(run_dir), record)
            if stop:
                break
        return "complete"

    def new_record(self, run_id: str) -> dict:
        data = {"dataset": self.config.dataset, "family": self.data.family, "train_size": len(self.train),
                "val_size": len(self.val) if self.val else 0, "test_size": len(self.test),
                "num_classes": self.data.num_classes,
                "data_dir": os.path.abspath(self.data_dir) if self.data_dir else None}
        return records.new_record(run_id, self.config.as_record() | {"augment": self.augment},
                                  describe_device(self.device), data, self.rule.describe(),
                                  parameter_counts(self.model, self.rule))

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training set; returns (mean loss, error %), NaN when it diverged. The steps
        never wait for the device: loss and errors are summed there and read once, at the end."""
        cfg, n = self.config, len(self.train)
        order = torch.randperm(n, generator=self.generators["shuffle_gen"]).to(self.device)
        batches = math.ceil(n / cfg.batch_size)
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), dtype=torch.long, device=self.device)
        augment_gen = self.generators["augment_gen"] if self.augment else None
        with EpochProgress(self.progress, batches, epoch, cfg.epochs, schedule_phase(self.rule)) as progress:
            for b, (x, y) in enumerate(batches_of(self.train, order, cfg.batch_size, self.normalize, augment_gen)):
                try:
                    loss, out = self.rule.train_step(self.model, x, y, self.optimizer)
                except RuntimeError as exc:  # an absurd learning rate overflows inside the optimiser
                    if "overflow" not in str(exc):
                        raise
                    return float("nan"), float("nan")
                loss_sum += loss.detach() * len(y)
                wrong += (out.detach().argmax(1) != y).sum()
                progress.update(b)
        return float(loss_sum) / n, 100.0 * float(wrong) / n

    def _log_epoch(self, record, epoch, train_loss, train_error, seconds, wall):
        size = self.config.eval_batch_size
        test_error, test_loss = error_and_loss(self.model, self.test, self.normalize, size)
        val_error = error_and_loss(self.model, self.val, self.normalize, size)[0] if self.val is not None else None
        alignment = {"epoch": epoch, **self.rule.epoch_info(), **epoch_alignment(self.model, self.rule, *self.probe)}
        records.append_epoch(record, alignment, epoch=epoch, train_loss=train_loss, train_error=train_error,
                             test_loss=test_loss, test_error=test_error, val_error=val_error,
                             seconds=round(seconds, 3))
        if self.epoch_lines:
            self.echo(epoch_line(record["curves"], self.config.epochs, schedule_phase(self.rule), wall()))


def epoch_line(curves, epochs, phase, wall_seconds):
    """The line printed after an epoch: its errors, training time and the run's
    ETA (from the run's wall time per epoch so far: evaluation included)."""
    epoch, seconds, val_error = curves["epoch"][-1], curves["seconds"][-1], curves["val_error"][-1]
    val = f"  val {val_error:6.2f}%" if val_error is not None else ""
    val += f"  [{phase} epoch]" if phase else ""
    remaining = (epochs - epoch) * wall_seconds / epoch
    return (f"epoch {epoch:>3}/{epochs}  train loss {curves['train_loss'][-1]:.4f}  train err "
            f"{curves['train_error'][-1]:6.2f}%  test err {curves['test_error'][-1]:6.2f}%{val}  ({seconds:.1f}s, "
            f"ETA {remaining / 60:.1f} min)")


class EpochProgress:
    """The per-batch progress bar, updated every 10th batch. It shows no loss:
    reading one would make the step wait for the device (the epoch line after
    the epoch has it)."""

    def __init__(self, show, batches, epoch, epochs, phase):
        self.batches, self.bar = batches, None
        if show:
            label = f"epoch {epoch}/{epochs}" + (f" ({phase})" if phase else "")
            self.bar = click.progressbar(length=batches, label=label, file=sys.stderr, show_eta=True,
                                         show_percent=False)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def update(self, b):
        if self.bar is not None and b % 10 == 0:
            self.bar.update(min(10, self.batches - b))
