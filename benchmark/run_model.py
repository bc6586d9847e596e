"""What training and every later use of a run's model share: the device it
runs on, the seeding, the model built from the run's config (network, rule
attached, optimizer) and its error on a split. Below ``train`` so that
robustness, perf and the CLI need not import the training loop."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import build_network, make_rule
from models.inputs import INPUT_SHAPES
from models.optim import adam, sgd

from . import records
from .errors import RunError

if TYPE_CHECKING:
    from models.rules.base import LearningRule

    from .config import RunConfig
    from .data import InMemoryDataset, Normalizer, Split


def resolve_device(name: str | torch.device) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu or auto")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({records.cpu_name()}, {torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def error_and_loss(model: nn.Module, split: Split, normalize: Normalizer, batch_size: int) -> tuple[float, float]:
    """Error (%) and mean cross-entropy of ``model`` on ``split``."""
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


def build_model(config: RunConfig, data: InMemoryDataset,
                device: str | torch.device) -> tuple[nn.Module, LearningRule, torch.optim.Optimizer]:
    """``(model, rule, optimizer)`` of a run: the network, its rule attached
    with feedback drawn from the run's seed, on ``device``."""
    if tuple(data.input_shape) != INPUT_SHAPES[data.family]:
        raise RunError(f"dataset {config.dataset} has {tuple(data.input_shape)} inputs but the "
                       f"{data.family} networks take {INPUT_SHAPES[data.family]}")
    model = build_network(config.arch, data.family, data.num_classes)
    rule = make_rule(config.rule, **config.rule_options)
    rule.weight_decay = config.weight_decay
    rule.attach(model, torch.Generator().manual_seed(config.seed + 1), data.input_shape)
    model.to(device)
    rule.moved_to(device)
    if config.optimizer == "sgd":
        optimizer = sgd(model.parameters(), lr=config.lr, momentum=config.momentum,
                        weight_decay=config.l2_penalty)
    else:
        optimizer = adam(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                         eps=config.eps, weight_decay=config.l2_penalty)
    return model, rule, optimizer
