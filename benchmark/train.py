"""Training one (dataset, architecture, rule, seed) cell and recording it."""
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import click
import numpy as np
import torch
import torch.nn.functional as F

from models import build_network, feedback_layers, make_rule, parameter_counts

from . import records
from .board import Board
from .data import Normalizer, load_dataset, random_crop_flip
from .io import atomic_path, write_json


class RunError(Exception):
    """A run could not start or continue; the message is one line for the user."""


class RunInterrupted(Exception):
    """Stopped by the user (Ctrl-C / SIGTERM) after writing a checkpoint."""


# Config fields added later, with the value that leaves a run as it was.
LATER_FIELDS = {"weight_decay": 0.0, "patience": 0}


@dataclass
class RunConfig:
    """Everything that defines a run's result (not where it runs or writes)."""
    dataset: str = "mnist"
    arch: str = "lc"
    algo: str = "bp"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    val_split: float = 0.0
    augment: bool = None  # None: the dataset's default (on for CIFAR-10 and image folders)
    train_subset: int = 0  # 0: the whole training set; else N samples, class-stratified (quick runs)
    rule_options: dict = field(default_factory=dict)
    eval_batch_size: int = 1000
    weight_decay: float = 0.0  # per step, on every forward weight (see LearningRule.decay_weights)
    patience: int = 0  # stop once validation error has not improved for this many epochs (0: never)

    def identity(self):
        """Short hash of the config without ``epochs``: the same run continued
        for more epochs (``--resume``) keeps its folder. Fields added after
        the first release are hashed only when set, so older runs keep their
        names."""
        fields = dict(dataclasses.asdict(self), epochs=None)
        for key, unset in LATER_FIELDS.items():
            if fields[key] == unset:
                del fields[key]
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def run_name(self):
        return f"{self.dataset}-{self.arch}-{self.algo}-seed{self.seed}-{self.identity()}"


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu or auto")
    return device


def describe_device(device):
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({records.cpu_name()}, {torch.get_num_threads()} threads)"


def angle_degrees(a, b):
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    denom = a.norm() * b.norm()
    if denom == 0:
        return None
    return math.degrees(math.acos(float((a @ b / denom).clamp(-1, 1))))


def exact_gradients(model, x, y):
    """BP's weight gradients of the mean cross-entropy, with every rule detached."""
    layers = feedback_layers(model)
    saved = [layer.rule for layer in layers]
    for layer in layers:
        layer.rule = None
    try:
        return torch.autograd.grad(F.cross_entropy(model(x), y), [layer.weight for layer in layers])
    finally:
        for layer, previous in zip(layers, saved):
            layer.rule = previous


def alignment_metrics(model, rule, x, y):
    """Per layer: W-B angle, angle of the rule's weight update to BP's gradient
    on the batch (x, y), |B|/|W|, and any metrics of the rule's own (target
    propagation: inverse reconstruction error, target distance)."""
    layers = feedback_layers(model)
    rule_updates = rule.weight_updates(model, x, y)
    bp_grads = exact_gradients(model, x, y)
    extra = rule.layer_metrics(model, x, y) or [{} for _ in layers]
    rows = []
    with torch.no_grad():
        for index, (layer, g_rule, g_bp) in enumerate(zip(layers, rule_updates, bp_grads)):
            backward = rule.alignment_matrix(layer)
            rows.append({
                "layer": index,
                "wb_angle": angle_degrees(layer.weight, backward) if backward is not None else None,
                "update_angle": angle_degrees(g_rule, g_bp),
                "norm_ratio": (float(backward.norm() / layer.weight.norm())
                               if backward is not None else None),
                **extra[index],
            })
    return rows


def _error_and_loss(model, split, normalize, batch_size):
    model.eval()
    wrong, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            x = normalize(split.images[start:start + batch_size])
            y = split.labels[start:start + batch_size]
            out = model(x)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            wrong += int((out.argmax(1) != y).sum())
    model.train()
    n = max(len(split), 1)
    return 100.0 * wrong / n, loss_sum / n


