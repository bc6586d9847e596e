"""The transfer column: each run's BP source, and the source's adversarial
examples, made once and kept.

A run's examples come from the BP run of the same training protocol
(dataset, architecture, seed, epochs, optimiser, ...: every config field but
the rule, its options, the weight decay and the evaluation batch), made
along the BP network's true gradient and evaluated on the target, whose own
gradient is never computed. They are the very examples of the BP run's own
true-gradient column (the same unit seed), kept in its folder
(``transfer-examples/``, git-ignored) under a name that holds a digest of all
they depend on.
"""
import dataclasses
import hashlib
import json
import os

from ..io import atomic_path
from . import attacks, gradients
from .loading import dataset_of, file_digest, load_checked_model, model_path

EXAMPLES_FOLDER = "transfer-examples"
# What a BP transfer source may differ in from its target: the rule and its
# settings (the decay is ranked in assign_sources), and how evaluation is batched.
_SOURCE_FREE = ("rule", "rule_options", "weight_decay", "eval_batch_size")
_SOURCE_CACHE = {}
_SOURCE_MODEL = {}


def _source_key(config):
    """What a BP transfer source shares with its targets (``config``: a
    RunConfig): the whole training protocol (data, architecture, seed,
    epochs, optimiser, schedule, ...), so a 3-epoch target is never attacked
    with examples of a 100-epoch source."""
    fields = dataclasses.asdict(config)
    return json.dumps({k: v for k, v in fields.items() if k not in _SOURCE_FREE}, sort_keys=True, default=str)


def assign_sources(jobs, sources):
    """Each job's BP transfer source among ``sources`` (the complete BP runs
    that keep a model, selected or not): the BP run of the same protocol
    (``_source_key``), preferring the target's weight decay, then none."""
    bp = {}
    for job in sources:
        bp.setdefault(_source_key(job.config), []).append(job)
    for job in jobs:
        if job.config.rule == "bp":
            continue
        candidates = bp.get(_source_key(job.config), [])
        decay = job.config.weight_decay or 0.0
        ranked = sorted(candidates, key=lambda c: ((c.config.weight_decay or 0.0) != decay,
                                                   (c.config.weight_decay or 0.0) != 0.0, c.name))
        if ranked:
            job.source = ranked[0].run_dir
        else:
            job.notes.append("transfer: no BP run of the same dataset, architecture, seed and training protocol "
                             "under --runs")


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
                gradients.reseed(rule, gradients.unit_seed(record["config"]["seed"],
                                                           f"{state}/{attack}/true/{eps!r}"))
                module = gradients.attacked_model(model, rule, data, "true")
                adv = attacks.adversarial(module, pixels, labels, attack, eps, settings["pgd"],
                                          settings["batch_size"])
            keep_examples(path, adv)
        _SOURCE_CACHE[path] = adv
    return _SOURCE_CACHE[path]


def source_model(source_dir, record, state, data_dir, device):
    """``(model, rule)`` of the BP source's ``state``, checked against its
    record as an evaluated model is (:func:`.loading.load_checked_model`); the
    last source's stays loaded, for all its examples and targets."""
    key = (os.path.realpath(source_dir), state, file_digest(model_path(source_dir, state)), str(device))
    if _SOURCE_MODEL.get("key") != key:
        data = dataset_of(record["config"]["dataset"], data_dir)
        _SOURCE_MODEL.update(key=key, loaded=load_checked_model(source_dir, record, state, data, data_dir,
                                                                device)[:2])
    return _SOURCE_MODEL["loaded"]
