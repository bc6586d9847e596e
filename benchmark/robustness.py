"""``cli.py robustness``: adversarial and corruption error of finished runs.

Every attack works on pixels in [0, 1], before the suite's normalisation
(:class:`AttackedModel` applies it inside the model), under an L-infinity
budget ``eps``. Attacks come from torchattacks: FGSM; PGD (Madry et al. 2018)
on the cross-entropy; and APGD on the DLR loss (``apgd-dlr``, Croce & Hein
2020), a ratio of logit differences that no rescaling of the logits changes.
A network whose logits grow large (DFA's do under SGD) saturates its softmax
until the cross-entropy's input gradient rounds to exactly zero in float32:
FGSM and PGD then stand still (gradient masking), APGD-DLR does not. What
changes between the columns is only *which gradient* the attack follows:

* ``true``: the network's exact input gradient, whatever rule trained it
  (every layer's rule detached, as :func:`benchmark.alignment.exact_gradients`
  does; for EP, whose eval-mode forward relaxes without a graph, autograd
  through the unrolled free phase);
* ``rule``: the rule's own backward path with the rule attached (FA's B, DFA's
  e @ B_l, sign rules, KP's B, DRTP's projected target, pc-rf's B; EP's
  two-phase estimate), down to the pixels: the first layer, which training
  never asks for an input gradient, gets a feedback drawn as the rule draws
  the others' (Akrout et al. 2019 attack FA networks so; KP, whose B is
  learned and tends to W, keeps W_1^T there). Rules whose layers all send
  the exact gradient down (bp, pc, TP, PEPITA, FF) have no such column;
* ``transfer``: examples made on the BP run of the same dataset, architecture
  and seed (its true gradient) and evaluated on the target network, whose own
  gradient is never computed.

Corruptions (Gaussian noise, Gaussian blur, contrast; severities 1-5 with
CIFAR-10-C's parameters, Hendrycks & Dietterich 2019) use torchvision's
functional transforms. Results go into each run folder as ``robustness.json``
(atomic), merged with what an earlier call wrote there and this one did not
recompute (:func:`merge_earlier`); finished parts of an interrupted
evaluation wait in ``robustness.partial.json`` and are reused by the same
command.
"""
import hashlib
import json
import math
import os
import time
import zlib
from dataclasses import dataclass, field

from .errors import ConfigError, GridFailed, RecordError, RunError, RunInterrupted
from .io import atomic_path, write_json
from .records import (
    BEST_MODEL_NAME,
    CHECKPOINT_NAME,
    code_version,
    find_records,
    load_record,
    load_robustness_partial,
    load_robustness_result,
    versions,
)
from .records import ROBUSTNESS_NAME as RESULT_NAME
from .records import ROBUSTNESS_PARTIAL_NAME as PARTIAL_NAME
from .records import ROBUSTNESS_SCHEMA as SCHEMA
from .records import ROBUSTNESS_STATES as STATES

# A BP run's true-gradient adversarial examples, kept for the runs that take
# them as transfer examples (git-ignored; see ``source_examples``).
EXAMPLES_FOLDER = "transfer-examples"
ATTACKS = ("fgsm", "pgd", "apgd-dlr")
GRADIENTS = ("true", "rule", "transfer")
# Hendrycks & Dietterich 2019, CIFAR-10-C (32 x 32 images, so also MNIST's
# 28 x 28; ImageNet-C's blur would wipe a digit out): noise std, blur sigma,
# contrast factor, for severities 1-5.
CORRUPTIONS = {"gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10), "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
               "contrast": (0.75, 0.5, 0.4, 0.3, 0.15)}
