"""The optimiser protocol: what --momentum, --l2-penalty and the learning-rate
schedules do to training, and to which runs count as the same run."""
import copy
import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from benchmark.config import RunConfig, resolve_run_config
from benchmark.errors import ConfigError, RunError
from benchmark.train import Trainer
from cli import cli
from helpers import comparable, records_in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Committed run folders (results/), one per kind of protocol: their names must never change, or a grid
# rerun would retrain them beside the old ones.
COMMITTED_RUNS = [
    "bartunov-cifar10/cifar10-jpeg-conv-bp-seed0-0a6e128c",  # from before the protocol fields
    "bartunov-mnist-robust/mnist-conv-bp-seed0-938467b6",  # adam, constant, weight decay
    "biotorch-cifar10-start/cifar10-jpeg-lenet-bp-seed0-51f95837",  # adam, multistep
    "biotorch-cifar10-start/cifar10-jpeg-resnet20-bp-seed0-1d9bced6",  # sgd, multistep
    "biotorch-lenet-short/fashion-mnist-lenet-bp-seed0-9d9a2ac7",  # sgd, multistep, weight decay
]


@pytest.mark.parametrize("folder", COMMITTED_RUNS)
def test_committed_runs_keep_their_names(folder):
    record = json.load(open(os.path.join(ROOT, "results", folder, "record.json")))
    config = RunConfig.from_record(dict(record["config"], augment=None))  # the record stores the default it used
    assert config.run_name() == os.path.basename(folder)
    longer = RunConfig.from_record(dict(record["config"], augment=None, epochs=record["config"]["epochs"] + 50))
    assert longer.run_name() == config.run_name()  # these schedules do not depend on the length: resume extends


def test_a_cosine_runs_length_is_part_of_its_name():
    short, long = (RunConfig(optimizer="sgd", lr=0.05, lr_schedule="cosine", epochs=e) for e in (2, 4))
    assert short.run_name() != long.run_name()


def run_args(tiny_root, out, epochs, *extra):
    return ["run", "--arch", "fc", "--algo", "bp", "--optimizer", "sgd", "--lr", "0.05", "--lr-schedule", "cosine",
            "--epochs", str(epochs), "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out), "--quiet",
            *extra]


def test_a_cosine_run_is_not_extended_by_resume(tiny_root, tmp_path):
    out = tmp_path / "runs"
    assert CliRunner().invoke(cli, run_args(tiny_root, out, 2)).exit_code == 0
    (short_name,) = os.listdir(out)
    refused = CliRunner().invoke(cli, run_args(tiny_root, out, 4, "--resume"))
    assert refused.exit_code == 2, refused.output
    assert "cosine schedule" in refused.output and "run without --resume" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert records_in(str(out))[short_name]["summary"]["epochs_done"] == 2  # untouched
    longer = CliRunner().invoke(cli, run_args(tiny_root, out, 4))
    assert longer.exit_code == 0 and "warning" not in longer.output  # a run of its own, not a repeat
    (long_name,) = set(os.listdir(out)) - {short_name}
    straight = CliRunner().invoke(cli, run_args(tiny_root, tmp_path / "straight", 4))
    assert straight.exit_code == 0
    (expected,) = records_in(str(tmp_path / "straight")).values()
    assert comparable(records_in(str(out))[long_name]) == comparable(expected)


def test_a_checkpoint_on_another_cosine_length_is_not_resumed(tiny_root, tmp_path):
    config = RunConfig(arch="fc", optimizer="sgd", lr=0.05, lr_schedule="cosine", epochs=2, batch_size=32)
    run_dir = str(tmp_path / "run")
    Trainer(config, data_dir=tiny_root, progress=False).run(run_dir)
    longer = Trainer(dataclasses.replace(config, epochs=4), data_dir=tiny_root, progress=False)
    with pytest.raises(RunError, match="was trained on a 2-epoch cosine schedule"):
        longer.run(run_dir, resume=True)