def optimizer_step(loss, optimizer, rule):
    """One update: gradients of ``loss`` (through the rule's backward), the
    optimiser step, weight decay, and the rule's own per-step updates around them."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if rule.has_step_hooks:
        rule.before_step()
    optimizer.step()
    rule.decay_weights()
    if rule.has_step_hooks:
        rule.after_step()


def stratified_subset(labels, size, seed=0):
    """Indices of ``size`` samples with the classes in the training set's
    proportions, the same for every run (fixed ``seed``): a random order,
    then classes taken round-robin by each sample's rank within its class."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels.cpu()[order]
    counts = torch.bincount(shuffled)
    rank = torch.empty(len(order), dtype=torch.float64)
    for label in range(len(counts)):
        where = (shuffled == label).nonzero().flatten()
        rank[where] = (torch.arange(len(where), dtype=torch.float64) + 0.5) / max(len(where), 1)
    keep = order[torch.sort(rank, stable=True).indices[:size]]
    return keep.sort().values


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains one run, writing ``record.json`` (every epoch) and
    ``checkpoint.pt`` (every epoch) atomically into ``run_dir``."""

    def __init__(self, config, run_dir, data_dir=None, device="auto", progress=True, echo=None,
                 dataset=None, epoch_lines=None, notes=None, tensorboard=None):
        self.config = config
        self.run_dir = run_dir
        self.data_dir = data_dir
        self.device = resolve_device(device)
        self.progress = progress  # the per-batch progress bar
        self.epoch_lines = progress if epoch_lines is None else epoch_lines  # one line per epoch
        self.echo = echo or (lambda msg: click.echo(msg, err=True))
        self.notes = notes or {}  # extra top-level facts for the record
        self.tensorboard = tensorboard  # a folder: mirror the epochs as TensorBoard scalars
        self._dataset = dataset
        self.stop_requested = False

    # set-up ------------------------------------------------------------------------
    def _setup(self):
        cfg = self.config
        seed_everything(cfg.seed)
        data = self._dataset or load_dataset(cfg.dataset, self.data_dir)
        train = data.train
        if cfg.train_subset:
            if cfg.train_subset > len(train):
                raise RunError(f"--train-subset {cfg.train_subset} is larger than the {cfg.dataset} training "
                               f"set ({len(train)} images)")
            train = train.subset(stratified_subset(train.labels, cfg.train_subset))
        if cfg.patience and not cfg.val_split:
            raise RunError(f"--patience {cfg.patience} needs a validation split (--val-split > 0): early "
                           f"stopping looks at validation error, never at the test set")
        val = None
        if cfg.val_split > 0:
            # The split is fixed (seed 0) so every seed and rule sees the same one.
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
            n_val = int(round(cfg.val_split * len(train)))
            val, train = train.subset(order[:n_val]), train.subset(order[n_val:])
        self.augment = data.augment_default if cfg.augment is None else cfg.augment
        self.train, self.test = train.to(self.device), data.test.to(self.device)
        self.val = val.to(self.device) if val is not None else None
        self.normalize = Normalizer(data.mean, data.std, self.device)
        self.data = data

        self.model = build_network(cfg.arch, data.family, data.num_classes)
        if tuple(data.input_shape) != _network_input(data.family):
            raise RunError(f"dataset {cfg.dataset} has {tuple(data.input_shape)} inputs but the "
                           f"{data.family} networks take {_network_input(data.family)}")
        self.rule = make_rule(cfg.algo, **cfg.rule_options)
        self.rule.weight_decay = cfg.weight_decay
        self.rule.attach(self.model, torch.Generator().manual_seed(cfg.seed + 1), data.input_shape)
        self.model.to(self.device)
        self.rule.moved_to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                          betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.augment_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 3)
        probe = self.train.subset(slice(0, min(256, len(self.train))))
        self.probe = (self.normalize(probe.images), probe.labels)

    def _new_record(self):
        cfg = self.config
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return {
            "schema": records.SCHEMA, "status": "running", "run_id": os.path.basename(self.run_dir),
            "started_at": now, "finished_at": None, "wall_seconds": 0.0,
            "config": dataclasses.asdict(cfg) | {"augment": self.augment},
            "seed": cfg.seed, "device": describe_device(self.device),
            "data": {"dataset": cfg.dataset, "family": self.data.family,
                     "train_size": len(self.train), "val_size": len(self.val) if self.val else 0,
                     "test_size": len(self.test), "num_classes": self.data.num_classes,
                     "data_dir": os.path.abspath(self.data_dir) if self.data_dir else None},
            "versions": records.versions(), "code": records.code_version(), "host": records.host_info(),
            "rule": self.rule.describe(),
            "params": parameter_counts(self.model, self.rule),
            "curves": {k: [] for k in ("epoch", "train_loss", "train_error", "test_loss",
                                        "test_error", "val_error", "seconds")},
            "alignment": [],
            "summary": {"epochs_done": 0},
        }

    # checkpoints -------------------------------------------------------------------------
    def _checkpoint_path(self):
        return os.path.join(self.run_dir, records.CHECKPOINT_NAME)

    def _save_checkpoint(self, record):
        state = {
            "config": dataclasses.asdict(self.config),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "shuffle_gen": self.shuffle_gen.get_state(), "augment_gen": self.augment_gen.get_state(),
            "rule_gen": self.rule.generator.get_state() if hasattr(self.rule, "generator") else None,
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(), "rule_state": self.rule.state_dict(), "record": record,
        }
        with atomic_path(self._checkpoint_path()) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self):
        path = self._checkpoint_path()
        if not os.path.exists(path):
            raise RunError(f"nothing to resume: no checkpoint at {path}")
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:
            raise RunError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
        saved = dict(state["config"], epochs=self.config.epochs)
        if saved != dict(dataclasses.asdict(self.config)):
            diff = sorted(k for k in saved if saved[k] != dataclasses.asdict(self.config).get(k))
            raise RunError(f"checkpoint {path} is from a different config (differs in: "
                           f"{', '.join(diff)}); rerun without --resume or with the same options")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle_gen.set_state(state["shuffle_gen"])
        self.augment_gen.set_state(state["augment_gen"].to(self.augment_gen.get_state().device))
        if state["rule_gen"] is not None:
            self.rule.generator.set_state(state["rule_gen"])
        self.rule.load_state_dict(state["rule_state"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        return state["record"]

    # the loop -------------------------------------------------------------------------------
    def run(self, resume=False, setup_done=False):
        if not setup_done:
            self._setup()
        os.makedirs(self.run_dir, exist_ok=True)
        record = self._load_checkpoint() if resume else self._new_record()
        record.update({k: v for k, v in self.notes.items() if v is not None})
        record["status"] = "running"
        record["config"]["epochs"] = self.config.epochs
        record_path = os.path.join(self.run_dir, records.RECORD_NAME)
        write_json(record_path, record)
        start_epoch = record["summary"]["epochs_done"] + 1
        if record.get("early_stop"):
            start_epoch = self.config.epochs + 1  # stopped early: more epochs would not be trained
        wall_before = record["wall_seconds"]
        started = time.time()
        board = Board(self.tensorboard, self.run_dir, start_epoch) if self.tensorboard else None
        try:
            for epoch in range(start_epoch, self.config.epochs + 1):
                epoch_start = time.time()
                self.rule.start_epoch()
                train_loss, train_error = self._train_epoch(epoch)
                self.rule.end_epoch()
                if not math.isfinite(train_loss) or not self._weights_finite():
                    self._finish(record, "diverged", epoch, wall_before + time.time() - started)
                    write_json(record_path, record)
                    return record
                self._log_epoch(record, epoch, train_loss, train_error, time.time() - epoch_start)
                if board is not None:
                    board.write_epoch(record)
                record["wall_seconds"] = round(wall_before + time.time() - started, 3)
                stop = early_stop(record["curves"], self.config.patience)
                if stop:
                    record["early_stop"] = stop
                write_json(record_path, record)
                self._save_checkpoint(record)
                if stop:
                    break
        except KeyboardInterrupt:
            record["status"] = "interrupted"
            write_json(record_path, record)
            raise RunInterrupted(
                f"interrupted after {record['summary']['epochs_done']} complete epoch(s); "
                f"the checkpoint in {self.run_dir} keeps them: rerun the same command with --resume") from None
        finally:
            if board is not None:
                board.close()
        self._finish(record, "complete", None, wall_before + time.time() - started)
        write_json(record_path, record)
        return record

    def _weights_finite(self, limit=1e6):
        with torch.no_grad():
            return all(bool(torch.isfinite(p).all()) and float(p.abs().max()) < limit
                       for p in self.model.parameters())

    def _train_epoch(self, epoch):
        cfg = self.config
        n = len(self.train)
        order = torch.randperm(n, generator=self.shuffle_gen).to(self.device)
        batches = math.ceil(n / cfg.batch_size)
        rule, model, optimizer = self.rule, self.model, self.optimizer
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), dtype=torch.long, device=self.device)
        shown = {"loss": float("nan")}
        bar = None
        if self.progress:
            phase = _schedule_phase(rule)
            label = f"epoch {epoch}/{cfg.epochs}" + (f" ({phase})" if phase else "")
            bar = click.progressbar(length=batches, label=label,
                                    file=sys.stderr, show_eta=True, show_percent=False,
                                    item_show_func=lambda _: f"loss {shown['loss']:.4f}")
            bar.__enter__()
        try:
            for b in range(batches):
                index = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                x = self.normalize(self.train.images[index])
                if self.augment:
                    x = random_crop_flip(x, 4 if x.shape[-1] <= 64 else 16, self.augment_gen)
                y = self.train.labels[index]
                if rule.owns_step:
                    loss, out = rule.train_step(model, x, y, optimizer)
                else:
                    out = model(x)
                    loss = F.cross_entropy(out, y)
                    optimizer_step(loss, optimizer, rule)
                loss_sum += loss.detach() * len(index)
                wrong += (out.detach().argmax(1) != y).sum()
                if bar is not None and (b % 10 == 0 or b == batches - 1):
                    shown["loss"] = float(loss.detach())
                    if not math.isfinite(shown["loss"]):
                        return float("nan"), float("nan")
                    bar.update(min(10, batches - b) if b % 10 == 0 else 0)
                elif b % 50 == 0 and not math.isfinite(float(loss.detach())):
                    return float("nan"), float("nan")
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        return float(loss_sum) / n, 100.0 * float(wrong) / n

    def _log_epoch(self, record, epoch, train_loss, train_error, seconds):
        cfg, curves = self.config, record["curves"]
        test_error, test_loss = _error_and_loss(self.model, self.test, self.normalize, cfg.eval_batch_size)
        val_error = (_error_and_loss(self.model, self.val, self.normalize, cfg.eval_batch_size)[0]
                     if self.val is not None else None)
        for key, value in (("epoch", epoch), ("train_loss", train_loss), ("train_error", train_error),
                           ("test_loss", test_loss), ("test_error", test_error),
                           ("val_error", val_error), ("seconds", round(seconds, 3))):
            curves[key].append(value)
        record["alignment"].append({"epoch": epoch, **self.rule.epoch_info(),
                                    "layers": alignment_metrics(self.model, self.rule, *self.probe)})
        record["summary"] = summarize(curves)
        if self.epoch_lines:
            val = f"  val {val_error:6.2f}%" if val_error is not None else ""
            phase = _schedule_phase(self.rule)
            val += f"  [{phase} epoch]" if phase else ""
            remaining = (cfg.epochs - epoch) * sum(curves["seconds"]) / len(curves["seconds"])
            self.echo(f"epoch {epoch:>3}/{cfg.epochs}  train loss {train_loss:.4f}  train err "
                      f"{train_error:6.2f}%  test err {test_error:6.2f}%{val}  ({seconds:.1f}s, "
                      f"ETA {remaining / 60:.1f} min)")

    def _finish(self, record, status, diverged_epoch, wall):
        record["status"] = status
        record["summary"]["diverged_at_epoch"] = diverged_epoch
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record["wall_seconds"] = round(wall, 3)


def early_stop(curves, patience):
    """``{epoch, best_val_epoch, patience, reason}`` once validation error has
    not improved on its best for ``patience`` epochs, else None."""
    val = curves["val_error"]
    if not patience or not val or val[-1] is None:
        return None
    best = val.index(min(val))
    if len(val) - 1 - best < patience:
        return None
    return {"epoch": curves["epoch"][-1], "best_val_epoch": curves["epoch"][best], "patience": patience,
            "reason": f"validation error did not improve for {patience} epoch(s) after epoch "
                      f"{curves['epoch'][best]}"}


def summarize(curves):
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


def _schedule_phase(rule):
    """The epoch's phase worth showing (an alternating schedule's), else None."""
    phase = rule.epoch_info().get("phase")
    return phase if phase not in (None, "parallel") else None


def _network_input(family):
    from models.networks import INPUT_SHAPES
    return INPUT_SHAPES[family]