# Datasets whose images are 8-bit pixels (bounds [0, 1] after /255), with their
# default eps lists and PGD settings. MNIST: Madry et al. 2018's eps 0.3, 40
# steps of 0.01 with a random start; CIFAR-10: their step 2/255 with 10 steps
# (they trained with 7 and attacked with 20), eps up to 16/255.
MNIST_DEFAULTS = {"eps": [0.0, 0.05, 0.1, 0.2, 0.3], "pgd_steps": 40, "pgd_step": 0.01}
CIFAR_DEFAULTS = {"eps": [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "pgd_steps": 10, "pgd_step": 2 / 255}
PIXEL_DATASETS = {"mnist": MNIST_DEFAULTS, "fashion-mnist": MNIST_DEFAULTS, "cifar10": CIFAR_DEFAULTS,
                  "cifar10-jpeg": CIFAR_DEFAULTS,
                  "imagefolder": {"eps": [0.0, 1 / 255, 2 / 255, 4 / 255], "pgd_steps": 10, "pgd_step": 1 / 255}}


# options ----------------------------------------------------------------------------
def parse_eps(text):
    """``"0,0.1,8/255"`` -> sorted distinct floats in [0, 1]; ConfigError naming a bad one."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            top, _, bottom = part.partition("/")
            value = float(top) / (float(bottom) if bottom else 1.0)
        except (ValueError, ZeroDivisionError):
            value = math.nan
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(f"--eps {part!r} is not allowed: each eps must be a number in [0, 1] (pixel units, "
                              f"e.g. 0.1 or 8/255)")
        values.append(value)
    return sorted(set(values))


def parse_names(text, allowed, flag):
    """A comma-separated subset of ``allowed`` (``none``: empty); ConfigError naming a bad one."""
    if str(text).strip() == "none":
        return ()
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    for name in names:
        if name not in allowed:
            raise ConfigError(f"{flag} {name!r} is not known; allowed: {', '.join(allowed)} (comma-separated)")
    return tuple(dict.fromkeys(names))


@dataclass
class Settings:
    """What the user chose; :meth:`resolved` fills the dataset's defaults."""
    eps: list = None  # None: the dataset's
    attacks: tuple = ATTACKS
    gradients: tuple = GRADIENTS
    corruptions: tuple = tuple(CORRUPTIONS)
    pgd_steps: int = None
    pgd_step: float = None
    random_start: bool = True
    test_subset: int = 500  # 0: the whole test set
    batch_size: int = 1000  # images per attack batch
    states: tuple = ("final",)  # "best" too doubles the time
    rules: tuple = ()  # evaluate only runs of these rules (empty: all)
    skip_rules: tuple = ()  # and none of these

    def __post_init__(self):
        if not (self.attacks and self.gradients) and not self.corruptions:
            raise ConfigError("nothing to evaluate: give --attacks and --gradients, or --corruptions, other than "
                              "'none'")
        if not self.states:
            raise ConfigError(f"--states 'none' is not allowed; allowed: {', '.join(STATES)}")

    def resolved(self, dataset):
        """The settings a run of ``dataset`` is evaluated with (what robustness.json records)."""
        if dataset not in PIXEL_DATASETS:
            raise ConfigError(f"dataset {dataset!r} has no known pixel bounds, so eps means nothing for it; "
                              f"robustness knows: {', '.join(PIXEL_DATASETS)}")
        defaults = PIXEL_DATASETS[dataset]
        eps = self.eps if self.eps is not None else defaults["eps"]
        return {"norm": "Linf", "pixel_range": [0.0, 1.0], "eps": [float(e) for e in eps],
                "attacks": list(self.attacks), "gradients": list(self.gradients),
                "pgd": {"steps": self.pgd_steps or defaults["pgd_steps"],
                        "step_size": self.pgd_step or defaults["pgd_step"], "random_start": self.random_start},
                "corruptions": {name: list(CORRUPTIONS[name]) for name in self.corruptions},
                "test_subset": self.test_subset, "subset_seed": 0, "batch_size": self.batch_size,
                "states": list(self.states)}


def library_versions():
    info = versions()
    try:
        import torchattacks
        info["torchattacks"] = torchattacks.__version__
    except ImportError:
        info["torchattacks"] = None
    return info


def check_attack_library():
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        raise ConfigError("robustness needs torchattacks: pip install -e \".[robustness]\"") from None


# the runs ---------------------------------------------------------------------------------
@dataclass
class Job:
    """One run to evaluate: its folder, record, the model files it keeps and its BP transfer source."""
    run_dir: str
    record: dict = field(repr=False)
    models: dict  # state -> file name in run_dir
    source: str = None  # run folder of the BP network the transfer examples come from
    notes: list = field(default_factory=list)

    @property
    def name(self):
        return os.path.basename(self.run_dir)


# What a BP transfer source may differ in from its target: the rule and its
# settings (the decay is ranked in assign_sources), and how evaluation is batched.
_SOURCE_FREE = ("algo", "rule_options", "weight_decay", "eval_batch_size")


def _source_key(config):
    """What a BP transfer source shares with its targets: the whole training
    protocol (data, architecture, seed, epochs, optimiser, schedule, ...), so a
    3-epoch target is never attacked with examples of a 100-epoch source."""
    from .config import RunConfig
    fields = RunConfig.from_record(config).as_record()
    return json.dumps({k: v for k, v in fields.items() if k not in _SOURCE_FREE}, sort_keys=True, default=str)


def plan(roots, settings, warn=print):
    """Every complete run under ``roots`` as a :class:`Job`, checked before
    anything is written: ConfigError (one line) for a run folder without a
    kept model or a dataset without pixel bounds. Unfinished and diverged runs
    are left out (``warn`` says how many); so are unreadable records."""
    jobs, skipped, sources = [], {}, []
    for root in roots:
        for path in find_records(root):
            try:
                record = load_record(path)
            except RecordError as exc:
                warn(f"warning: skipped {exc}")
                continue
            if record["status"] != "complete":
                skipped[record["status"]] = skipped.get(record["status"], 0) + 1
                continue
            run_dir = os.path.dirname(path)
            if record["config"]["algo"] == "bp" and os.path.isfile(os.path.join(run_dir, CHECKPOINT_NAME)):
                sources.append(Job(run_dir, record, {"final": CHECKPOINT_NAME}))
            algo = record["config"]["algo"]
            if (settings.rules and algo not in settings.rules) or algo in settings.skip_rules:
                continue
            settings.resolved(record["config"]["dataset"])  # raises for a dataset without pixel bounds
            models = kept_models(run_dir, record, settings.states)
            if not models:
                skipped["without a best-validation model"] = skipped.get("without a best-validation model", 0) + 1
                continue
            job = Job(run_dir, record, models)
            if "best" in settings.states and "best" not in models:
                job.notes.append(f"best: no {BEST_MODEL_NAME} (no validation split, or trained before biobench "
                                 f"kept it)")
            jobs.append(job)
    for status, count in sorted(skipped.items()):
        warn(f"robustness: {count} {status} run(s) left out (only complete runs are evaluated)")
    seen, unique = set(), []
    for job in jobs:  # overlapping roots name a folder twice
        real = os.path.realpath(job.run_dir)
        if real not in seen:
            seen.add(real)
            unique.append(job)
    if "transfer" in settings.gradients:
        assign_sources(unique, sources)
    return unique


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


def assign_sources(jobs, sources):
    """Each job's BP transfer source among ``sources`` (the complete BP runs
    that keep a model, selected or not): the BP run of the same protocol
    (``_source_key``), preferring the target's weight decay, then none."""
    bp = {}
    for job in sources:
        bp.setdefault(_source_key(job.record["config"]), []).append(job)
    for job in jobs:
        config = job.record["config"]
        if config["algo"] == "bp":
            continue
        candidates = bp.get(_source_key(config), [])
        decay = config.get("weight_decay") or 0.0
        ranked = sorted(candidates, key=lambda c: ((c.record["config"].get("weight_decay") or 0.0) != decay,
                                                   (c.record["config"].get("weight_decay") or 0.0) != 0.0, c.name))
        if ranked:
            job.source = ranked[0].run_dir
        else:
            job.notes.append("transfer: no BP run of the same dataset, architecture, seed and training protocol "
                             "under --runs")


_DIGESTS = {}


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


def job_status(job, settings):
    """``done`` when the run's robustness.json has these settings and models,
    else ``todo``; RecordError (one line) for a file of the wrong shape, which
    a later evaluation could not merge with (see :func:`merge_earlier`)."""
    done = earlier_result(job.run_dir)
    return "done" if done is not None and done.get("fingerprint") == fingerprint(job, settings) else "todo"


def earlier_result(run_dir):
    """The run's robustness.json, checked (``load_robustness_result``), or None when it has none."""
    path = os.path.join(run_dir, RESULT_NAME)
    return load_robustness_result(path) if os.path.exists(path) else None


def fingerprint(job, settings):
    """What the numbers depend on: the settings, each model file and the transfer source's."""
    parts = {"settings": settings.resolved(job.record["config"]["dataset"]),
             "models": {state: file_digest(os.path.join(job.run_dir, name)) for state, name in job.models.items()}}
    if job.source:
        source_models = kept_models(job.source, load_record(os.path.join(job.source, "record.json")), STATES)
        parts["source"] = {state: file_digest(os.path.join(job.source, name)) for state, name in source_models.items()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# models --------------------------------------------------------------------------------------
_DATA_CACHE = {}


def dataset_of(name, data_dir):
    """The dataset, loaded once per process."""
    from .data import load_dataset
    key = (name, os.path.abspath(data_dir))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(name, data_dir)
    return _DATA_CACHE[key]


def model_path(run_dir, state):
    """The file that keeps the run's ``state`` model."""
    return os.path.join(run_dir, CHECKPOINT_NAME if state == "final" else BEST_MODEL_NAME)


def load_model(run_dir, record, state, data, device):
    """``(model, rule, epoch)``: the run's network built by the trainer's own
    path (``build_model`` with the record's config, so the rule is attached
    exactly as in training) with the ``state``'s weights, in eval mode."""
    import torch

    from .checkpoints import verify_checkpoint
    from .config import RunConfig
    from .run_model import build_model, seed_everything
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
    from .config import RunConfig
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
    from .data import Normalizer
    from .run_model import error_and_loss
    name = os.path.basename(os.path.normpath(run_dir))
    recorded_size = record.get("data", {}).get("test_size")
    if recorded_size is not None and recorded_size != len(data.test):
        raise RunError(f"run {name} was tested on {recorded_size} images, but {record['config']['dataset']} "
                       f"under {data_dir} has {len(data.test)}: point --data-dir at the data it was trained on")
    model, rule, epoch = load_model(run_dir, record, state, data, device)
    whole = error_and_loss(model, data.test.to(device), Normalizer(data.mean, data.std, device),
                           record["config"].get("eval_batch_size", 1000))[0]
    check_test_error(model_path(run_dir, state), record, state, whole)
    return model, rule, epoch, whole


def attacked_model(model, rule, data, path):
    """The module an attack differentiates: pixels in [0, 1] -> logits, the
    suite's normalisation inside (the same arithmetic as ``data.Normalizer``
    on the 8-bit images, so eps = 0 gives the trainer's logits bit for bit),
    and autograd along ``path`` (``true`` or ``rule``)."""
    import torch
    from torch import nn

    class Estimated(torch.autograd.Function):
        """EP's forward (eval mode: the relaxed read-out) with EP's own gradient estimate as backward."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            with torch.no_grad():
                return model(x)

        @staticmethod
        def backward(ctx, grad_logits):
            (x,) = ctx.saved_tensors
            return rule.estimate_input_gradient(x, grad_logits)

    class Attacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("scale", (1.0 / (255.0 * data.std)).view(1, -1, 1, 1).clone())
            self.register_buffer("shift", (data.mean / data.std).view(1, -1, 1, 1).clone())
            self.labels = None  # the batch's labels, for a rule whose signal is the target (DRTP)

        def forward(self, pixels):
            x = torch.addcmul(-self.shift, pixels * 255, self.scale)
            if path == "true":
                return rule.differentiable_forward(self.model, x)
            if rule.has_input_gradient_estimate:
                return Estimated.apply(x)
            logits = self.model(x)
            rule.project_target(self.labels, logits)
            return logits

    device = next(model.parameters()).device
    return Attacked().to(device).eval()


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


def rule_gradient(model, rule):
    """``(applicable, what it is)`` of the rule-gradient attack on ``model``."""
    from models.layers import feedback_layers
    if rule.has_input_gradient_estimate:
        return True, (f"{rule.name}'s own estimate: the nudged phases' contrast with respect to the input (the "
                      f"input treated as a parameter of Phi), the cost linearised at the free fixed point")
    with_rule = [layer for layer in feedback_layers(model) if layer.rule is not None]
    if not with_rule:
        return False, (f"{rule.name}: every layer's backward is exact (no layer carries a rule signal down), so "
                       f"a rule-gradient attack is the true-gradient one; left out")
    operands = [layer.rule.backward_operand(layer, layer.weight) for layer in with_rule]
    if all(b is layer.weight and route is None for layer, (b, route) in zip(with_rule, operands)):
        return False, f"{rule.name}: its layers send the error down through W itself, as BP; left out"
    return True, (f"autograd with {rule.name} attached: each layer sends its signal down by the rule's backward "
                  f"operand (B, e @ B_l or the projected target)")


def give_input_feedback(model, rule, seed):
    """For the rule-gradient attack: the first layer, which training leaves
    without a rule, gets the feedback the rule gives the others
    (``LearningRule.input_feedback``), drawn from a seed of the run's own, so
    the attack reaches the pixels by the rule (Akrout et al. 2019's attacker).
    Returns the sentence the result file keeps."""
    import torch

    from models.layers import feedback_layers
    first = feedback_layers(model)[0]
    generator = torch.Generator().manual_seed(unit_seed(seed, "input-feedback"))
    if rule.input_feedback(first, generator):
        return (f"the first layer's feedback, which training never uses, is drawn as {rule.name} draws the "
                f"others' (a fixed seed of the run's own), so the rule's signal reaches the pixels")
    return (f"the first layer reaches the pixels through W_1^T: {rule.name}'s feedback is learned and comes to "
            f"equal W, so a first-layer B would have too")


def unit_seed(seed, unit):
    return zlib.crc32(f"{seed}/{unit}".encode())


def reseed(rule, seed):
    """The global stream (PGD's random start, the noise) and the rule's own
    (brSF's magnitudes) start from ``seed``: each unit of work gives the same
    numbers whether it runs first or after a resume."""
    import torch
    torch.manual_seed(seed)
    if rule.generator is not None:
        rule.generator.manual_seed(seed)


def make_attack(name, module, eps, pgd):
    import torch
    import torchattacks
    if name == "fgsm":
        return torchattacks.FGSM(module, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(module, eps=eps, alpha=pgd["step_size"], steps=pgd["steps"],
                                random_start=pgd["random_start"])
    # PGD's iteration budget; APGD sets its own step sizes and always starts at
    # a random point. It reseeds the global stream with ``seed``, so the seed
    # comes from that stream: the unit's reseed still decides every number.
    return torchattacks.APGD(module, norm="Linf", eps=eps, steps=pgd["steps"], n_restarts=1, loss="dlr",
                             seed=int(torch.randint(0, 2 ** 31 - 1, (1,))))


def adversarial(module, pixels, labels, attack, eps, pgd, batch_size):
    """Adversarial pixels for every image, ``batch_size`` at a time; the
    images themselves at eps 0 (what every attack returns there)."""
    import torch
    if eps == 0:
        return pixels.clone()
    out = []
    for start in range(0, len(labels), batch_size):
        x, y = pixels[start:start + batch_size], labels[start:start + batch_size]
        module.labels = y
        if attack != "apgd-dlr":
            out.append(make_attack(attack, module, eps, pgd)(x, y))
            continue
        # APGD attacks only the images the model gets right and leaves the
        # others as they are; handing it just those keeps the batch it
        # differentiates equal to ``module.labels`` (DRTP's target needs them).
        with torch.no_grad():
            correct = module(x).argmax(1) == y
        adv = x.clone()
        if correct.any():
            module.labels = y[correct]
            adv[correct] = make_attack(attack, module, eps, pgd)(x[correct], y[correct])
        out.append(adv)
    return torch.cat(out)


def pixel_error(model, data, pixels, labels, batch_size):
    """Test error (%) of ``model`` (eval mode: EP relaxes) on pixels in [0, 1]."""
    import torch
    scale = (1.0 / (255.0 * data.std)).view(1, -1, 1, 1).to(pixels.device)
    shift = (data.mean / data.std).view(1, -1, 1, 1).to(pixels.device)
    wrong = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = torch.addcmul(-shift, pixels[start:start + batch_size] * 255, scale)
            wrong += int((model(x).argmax(1) != labels[start:start + batch_size]).sum())
    return 100.0 * wrong / max(len(labels), 1)


def corrupt(pixels, name, level):
    """``pixels`` [N, C, H, W] in [0, 1] corrupted by torchvision's functional
    transforms: Gaussian noise of std ``level`` (clipped), Gaussian blur of
    sigma ``level`` (kernel radius int(4 sigma + 0.5), as scipy's and
    scikit-image's truncate=4; reflect padding), or contrast ``level`` (blend
    with each image's mean grey)."""
    from torchvision.transforms.v2 import functional as TF
    if name == "gaussian_noise":
        return TF.gaussian_noise(pixels, mean=0.0, sigma=level, clip=True)
    if name == "gaussian_blur":
        radius = int(4 * level + 0.5)
        return TF.gaussian_blur(pixels, kernel_size=[2 * radius + 1] * 2, sigma=[level, level]).clamp(0, 1)
    return TF.adjust_contrast(pixels, level).clamp(0, 1)


# one run ------------------------------------------------------------------------------------------
class Evaluation:
    """Evaluates one job, unit by unit, keeping finished units in the partial file."""

    def __init__(self, job, settings, data_dir, device):
        self.job, self.data_dir, self.device = job, data_dir, device
        self.settings = settings.resolved(job.record["config"]["dataset"])
        self.key = fingerprint(job, settings)
        self.partial_path = os.path.join(job.run_dir, PARTIAL_NAME)
        self.done = self._load_partial()
        self.reused = len(self.done)  # units an interrupted earlier call finished: their time is not this call's

    def _load_partial(self):
        """The units an interrupted call of these settings finished (none for other settings)."""
        if not os.path.exists(self.partial_path):
            return {}
        try:
            partial = load_robustness_partial(self.partial_path)
        except RecordError as exc:
            raise RecordError(f"{exc}; delete it to evaluate this run from the start") from None
        return partial["units"] if partial["fingerprint"] == self.key else {}

    def _unit(self, unit, compute):
        """The unit's number: from a finished earlier attempt, else computed and kept."""
        if unit not in self.done:
            started = time.time()
            self.done[unit] = {"error": compute(), "seconds": round(time.time() - started, 3)}
            write_json(self.partial_path, {"fingerprint": self.key, "units": self.done})
        return self.done[unit]["error"]

    def run(self):
        import torch

        from models.layers import frozen_parameters

        from .data import Normalizer, stratified_subset
        from .run_model import error_and_loss
        started = time.time()
        job, s = self.job, self.settings
        record, config = job.record, job.record["config"]
        data = dataset_of(config["dataset"], self.data_dir)
        if data.test.images.dtype != torch.uint8:
            raise RunError(f"dataset {config['dataset']} does not hold 8-bit images, so it has no pixel bounds")
        whole_set = s["test_subset"] == 0 or s["test_subset"] >= len(data.test)
        test = (data.test if whole_set else data.test.subset(
            stratified_subset(data.test.labels, s["test_subset"], seed=s["subset_seed"]))).to(self.device)
        pixels, labels = test.images.float().div(255), test.labels  # the images every number here is measured on
        eval_batch = config.get("eval_batch_size", 1000)
        result = {"schema": SCHEMA, "run_id": job.name, "fingerprint": self.key,
                  "config": {k: config[k] for k in ("dataset", "arch", "algo", "seed")},
                  "settings": s, "test_images": len(labels), "attack_library": "torchattacks",
                  "versions": library_versions(), "code": code_version(), "states": {}, "notes": list(job.notes)}
        for state, file_name in job.models.items():
            model, rule, epoch, whole = load_checked_model(job.run_dir, record, state, data, self.data_dir,
                                                           self.device)
            normalizer = Normalizer(data.mean, data.std, self.device)
            clean = whole if whole_set else error_and_loss(model, test, normalizer, eval_batch)[0]
            model.eval()
            applicable, rule_text = rule_gradient(model, rule)
            if applicable and not rule.has_input_gradient_estimate:
                rule_text = f"{rule_text}; {give_input_feedback(model, rule, config['seed'])}"
            entry = {"model_file": file_name, "epoch": epoch,
                     "sha256": file_digest(os.path.join(job.run_dir, file_name)), "clean_error": clean,
                     "gradients": {"true": "exact input gradient of the eval-mode network (autograd, every rule "
                                           "detached; EP: through the unrolled free phase)",
                                   "rule": rule_text if applicable else None},
                     "attacks": [], "corruptions": []}
            if "rule" in s["gradients"] and not applicable:
                entry["rule_gradient_left_out"] = rule_text
            paths = [g for g in ("true", "rule") if g in s["gradients"] and (g == "true" or applicable)]
            with frozen_parameters(model.parameters()):
                for gradient in paths:
                    module = attacked_model(model, rule, data, gradient)
                    for attack in s["attacks"]:
                        for eps in s["eps"]:
                            unit = f"{state}/{attack}/{gradient}/{eps!r}"

                            def compute(attack=attack, eps=eps, module=module, unit=unit, gradient=gradient):
                                reseed(rule, unit_seed(config["seed"], unit))
                                adv = adversarial(module, pixels, labels, attack, eps, s["pgd"], s["batch_size"])
                                if gradient == "true" and config["algo"] == "bp":  # a transfer source's examples
                                    keep_examples(examples_path(job.run_dir, state, attack, eps, s), adv)
                                return pixel_error(model, data, adv, labels, eval_batch)
                            error = clean if eps == 0 else self._unit(unit, compute)
                            entry["attacks"].append({"attack": attack, "gradient": gradient, "eps": eps,
                                                     "error": error})
                if "transfer" in s["gradients"] and job.source:
                    source = self._transfer(entry, state, model, data, pixels, labels, eval_batch, clean)
                    if source is None:
                        result["notes"].append(f"transfer ({state}): the BP run {os.path.basename(job.source)} keeps "
                                               f"no {BEST_MODEL_NAME}, and its final model is not this state's")
                    else:
                        entry["transfer_source"] = source
            for name, levels in s["corruptions"].items():
                for severity, level in enumerate(levels, start=1):
                    unit = f"{state}/corruption/{name}/{severity}"

                    def compute(name=name, level=level, unit=unit):
                        reseed(rule, unit_seed(config["seed"], unit))
                        return pixel_error(model, data, corrupt(pixels, name, level), labels, eval_batch)
                    entry["corruptions"].append({"corruption": name, "severity": severity, "level": level,
                                                 "error": self._unit(unit, compute)})
            result["states"][state] = entry
        by_kind = {}
        for unit, done in self.done.items():  # "state/attack/gradient/eps" or "state/corruption/name/severity"
            kind = unit.split("/")[1] if unit.split("/")[1] == "corruption" else unit.split("/")[2]
            by_kind[kind] = round(by_kind.get(kind, 0.0) + done["seconds"], 1)
        result["timing"] = {"seconds": round(time.time() - started, 1),
                            "unit_seconds": round(sum(u["seconds"] for u in self.done.values()), 1),
                            "units_from_earlier_calls": self.reused,
                            "seconds_by_kind": by_kind,
                            "device": str(self.device), "torch_threads": torch.get_num_threads()}
        result = merge_earlier(result, earlier_result(job.run_dir), job.run_dir)
        write_json(os.path.join(job.run_dir, RESULT_NAME), result)
        try:
            os.unlink(self.partial_path)
        except FileNotFoundError:
            pass
        return result

    def _transfer(self, entry, state, model, data, pixels, labels, eval_batch, clean):
        """Errors of ``model`` on the adversarial examples of the BP source's
        model of the same ``state``, checked against the source's record first;
        returns the source's description, or None when it keeps no such model."""
        source_dir = self.job.source
        source_record = load_record(os.path.join(source_dir, "record.json"))
        source_models = kept_models(source_dir, source_record, STATES)
        if state not in source_models:
            return None
        try:
            source_model(source_dir, source_record, state, self.data_dir, self.device)
        except RunError as exc:
            raise RunError(f"transfer source of {self.job.name}: {exc}") from None
        for attack in self.settings["attacks"]:
            for eps in self.settings["eps"]:
                unit = f"{state}/{attack}/transfer/{eps!r}"

                def compute(attack=attack, eps=eps):
                    adv = source_examples(source_dir, source_record, state, attack, eps, self.settings,
                                          self.data_dir, self.device, pixels, labels)
                    return pixel_error(model, data, adv, labels, eval_batch)
                error = clean if eps == 0 else self._unit(unit, compute)
                entry["attacks"].append({"attack": attack, "gradient": "transfer", "eps": eps, "error": error})
        return {"run_id": os.path.basename(source_dir), "state": state, "model_file": source_models[state],
                "sha256": file_digest(os.path.join(source_dir, source_models[state]))}


# The settings that decide a row's number besides the model and the row's own
# (attack, gradient, eps): rows made under other values are never kept beside new ones.
PROTOCOL_KEYS = ("norm", "pixel_range", "pgd", "test_subset", "subset_seed", "batch_size")


def merge_earlier(result, earlier, run_dir):
    """``result`` (this call's) with what the run's ``earlier``
    robustness.json holds and this call did not recompute (other states,
    attacks, gradients, eps, corruptions), so a narrower call never drops
    results: kept where they were measured with the same protocol
    (``PROTOCOL_KEYS``) on the model file still there, transfer rows only
    from this call's source or when this call had none. Notes say what was
    kept or dropped."""
    if earlier is None:
        return result
    old_settings, notes = earlier.get("settings", {}), result["notes"]
    if any(old_settings.get(key) != result["settings"][key] for key in PROTOCOL_KEYS):
        notes.append(f"earlier results made with other settings ({', '.join(PROTOCOL_KEYS)}) were replaced")
        return result
    kept_any = False
    for state, old in earlier["states"].items():
        path = model_path(run_dir, state)
        if not os.path.exists(path) or old.get("sha256") != file_digest(path):
            if state not in result["states"]:
                notes.append(f"{state}: earlier results of another model file were dropped")
            continue
        if state not in result["states"]:
            result["states"][state] = old
            notes.append(f"{state}: kept from an earlier call")
            kept_any = True
            continue
        kinds = _keep_rows(result["states"][state], old)
        if kinds:
            notes.append(f"{state}: {', '.join(kinds)} rows kept from an earlier call")
            kept_any = True
    if kept_any:
        result["settings"] = merged_settings(result["settings"], old_settings, result["states"])
        result["states"] = {state: result["states"][state] for state in STATES if state in result["states"]}
    return result


def _keep_rows(entry, old):
    """Add to ``entry`` (one state, this call's) the rows of ``old`` (the same
    state, earlier) it has not; returns their kinds (gradients, corruption)."""
    same_source = entry.get("transfer_source") in (None, old.get("transfer_source"))
    have = {(r["attack"], r["gradient"], r["eps"]) for r in entry["attacks"]}
    attacks = [r for r in old.get("attacks", []) if (r["attack"], r["gradient"], r["eps"]) not in have
               and (r["gradient"] != "transfer" or same_source)]
    if any(r["gradient"] == "transfer" for r in attacks) and "transfer_source" in old:
        entry["transfer_source"] = old["transfer_source"]
    have = {(r["corruption"], r["severity"]) for r in entry["corruptions"]}
    corruptions = [r for r in old.get("corruptions", []) if (r["corruption"], r["severity"]) not in have]
    entry["attacks"] += attacks
    entry["corruptions"] += corruptions
    return sorted({r["gradient"] for r in attacks}) + (["corruption"] if corruptions else [])


def merged_settings(new, old, states):
    """``new`` with the lists of ``old`` added (this call's first), the states
    those in ``states``; the rows of ``states`` sorted as one call writes them."""
    def union(first, second):
        return list(dict.fromkeys([*first, *second]))
    levels = {**old.get("corruptions", {}), **new["corruptions"]}
    merged = dict(new, eps=sorted(set(new["eps"]) | set(old.get("eps", []))),
                  attacks=union(new["attacks"], old.get("attacks", [])),
                  gradients=union(new["gradients"], old.get("gradients", [])),
                  corruptions={name: levels[name] for name in union(new["corruptions"], old.get("corruptions", {}))},
                  states=[state for state in STATES if state in states])
    attack_order = {name: i for i, name in enumerate(merged["attacks"])}
    corruption_order = {name: i for i, name in enumerate(merged["corruptions"])}
    for entry in states.values():
        entry["attacks"].sort(key=lambda r: (GRADIENTS.index(r["gradient"]) if r["gradient"] in GRADIENTS
                                             else len(GRADIENTS), attack_order.get(r["attack"], 0), r["eps"]))
        entry["corruptions"].sort(key=lambda r: (corruption_order.get(r["corruption"], 0), r["severity"]))
    return merged


def examples_path(source_dir, state, attack, eps, settings):
    """Where the BP run ``source_dir`` keeps its ``state`` model's examples of
    ``attack`` at ``eps`` under the resolved ``settings``: the name holds a
    digest of what makes them (the settings that reach an attack: the images,
    PGD, the batches) and of the model file, so another protocol or a
    retrained model never reads them."""
    making = {k: settings[k] for k in ("norm", "pixel_range", "pgd", "test_subset", "subset_seed", "batch_size")}
    key = json.dumps([state, attack, repr(eps), making, file_digest(model_path(source_dir, state))], sort_keys=True)
    return os.path.join(source_dir, EXAMPLES_FOLDER,
                        f"{state}-{attack}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt")


def keep_examples(path, adv):
    import torch
    with atomic_path(path) as tmp:
        torch.save(adv.cpu(), tmp)


def kept_examples(path, like):
    """The examples kept at ``path``, on ``like``'s device, or None (none
    kept, or a file that does not hold a tensor of ``like``'s shape)."""
    import torch
    try:
        adv = torch.load(path, map_location=like.device, weights_only=True)
    except Exception:  # missing or damaged: made again
        return None
    return adv if isinstance(adv, torch.Tensor) and adv.shape == like.shape and adv.dtype == like.dtype else None


_SOURCE_CACHE = {}
_SOURCE_MODEL = {}


def source_examples(source_dir, record, state, attack, eps, settings, data_dir, device, pixels, labels):
    """The BP source's true-gradient adversarial examples, made with the seed
    of the source's own true-gradient unit: they are the examples its own
    white-box column was measured on. Made once: the source's own evaluation
    keeps them in its folder (``transfer-examples/``), and a target that
    finds none makes and keeps them; within a process they stay in memory."""
    from models.layers import frozen_parameters
    path = os.path.realpath(examples_path(source_dir, state, attack, eps, settings))  # names all they depend on
    if path not in _SOURCE_CACHE:
        if len(_SOURCE_CACHE) > 64:
            _SOURCE_CACHE.clear()
        adv = kept_examples(path, pixels)
        if adv is None:
            data = dataset_of(record["config"]["dataset"], data_dir)
            model, rule = source_model(source_dir, record, state, data_dir, device)
            with frozen_parameters(model.parameters()):
                reseed(rule, unit_seed(record["config"]["seed"], f"{state}/{attack}/true/{eps!r}"))
                module = attacked_model(model, rule, data, "true")
                adv = adversarial(module, pixels, labels, attack, eps, settings["pgd"], settings["batch_size"])
            keep_examples(path, adv)
        _SOURCE_CACHE[path] = adv
    return _SOURCE_CACHE[path]


def source_model(source_dir, record, state, data_dir, device):
    """``(model, rule)`` of the BP source's ``state``, checked against its
    record as an evaluated model is (:func:`load_checked_model`); the last
    source's stays loaded, for all its examples and targets."""
    key = (os.path.realpath(source_dir), state, file_digest(model_path(source_dir, state)), str(device))
    if _SOURCE_MODEL.get("key") != key:
        data = dataset_of(record["config"]["dataset"], data_dir)
        _SOURCE_MODEL.update(key=key, loaded=load_checked_model(source_dir, record, state, data, data_dir,
                                                                device)[:2])
    return _SOURCE_MODEL["loaded"]


# many runs -----------------------------------------------------------------------------------------
def evaluate_job(job, settings, data_dir, device, threads=None):
    """Evaluate one job in this process (a worker's task); returns (name, status, message)."""
    import torch

    from .locks import RunLock
    from .run_model import resolve_device
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    lock = RunLock(job.run_dir)
    if not lock.acquire():
        return job.name, "busy", "skipped (another process holds the run folder)"
    try:
        started = time.time()
        result = Evaluation(job, settings, data_dir, resolve_device(device)).run()
        return job.name, "evaluated", f"{summary_line(result)} ({time.time() - started:.0f}s)"
    except (KeyboardInterrupt, RunInterrupted):
        raise
    except Exception as exc:  # one failing run must not stop the others
        return job.name, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        lock.release()
        torch.set_num_threads(previous)


def summary_line(result):
    """Clean error and the largest eps's PGD errors of a result, in one line."""
    parts = []
    for state, entry in result["states"].items():
        largest = max(result["settings"]["eps"])
        worst = {row["gradient"]: row["error"] for row in entry["attacks"]
                 if row["eps"] == largest and row["attack"] == result["settings"]["attacks"][-1]}
        text = ", ".join(f"{g} {e:.1f}%" for g, e in worst.items())
        parts.append(f"{state}: clean {entry['clean_error']:.2f}%"
                     + (f", {result['settings']['attacks'][-1]} eps {largest:g}: {text}" if text else ""))
    return "; ".join(parts)


def run_all(jobs, settings, data_dir, device="auto", jobs_count=1, threads=None, echo=print):
    """Evaluate every job not done yet; returns ``{status: count}``. BP runs
    go first and each source's targets follow it, so a worker that made a
    source's examples reuses them."""
    import multiprocessing
    import socket
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from .locks import RunLock
    from .pools import forget_pool_wakeups, pool_died_message
    todo = [job for job in jobs if job_status(job, settings) == "todo"]
    todo.sort(key=lambda j: (j.record["config"]["algo"] != "bp", j.source or j.run_dir, j.run_dir))
    threads = threads or max(1, (os.cpu_count() or 1) // jobs_count)
    echo(f"robustness: {len(jobs)} run(s), {len(jobs) - len(todo)} already evaluated, {len(todo)} to evaluate "
         f"({jobs_count} job(s) x {threads} thread(s))")
    counts, started, reported = {}, time.time(), set()
    targets = {}  # a BP run's folder -> the runs whose transfer examples it makes
    for job in jobs:
        if job.source:
            targets.setdefault(os.path.realpath(job.source), []).append(job.name)

    def report(done, job, result):
        name, status, message = result
        reported.add(job.run_dir)
        if status == "failed" and os.path.realpath(job.run_dir) in targets:
            message += f" (it is the transfer source of {', '.join(targets[os.path.realpath(job.run_dir)])})"
        counts[status] = counts.get(status, 0) + 1
        elapsed = time.time() - started
        eta = elapsed / done * (len(todo) - done)
        echo(f"[{done}/{len(todo)}] {name}: {status}: {message}  (elapsed {elapsed / 60:.1f} min, "
             f"ETA {eta / 60:.1f} min)")

    args = [(job, settings, data_dir, device, threads) for job in todo]
    try:
        if jobs_count == 1:
            for done, arg in enumerate(args, 1):
                report(done, arg[0], evaluate_job(*arg))
            return counts
        pool = ProcessPoolExecutor(max_workers=jobs_count)
        try:
            futures = {pool.submit(evaluate_job, *arg): arg[0] for arg in args}
            # each worker's lock line (RunLock writes "host pid"), to tell which runs a dead pool held
            workers = {f"{socket.gethostname()} {child.pid}" for child in multiprocessing.active_children()}
            for done, future in enumerate(as_completed(futures), 1):
                report(done, futures[future], future.result())
        except BrokenProcessPool:
            # A worker was killed (out of memory, kill -9); the pool has ended the
            # others. Their runs keep their finished units in robustness.partial.json.
            pool.shutdown(wait=True)
            held = [job.name for job in todo if job.run_dir not in reported and RunLock(job.run_dir).holder()
                    in workers and job_status(job, settings) == "todo"]
            raise GridFailed(pool_died_message("robustness", f"evaluating {', '.join(held) or 'a run'}",
                                               "the finished attacks of each are kept in its "
                                               f"{PARTIAL_NAME}")) from None
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in multiprocessing.active_children():
                worker.terminate()
            pool.shutdown(wait=True)
            forget_pool_wakeups()
            raise
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        raise RunInterrupted("robustness interrupted; rerun the same command to go on (finished attacks of the "
                             "interrupted runs are kept in their robustness.partial.json)") from None
    return counts

