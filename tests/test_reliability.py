"""Faults and bad input: kill and resume, divergence, concurrent writers, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from helpers import comparable, make_tiny_mnist, records_in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_command(data, out, *extra, epochs=4, algo="brsf", arch="fc"):
    return [sys.executable, os.path.join(ROOT, "cli.py"), "run", "--arch", arch, "--algo", algo,
            "--epochs", str(epochs), "--batch-size", "16", "--seed", "5", "--data-dir", data, "--out", out,
            "--quiet", *extra]






@pytest.fixture
def medium_root(tmp_path):
    return make_tiny_mnist(str(tmp_path / "data"), n_train=2000, n_test=200)


def wait_for_epoch(out, epochs_done, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        for folder in os.listdir(out) if os.path.isdir(out) else []:
            path = os.path.join(out, folder, "record.json")
            try:
                if json.load(open(path))["summary"]["epochs_done"] >= epochs_done:
                    return
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.05)
    raise AssertionError("no epoch finished in time")


@pytest.mark.slow
@pytest.mark.parametrize("how,algo,extra", [("sigkill", "brsf", ()), ("sigterm", "brsf", ()),
                                            # an alternating schedule: its phase and inverses are checkpointed
                                            ("sigkill", "dtp-alt", ()),
                                            # random crops and flips: their generator is checkpointed
                                            ("sigkill", "fa", ("--augment",))])
def test_interrupted_then_resumed_run_equals_uninterrupted(medium_root, tmp_path, how, algo, extra):
    straight = str(tmp_path / "straight")
    subprocess.run(cli_command(medium_root, straight, *extra, algo=algo), check=True, capture_output=True)
    (expected,) = records_in(straight).values()

    out = str(tmp_path / "interrupted")
    proc = subprocess.Popen(cli_command(medium_root, out, *extra, algo=algo), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_epoch(out, 1, proc)
    time.sleep(0.1)  # into the next epoch
    proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    (partial,) = records_in(out).values()
    assert partial["status"] in ("running", "interrupted") and partial["summary"]["epochs_done"] < 4
    if how == "sigterm":
        assert "--resume" in stderr and len(stderr.strip().splitlines()) == 1
        assert partial["status"] == "interrupted"
    resumed = subprocess.run(cli_command(medium_root, out, "--resume", *extra, algo=algo), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    (final,) = records_in(out).values()
    assert comparable(final) == comparable(expected)
    assert not [f for f in os.listdir(os.path.join(out, os.listdir(out)[0])) if f.startswith(".tmp-")]


def test_resume_extends_a_finished_run_to_more_epochs(tiny_root, tmp_path):
    out = str(tmp_path / "runs")
    base = ["run", "--arch", "fc", "--algo", "fa", "--batch-size", "32", "--data-dir", tiny_root, "--out", out,
            "--quiet"]
    assert CliRunner().invoke(cli, base + ["--epochs", "3"]).exit_code == 0
    (straight,) = records_in(out).values()
    out2 = str(tmp_path / "runs2")
    base2 = [a if a != out else out2 for a in base]
    assert CliRunner().invoke(cli, base2 + ["--epochs", "1"]).exit_code == 0
    assert CliRunner().invoke(cli, base2 + ["--epochs", "3", "--resume"]).exit_code == 0
    (extended,) = records_in(out2).values()
    assert extended["config"]["epochs"] == 3
    assert comparable(extended) == comparable(straight)


@pytest.mark.slow
@pytest.mark.parametrize("rule,options", [("pc", ("--rule-opt", "inference_steps=3")), ("drtp", ()), ("pepita", ()),
                                          ("pepita", ("--rule-opt", "dropout=0.1")),  # its masks' stream
                                          ("ff", ())])
def test_rules_with_their_own_step_resume_exactly(tiny_root, tmp_path, rule, options):
    def run(out, epochs, *extra):
        result = CliRunner().invoke(cli, ["run", "--arch", "fc", "--algo", rule, "--batch-size", "32", "--data-dir",
                                          tiny_root, "--out", out, "--quiet", "--epochs", str(epochs), *options,
                                          *extra])
        assert result.exit_code == 0, result.output
    run(str(tmp_path / "straight"), 3)
    run(str(tmp_path / "resumed"), 1)
    run(str(tmp_path / "resumed"), 3, "--resume")
    (straight,) = records_in(str(tmp_path / "straight")).values()
    (resumed,) = records_in(str(tmp_path / "resumed")).values()
    assert comparable(resumed) == comparable(straight)


def test_absurd_learning_rate_gives_a_diverged_record(tiny_root, tmp_path):
    out = str(tmp_path / "runs")
    result = CliRunner().invoke(cli, ["run", "--arch", "fc", "--algo", "fa", "--epochs", "3", "--lr", "1e9",
                                      "--batch-size", "32", "--data-dir", tiny_root, "--out", out, "--quiet"])
    assert result.exit_code == 1
    assert "diverged at epoch 1" in result.output
    (record,) = records_in(out).values()
    assert record["status"] == "diverged" and record["summary"]["diverged_at_epoch"] == 1


@pytest.mark.slow
def test_two_processes_writing_one_folder_leave_complete_records(medium_root, tmp_path):
    out = str(tmp_path / "runs")
    procs = [subprocess.Popen(cli_command(medium_root, out, epochs=2, algo="fa", arch="fc"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        proc.communicate(timeout=300)
        assert proc.returncode == 0
    records = records_in(out)
    assert len(records) == 2
    first, second = records.values()
    assert all(r["status"] == "complete" for r in records.values())
    assert comparable(first) == comparable(second)


# Bad input: exit code 2, one line naming the value and what is allowed, nothing written.
def bad_cases(tiny_root, tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    return {
        "arch": (["--arch", "resnet"], "'resnet' is not one of 'conv', 'fc', 'lc'"),
        "algo": (["--algo", "hebb"], "'hebb' is not one of"),
        "dataset": (["--dataset", "svhn"], "'svhn' is not one of"),
        "epochs zero": (["--epochs", "0"], "0 is not in the range x>=1"),
        "epochs text": (["--epochs", "many"], "'many' is not a valid integer"),
        "batch negative": (["--batch-size", "-4"], "-4 is not in the range x>=1"),
        "lr nan": (["--lr", "nan"], "'nan' is not allowed; it must be finite, > 0"),
        "lr inf": (["--lr", "inf"], "'inf' is not allowed; it must be finite, > 0"),
        "lr negative": (["--lr", "-0.1"], "'-0.1' is not allowed"),
        "lr text": (["--lr", "fast"], "'fast' is not a number"),
        "seed negative": (["--seed", "-1"], "-1 is not in the range x>=0"),
        "beta2 above one": (["--beta2", "1.5"], "must be finite, >= 0 and <= 1"),
        "data dir missing": (["--data-dir", str(tmp_path / "nowhere")], "is not a folder"),
        "data dir is a file": (["--data-dir", str(not_a_dir)], "is a file"),
        "out not writable": (["--out", str(not_a_dir / "sub")], "cannot be created: "),
        "out in a pseudo file system": (["--out", "/proc/biobench-out"], "cannot be created or written"),
        "resume without checkpoint": (["--resume"], "--resume: no checkpoint for this config"),
        "rule option unknown": (["--algo", "kp", "--rule-opt", "speed=2"], "unknown option(s) speed for rule 'kp'"),
        "rule option type": (["--algo", "dtp-par", "--rule-opt", "alpha=lots"], "option alpha='lots' is not a float"),
        "weight decay negative": (["--algo", "kp", "--weight-decay", "-1"],
                                  "--weight-decay': -1.0 is not in the range 0<=x<1"),
        "tp option out of range": (["--algo", "sdtp-par", "--rule-opt", "sigma=-0.1"],
                                   "sigma=-0.1 must be finite and > 0"),
        "rule option syntax": (["--rule-opt", "decay"], "is not KEY=VALUE"),
        "lr gamma without multistep": (["--lr-gamma", "0.5"],
                                       "--lr-gamma 0.5 applies to --lr-schedule multistep only"),
        "lr gamma with cosine": (["--lr-schedule", "cosine", "--lr-gamma", "0.5"],
                                 "--lr-gamma 0.5 applies to --lr-schedule multistep only"),
        "rgb network on grayscale data": (["--arch", "torchvision:resnet18"],
                                          "architecture 'torchvision:resnet18' takes 3-channel images, not mnist "
                                          "inputs 1x28x28"),
    }


def invoke_bad(tiny_root, out, args):
    base = ["run", "--epochs", "1", "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out), "--quiet"]
    return CliRunner().invoke(cli, base + args)


@pytest.mark.parametrize("case", list(bad_cases("/tmp", __import__("pathlib").Path("/tmp"))))
def test_bad_input_is_one_line_exit_2_nothing_written(tiny_root, tmp_path, case):
    args, message = bad_cases(tiny_root, tmp_path)[case]
    out = tmp_path / "out"
    result = invoke_bad(tiny_root, out, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    error_lines = [line for line in result.output.splitlines() if line.lower().startswith("error")]
    assert len(error_lines) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_a_grid_cell_whose_network_refuses_the_data_fails_in_one_line(tiny_root, tmp_path):
    from benchmark.grid import grid_cells, run_grid
    out, lines = tmp_path / "grid", []
    cells = grid_cells(["mnist"], ["torchvision:resnet18"], ["bp"], [0], {"epochs": 1, "batch_size": 32})
    assert run_grid(cells, str(out), tiny_root, echo=lines.append, threads=1) == {"failed": 1}
    assert "failed: ValueError: architecture 'torchvision:resnet18' takes 3-channel images" in lines[-1]
    assert not records_in(str(out))  # no record, let alone one left "running"


def test_a_crash_at_the_first_step_leaves_no_running_record_and_frees_the_name(tiny_root, tmp_path, monkeypatch):
    from benchmark.train import Trainer
    out = tmp_path / "runs"
    args = ["run", "--arch", "fc", "--epochs", "2", "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out),
            "--quiet"]
    real = Trainer.train_epoch

    def crashing_at(bad_epoch):
        def train_epoch(self, epoch):
            if epoch == bad_epoch:
                raise RuntimeError("a bug in a rule")
            return real(self, epoch)
        return train_epoch
    monkeypatch.setattr(Trainer, "train_epoch", crashing_at(1))
    crashed = CliRunner().invoke(cli, args)
    assert isinstance(crashed.exception, RuntimeError)  # a bug keeps its traceback
    assert not out.exists() or not os.listdir(out)  # nothing kept: the folder is gone with its record
    monkeypatch.setattr(Trainer, "train_epoch", crashing_at(2))
    crashed = CliRunner().invoke(cli, args)
    assert isinstance(crashed.exception, RuntimeError)
    ((name, record),) = records_in(str(out)).items()
    assert record["status"] == "interrupted" and record["summary"]["epochs_done"] == 1  # its checkpoint's
    monkeypatch.setattr(Trainer, "train_epoch", real)
    assert CliRunner().invoke(cli, args + ["--resume"]).exit_code == 0
    assert records_in(str(out))[name]["status"] == "complete" and os.listdir(out) == [name]


def test_truncated_idx_file_is_reported(tmp_path):
    root = make_tiny_mnist(str(tmp_path / "data"))
    path = os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte")
    with open(path, "r+b") as handle:
        handle.truncate(1000)
    out = tmp_path / "out"
    result = invoke_bad(root, out, [])
    assert result.exit_code == 2
    assert "MNIST files under" in result.output and "truncated or corrupt" in result.output
    assert not out.exists()


def test_missing_dataset_says_where_it_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke_bad(str(tmp_path / "empty"), tmp_path / "out", ["--dataset", "fashion-mnist"])
    assert result.exit_code == 2
    assert "FashionMNIST not found under" in result.output and "FashionMNIST/raw" in result.output


def write_image_folder(root, sizes, bad_file=None, junk=False):
    from PIL import Image
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            folder = os.path.join(root, split, label)
            os.makedirs(folder, exist_ok=True)
            for i, size in enumerate(sizes):
                pixels = torch.randint(0, 255, (size, size, 3), dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
            if junk:
                open(os.path.join(folder, "notes.txt"), "w").write("not an image")
    if bad_file:
        open(os.path.join(root, "train", "cat", bad_file), "w").write("this is not a jpeg")
    return root


def test_image_folder_with_a_corrupt_image_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(str(tmp_path / "imgs"), [224], bad_file="broken.jpg")
    result = invoke_bad(root, tmp_path / "out", ["--dataset", "imagefolder", "--arch", "lc"])
    assert result.exit_code == 2
    assert "cannot decode image" in result.output and "broken.jpg" in result.output


def test_fc_net_on_imagenet_sized_data_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(str(tmp_path / "imgs"), [224])
    result = invoke_bad(root, tmp_path / "out", ["--dataset", "imagefolder", "--arch", "fc"])
    assert result.exit_code == 2
    assert "'fc' is not defined for imagenet inputs 3x224x224" in result.output
    assert not (tmp_path / "out").exists()


def test_image_folder_with_mixed_sizes_is_resized_with_a_warning(tmp_path, monkeypatch):
    from benchmark.data import load_dataset
    monkeypatch.setenv("BIOBENCH_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(str(tmp_path / "imgs"), [224, 180, 300], junk=True)
    with pytest.warns(UserWarning) as caught:
        data = load_dataset("imagefolder", root)
    messages = " ".join(str(w.message) for w in caught)
    assert "were not 224x224; resized" in messages and "are not images" in messages
    assert data.train.images.shape == (6, 3, 224, 224) and data.classes == ["cat", "dog"]


def test_resume_from_a_checkpoint_of_another_config_is_refused(tiny_root, tmp_path):
    import shutil

    from benchmark.config import RunConfig
    out = tmp_path / "runs"
    common = ["run", "--arch", "fc", "--algo", "bp", "--epochs", "1", "--batch-size", "32", "--data-dir", tiny_root,
              "--out", str(out), "--quiet"]
    assert CliRunner().invoke(cli, common + ["--lr", "0.001"]).exit_code == 0
    (source,) = os.listdir(out)
    other = RunConfig(dataset="mnist", arch="fc", rule="bp", epochs=1, batch_size=32, lr=0.002)
    os.makedirs(out / other.run_name())
    shutil.copy(out / source / "checkpoint.pt", out / other.run_name() / "checkpoint.pt")
    result = CliRunner().invoke(cli, common + ["--lr", "0.002", "--resume"])
    assert result.exit_code == 2, result.output
    assert "is from a different config (differs in: lr)" in result.output
    assert not (out / other.run_name() / "record.json").exists()


def test_train_subset_is_class_stratified_fixed_and_bounded(tmp_path):
    from benchmark.data import stratified_subset
    labels = torch.arange(10).repeat_interleave(50)  # class-sorted, like the CIFAR-10 JPEG folders
    chosen = stratified_subset(labels, 100)
    assert len(chosen) == 100 and len(set(chosen.tolist())) == 100
    assert torch.bincount(labels[chosen]).tolist() == [10] * 10
    assert torch.equal(chosen, stratified_subset(labels, 100))  # the same subset for every run
    assert torch.bincount(labels[stratified_subset(labels, 7)], minlength=10).max() == 1
    root = make_tiny_mnist(str(tmp_path / "data"))  # 96 training images
    result = invoke_bad(root, tmp_path / "out", ["--train-subset", "500"])
    assert result.exit_code == 2
    assert "--train-subset 500 is larger than the mnist training set (96 images)" in result.output
    assert not (tmp_path / "out").exists()


def test_a_second_run_of_the_same_config_is_announced_and_recorded(tiny_root, tmp_path):
    out = tmp_path / "runs"
    args = ["run", "--arch", "fc", "--algo", "bp", "--epochs", "1", "--batch-size", "32", "--data-dir", tiny_root,
            "--out", str(out), "--quiet"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0 and "warning" not in first.output
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0
    (name,) = [f for f in os.listdir(out) if not f.endswith("-2")]
    assert f"{os.path.join(str(out), name)} already holds a run of this config and seed" in second.output
    assert json.load(open(out / f"{name}-2" / "record.json"))["repeat_of"] == name
    assert "repeat_of" not in json.load(open(out / name / "record.json"))


def test_outputs_respect_the_umask_and_records_name_the_code(tiny_root, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "runs"
        assert CliRunner().invoke(cli, ["run", "--arch", "fc", "--algo", "bp", "--epochs", "1", "--data-dir",
                                        tiny_root, "--out", str(out), "--quiet"]).exit_code == 0
        (folder,) = os.listdir(out)
        for name in ("record.json", "checkpoint.pt"):
            assert os.stat(out / folder / name).st_mode & 0o777 == 0o644
    finally:
        os.umask(previous)
    record = json.load(open(out / folder / "record.json"))
    from benchmark import __version__
    assert record["code"]["biobench_version"] == __version__
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if commit.returncode == 0:
        assert record["code"]["git_commit"] == commit.stdout.strip()
    else:
        assert record["code"]["git_commit"] is None


@pytest.mark.slow
def test_grid_shows_each_cells_epochs_and_takes_threads(tiny_root, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "grid", "--datasets", "mnist",
                             "--archs", "fc", "--algos", "bp", "--seeds", "1", "--epochs", "2", "--threads", "1",
                             "--data-dir", tiny_root, "--out", str(tmp_path / "g")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "(1 job(s) x 1 thread(s))" in result.stderr
    epoch_lines = [line for line in result.stderr.splitlines() if ": epoch " in line]
    assert len(epoch_lines) == 2 and "mnist-fc-bp-seed0" in epoch_lines[0] and "ETA" in epoch_lines[0]
    record = records_in(str(tmp_path / "g"))
    assert list(record.values())[0]["host"]["torch_threads"] == 1


@pytest.mark.parametrize("command", ["grid", "search"])
def test_out_that_cannot_be_created_is_one_line_before_training(tiny_root, command):
    extra = ["--val-split", "0.2", "--trials", "1"] if command == "search" else []
    result = CliRunner().invoke(cli, [command, "--archs" if command == "grid" else "--arch", "fc", "--epochs", "1",
                                      "--data-dir", tiny_root, "--out", "/proc/biobench-out", *extra])
    assert result.exit_code == 2, result.output
    assert "--out '/proc/biobench-out' cannot be created or written" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("target", ["group", "parent"])
def test_sigterm_stops_a_parallel_grid_with_one_line_and_no_stray_workers(medium_root, tmp_path, target):
    out = str(tmp_path / "grid")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py"), "grid", "--datasets", "mnist",
                             "--archs", "fc", "--algos", "bp,fa,dfa", "--seeds", "2", "--epochs", "30",
                             "--batch-size", "16", "--jobs", "3", "--threads", "1", "--quiet",
                             "--data-dir", medium_root, "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_epoch(out, 1, proc)
    if target == "group":  # what a scheduler or a terminal does
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert stderr.strip().splitlines() == ["error: grid interrupted; rerun the same command to finish the missing "
                                           "cells (interrupted ones resume from their checkpoints)"]
    deadline = time.time() + 20
    while time.time() < deadline:  # every worker of the group has left
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker processes are still running")
    statuses = [r["status"] for r in records_in(out).values()]
    assert statuses and all(s == "interrupted" for s in statuses), statuses