def grid_args(tiny_root, out, epochs):
    return ["grid", "--datasets", "mnist", "--archs", "fc", "--algos", "bp", "--seeds", "1", "--optimizer", "sgd",
            "--lr", "0.05", "--lr-schedule", "cosine", "--epochs", str(epochs), "--batch-size", "32", "--threads",
            "1", "--data-dir", tiny_root, "--out", str(out), "--quiet"]


def test_a_grid_rerun_with_more_epochs_starts_new_cosine_runs(tiny_root, tmp_path):
    out = tmp_path / "grid"
    assert CliRunner().invoke(cli, grid_args(tiny_root, out, 2)).exit_code == 0
    assert CliRunner().invoke(cli, grid_args(tiny_root, out, 4)).exit_code == 0
    by_length = {r["config"]["epochs"]: r for r in records_in(str(out)).values()}
    assert sorted(by_length) == [2, 4] and by_length[2]["summary"]["epochs_done"] == 2
    assert CliRunner().invoke(cli, grid_args(tiny_root, tmp_path / "straight", 4)).exit_code == 0
    (expected,) = records_in(str(tmp_path / "straight")).values()
    assert comparable(by_length[4]) == comparable(expected)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_gamma_without_multistep_is_refused(schedule):
    with pytest.raises(ConfigError, match="--lr-gamma 0.5 applies to --lr-schedule multistep only"):
        resolve_run_config({"rule": "bp", "lr_schedule": schedule, "lr_gamma": 0.5})
    assert resolve_run_config({"rule": "bp", "lr_schedule": schedule}).lr_gamma == 0.1


def test_a_grid_refuses_lr_gamma_without_multistep_before_writing(tiny_root, tmp_path):
    result = CliRunner().invoke(cli, grid_args(tiny_root, tmp_path / "grid", 1) + ["--lr-gamma", "0.5"])
    assert result.exit_code == 2 and "error: --lr-gamma 0.5 applies to --lr-schedule multistep only" in result.output
    assert not (tmp_path / "grid").exists()


# The optimisers -----------------------------------------------------------------------------------------
def trainer_of(tiny_root, **options):
    config = resolve_run_config({"rule": "bp", "arch": "fc", "batch_size": 96, **options})
    return Trainer(config, data_dir=tiny_root, progress=False).prepare()


def gradients(model, x, y):
    loss = F.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, list(model.parameters()))


def test_momentum_reaches_sgd(tiny_root):
    trainer = trainer_of(tiny_root, optimizer="sgd", lr=0.1, momentum=0.9)
    reference = copy.deepcopy(trainer.model)
    x, y = trainer.normalize(trainer.train.images), trainer.train.labels
    velocity = None
    for _ in range(3):
        trainer.rule.train_step(trainer.model, x, y, trainer.optimizer)
        grads = gradients(reference, x, y)
        velocity = grads if velocity is None else [0.9 * v + g for v, g in zip(velocity, grads)]
        with torch.no_grad():
            for p, v in zip(reference.parameters(), velocity):
                p -= 0.1 * v
    for ours, theirs in zip(trainer.model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9


def test_l2_penalty_under_adam_is_coupled_not_adamw(tiny_root):
    l2 = 0.5  # large, so the coupled and decoupled steps are far apart
    trainer = trainer_of(tiny_root, optimizer="adam", lr=0.01, l2_penalty=l2)
    coupled, decoupled = copy.deepcopy(trainer.model), copy.deepcopy(trainer.model)
    adam = torch.optim.Adam(coupled.parameters(), lr=0.01, weight_decay=l2)
    adamw = torch.optim.AdamW(decoupled.parameters(), lr=0.01, weight_decay=l2)
    x, y = trainer.normalize(trainer.train.images), trainer.train.labels
    for _ in range(3):
        trainer.rule.train_step(trainer.model, x, y, trainer.optimizer)
        for model, optimizer in ((coupled, adam), (decoupled, adamw)):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    ours, theirs, other = (torch.cat([p.detach().flatten() for p in m.parameters()])
                           for m in (trainer.model, coupled, decoupled))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert (ours - other).abs().max() > 1e-3  # the test tells the two apart
