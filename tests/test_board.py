"""--tensorboard writes readable event files mirroring the records."""
import json
import os

import pytest
from click.testing import CliRunner

from cli import cli

pytestmark = pytest.mark.slow  # trains nets or starts subprocesses

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(folder):
    accumulator = event_accumulator.EventAccumulator(folder)
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize("command", ["run", "grid"])
def test_event_files_hold_the_records_curves_and_alignment(tiny_root, tmp_path, command):
    out, board = tmp_path / "runs", tmp_path / "board"
    which = ["--arch", "lc", "--algo", "dtp-par"] if command == "run" else ["--archs", "lc", "--algos", "dtp-par",
                                                                            "--seeds", "1"]
    result = CliRunner().invoke(cli, [command, *which, "--epochs", "2", "--batch-size", "32", "--val-split", "0.25",
                                      "--data-dir", tiny_root, "--out", str(out), "--tensorboard", str(board),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    (name,) = os.listdir(out)
    assert os.listdir(board) == [name]  # one TensorBoard run per run folder, same name
    record = json.load(open(out / name / "record.json"))
    tags = scalars(str(board / name))
    for tag, key in (("error/test", "test_error"), ("error/val", "val_error"), ("loss/train", "train_loss")):
        assert [step for step, _ in tags[tag]] == [1, 2]
        assert [value for _, value in tags[tag]] == pytest.approx(record["curves"][key], rel=1e-6)
    layer2 = record["alignment"][-1]["layers"][1]
    assert tags["layer2/update_angle"][-1][1] == pytest.approx(layer2["update_angle"], rel=1e-6)
    assert tags["layer2/reconstruction_error"][-1][1] == pytest.approx(layer2["reconstruction_error"], rel=1e-6)
    assert "layer1/reconstruction_error" not in tags  # the first layer has no inverse


def test_resumed_run_continues_its_tensorboard_run(tiny_root, tmp_path):
    out, board = tmp_path / "runs", tmp_path / "board"
    base = ["run", "--arch", "fc", "--algo", "fa", "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out),
            "--tensorboard", str(board), "--quiet"]
    assert CliRunner().invoke(cli, base + ["--epochs", "1"]).exit_code == 0
    assert CliRunner().invoke(cli, base + ["--epochs", "3", "--resume"]).exit_code == 0
    (name,) = os.listdir(out)
    assert [step for step, _ in scalars(str(board / name))["error/test"]] == [1, 2, 3]
