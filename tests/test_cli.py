"""End to end through the click CLI, on tiny data made by the tests."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from helpers import comparable
from models import RULES, build_network, make_rule
from models.layers import feedback_layers
from models.rules.tp import TargetPropagation


def run_cli(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result


def run_args(tiny_root, out, arch="lc", algo="bp", seed=0, epochs=1, extra=()):
    return ["run", "--arch", arch, "--algo", algo, "--dataset", "mnist", "--epochs", str(epochs),
            "--seed", str(seed), "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out),
            "--quiet", *extra]


def only_record(out):
    folders = sorted(os.listdir(out))
    return [json.load(open(os.path.join(out, f, "record.json"))) for f in folders]




@pytest.mark.parametrize("arch", ["fc", "conv", "lc"])
def test_run_writes_a_complete_record(tiny_root, tmp_path, arch):
    out = tmp_path / "runs"
    result = run_cli(run_args(tiny_root, out, arch=arch, epochs=2, extra=["--val-split", "0.25"]))
    assert result.exit_code == 0, result.output
    assert "complete: mnist" in result.output
    (record,) = only_record(out)
    assert record["schema"] == "biobench.run/1" and record["status"] == "complete"
    assert record["config"]["arch"] == arch and record["seed"] == 0
    assert record["curves"]["epoch"] == [1, 2]
    assert len(record["curves"]["test_error"]) == 2 and len(record["curves"]["val_error"]) == 2
    assert record["data"]["train_size"] == 72 and record["data"]["val_size"] == 24
    summary = record["summary"]
    assert summary["best_test_error"] == min(record["curves"]["test_error"])
    assert summary["test_error_at_best_val"] in record["curves"]["test_error"]
    assert record["params"]["forward_total"] > 0 and record["params"]["feedback_total"] == 0
    assert {"torch", "torchvision", "python"} <= set(record["versions"])
    assert record["device"].startswith("cpu")
    assert os.path.exists(os.path.join(out, sorted(os.listdir(out))[0], "checkpoint.pt"))


@pytest.mark.slow
def test_same_seed_same_record_other_seed_differs(tiny_root, tmp_path):
    records = []
    for i, seed in enumerate([3, 3, 4]):
        out = tmp_path / f"runs{i}"
        assert run_cli(run_args(tiny_root, out, arch="lc", algo="fa", seed=seed, epochs=2)).exit_code == 0
        records.append(only_record(out)[0])
    assert comparable(records[0]) == comparable(records[1])
    assert comparable(records[0])[0] != comparable(records[2])[0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fc", "conv", "lc"])
@pytest.mark.parametrize("algo", RULES.names())
def test_every_arch_and_rule_pair_runs(tiny_root, tmp_path, arch, algo):
    out = tmp_path / "runs"
    result = run_cli(run_args(tiny_root, out, arch=arch, algo=algo))
    assert result.exit_code == 0, result.output
    (record,) = only_record(out)
    assert record["rule"]["name"] == algo
    layers = record["alignment"][0]["layers"]
    assert len(layers) == len(record["params"]["per_layer"])
    assert all(0 <= row["update_angle"] <= 180 for row in layers)
    # What the rule's own hooks give on the same network (test_rules checks the hooks themselves):
    # a W-B angle where it has an alignment matrix, every stored feedback value counted.
    model = build_network(arch, "mnist", 10)
    rule = make_rule(algo).attach(model, torch.Generator().manual_seed(0), (1, 28, 28))
    assert [row["wb_angle"] is not None for row in layers] == [
        rule.alignment_matrix(layer) is not None for layer in feedback_layers(model)]
    assert [row["feedback"] for row in record["params"]["per_layer"]] == [
        rule.feedback_count(layer) for layer in feedback_layers(model)]
    if issubclass(RULES.get(algo), TargetPropagation):  # inverses counted, TP metrics per layer
        assert record["params"]["feedback_total"] > 0
        assert record["alignment"][0]["phase"] in ("parallel", "inverse")
        assert all(row["reconstruction_error"] is None for row in layers[:1])
        assert any(row["reconstruction_error"] > 0 for row in layers[1:] if row["reconstruction_error"])
        assert any(row["target_distance"] is not None for row in layers)


def test_help_lists_choices():
    result = run_cli(["run", "--help"])
    assert result.exit_code == 0
    for word in ("--arch", "[conv|fc|lc|lenet|resnet20|resnet56|vit|torchvision:NAME]", "--algo", "dfa", "--dataset",
                 "cifar10-jpeg", "--data-dir", "BIOBENCH_DATA", "--device", "--quiet", "--resume", "--optimizer",
                 "--lr-schedule"):
        assert word in result.output


def test_unknown_choice_lists_allowed(tiny_root, tmp_path):
    result = CliRunner().invoke(cli, run_args(tiny_root, tmp_path / "o", algo="hebb"))
    assert result.exit_code == 2
    assert "'hebb' is not one of" in result.output and "'fa'" in result.output


@pytest.mark.slow
@pytest.mark.realdata
def test_real_mnist_smoke(shared_data, tmp_path):
    out = tmp_path / "runs"
    result = run_cli(["run", "--arch", "lc", "--algo", "fa", "--dataset", "mnist", "--epochs", "1",
                      "--train-subset", "6000", "--data-dir", shared_data, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    (record,) = only_record(out)
    assert record["data"]["test_size"] == 10000
    # Correct FA reaches 18.8% here; training the output layer alone (no error
    # reaching the layers below) gives 37.3%, so the bound tells them apart.
    assert record["summary"]["final_test_error"] < 25
