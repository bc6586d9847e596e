"""Faults that must never lose or falsify a result (issue: corrupted
checkpoints, full disks, concurrent resumes, empty splits, killed workers,
interrupts at awkward moments, absurd learning rates, locks, thread counts).
Each test reproduces the fault with a real file, process or file system."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from benchmark.locks import RunLock
from cli import cli
from helpers import comparable, make_tiny_mnist, records_in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_args(data, out, *extra, epochs=2, arch="fc", rule="fa"):
    return ["run", "--arch", arch, "--algo", rule, "--epochs", str(epochs), "--batch-size", "32",
            "--data-dir", data, "--out", str(out), "--quiet", *extra]


def invoke(args):
    return CliRunner().invoke(cli, args)


def only_run_dir(out):
    (name,) = os.listdir(out)
    return os.path.join(out, name)


def file_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


# 1. a damaged checkpoint is refused, not resumed -----------------------------------------------
def test_a_damaged_checkpoint_is_refused_in_one_line_and_the_record_is_untouched(tiny_root, tmp_path):
    out = tmp_path / "runs"
    assert invoke(run_args(tiny_root, out)).exit_code == 0
    run_dir = only_run_dir(out)
    checkpoint, record = os.path.join(run_dir, "checkpoint.pt"), os.path.join(run_dir, "record.json")
    size = os.path.getsize(checkpoint)
    with open(checkpoint, "r+b") as handle:  # overwrite bytes in the middle, as a bad disk or copy would
        handle.seek(size // 2)
        handle.write(os.urandom(4096))
    before = file_bytes(record)
    result = invoke(run_args(tiny_root, out, "--resume", epochs=3))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "is damaged" in lines[0] and checkpoint in lines[0], result.output
    assert "Traceback" not in result.output
    assert file_bytes(record) == before


# 2. resuming with fewer epochs than done --------------------------------------------------------
def test_resume_with_fewer_epochs_than_done_is_refused(tiny_root, tmp_path):
    out = tmp_path / "runs"
    assert invoke(run_args(tiny_root, out, epochs=3)).exit_code == 0
    record = os.path.join(only_run_dir(out), "record.json")
    before = file_bytes(record)
    result = invoke(run_args(tiny_root, out, "--resume", epochs=2))
    assert result.exit_code == 2
    assert "already has 3 epochs; give --epochs 3 or more" in result.output
    assert file_bytes(record) == before


# 3 and 10. one process per run folder, an OS lock that dies with its holder ---------------------
HOLD_LOCK = ("import sys, time; sys.path.insert(0, {root!r}); from benchmark.locks import RunLock; "
             "lock = RunLock({run_dir!r}); assert lock.acquire(); print('held', flush=True); time.sleep(60)")


def test_a_second_process_cannot_train_a_folder_in_use_and_a_killed_holder_frees_it(tiny_root, tmp_path):
    out = tmp_path / "runs"
    assert invoke(run_args(tiny_root, out)).exit_code == 0
    run_dir = only_run_dir(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(root=ROOT, run_dir=run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = invoke(run_args(tiny_root, out, "--resume", epochs=3))
        assert result.exit_code == 2 and "is being trained by another process" in result.output
        assert str(holder.pid) in result.output
        assert RunLock(run_dir).held()
    finally:
        holder.kill()  # kill -9: no chance to clean up
        holder.wait()
    assert not RunLock(run_dir).held()
    assert invoke(run_args(tiny_root, out, "--resume", epochs=3)).exit_code == 0


def test_a_lock_file_naming_a_live_unrelated_process_does_not_block_a_grid_cell(tiny_root, tmp_path):
    out = tmp_path / "grid"
    grid = ["grid", "--datasets", "mnist", "--archs", "fc", "--algos", "fa", "--seeds", "1", "--epochs", "2",
            "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out), "--quiet"]
    assert invoke(grid).exit_code == 0
    run_dir = only_run_dir(out)
    os.remove(os.path.join(run_dir, "record.json"))  # the cell is to be trained again
    with open(os.path.join(run_dir, "run.lock"), "w") as handle:
        handle.write(f"{os.getppid()}")  # a live process that holds no lock (the old pid-file scheme's fault)
    assert not RunLock(run_dir).held()
    result = invoke(grid)
    assert result.exit_code == 0 and "grid finished: 1 complete" in result.output, result.output


def test_a_grid_skips_a_cell_another_process_holds_and_trains_the_rest(tiny_root, tmp_path):
    """What lets two ``--jobs 1`` grids over one folder share its cells."""
    out = tmp_path / "grid"
    grid = ["grid", "--datasets", "mnist", "--archs", "fc", "--algos", "fa", "--seeds", "2", "--epochs", "1",
            "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out)]
    assert invoke(grid).exit_code == 0
    held, free = sorted(os.path.join(out, name) for name in os.listdir(out))
    for run_dir in (held, free):
        os.remove(os.path.join(run_dir, "record.json"))  # both cells are to be trained again
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(root=ROOT, run_dir=held)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = invoke(grid)
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 0, result.output
    assert f"{os.path.basename(held)}: busy: skipped (another process is running it)" in result.output
    assert "grid finished: 1 busy, 1 complete" in result.output
    assert os.path.exists(os.path.join(free, "record.json")) and not os.path.exists(os.path.join(held, "record.json"))


# 4. empty splits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("split,empty", [("0.01", "validation split 0 images"),
                                         ("0.99", "training split 0 images")])
def test_an_empty_split_is_bad_input_and_nothing_is_written(tiny_root, tmp_path, split, empty):
    out = tmp_path / "runs"
    result = invoke(run_args(tiny_root, out, "--train-subset", "20", "--val-split", split))
    assert result.exit_code == 2, result.output
    assert f"--val-split {split} of 20 training images leaves the {empty}" in result.output
    assert "Traceback" not in result.output and not out.exists()


# 5. a full disk -------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 9 MB tmpfs: room for one MNIST FC checkpoint (5.6 MB) but not for a
    second one beside it during the atomic replace."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small file system here ({exc}); the full-disk test needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: never blocks on an open file


def test_a_full_disk_stops_the_run_in_one_line_with_a_truthful_record_and_resume_is_exact(tiny_root, tmp_path,
                                                                                         small_disk):
    straight = tmp_path / "straight"
    assert invoke(run_args(tiny_root, straight, epochs=3)).exit_code == 0
    out = small_disk / "runs"
    result = invoke(run_args(tiny_root, out, epochs=3))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "No space left on device" in line and "keeps 1 complete epoch(s)" in line and "--resume" in line
    run_dir = only_run_dir(out)
    record = json.load(open(os.path.join(run_dir, "record.json")))
    assert record["status"] == "interrupted" and record["summary"]["epochs_done"] == 1
    assert not [f for f in os.listdir(run_dir) if f.startswith(".tmp-")]
    subprocess.run(["mount", "-o", "remount,size=40m", str(small_disk)], check=True)  # space freed
    assert invoke(run_args(tiny_root, out, "--resume", epochs=3)).exit_code == 0
    (resumed,), (expected,) = records_in(str(out)).values(), records_in(str(straight)).values()
    assert comparable(resumed) == comparable(expected)


# 6. the interrupt message and the record say what the checkpoint on disk holds ----------------------
def test_an_interrupt_before_the_first_epoch_keeps_nothing_and_says_so(tiny_root, tmp_path, monkeypatch):
    import benchmark.train as train

    def interrupted(self, epoch):
        raise KeyboardInterrupt
    out = tmp_path / "runs"
    with monkeypatch.context() as patch:
        patch.setattr(train.Trainer, "train_epoch", interrupted)
        result = invoke(run_args(tiny_root, out))
    assert result.exit_code == 1
    assert "error: interrupted; nothing was kept: rerun the same command" in result.output
    assert "--resume" not in result.output and os.listdir(out) == []
    assert invoke(run_args(tiny_root, out)).exit_code == 0
    assert not [f for f in os.listdir(out) if f.endswith("-2")]  # the rerun is the run, not a second one


def test_an_interrupt_during_a_checkpoint_write_reports_the_checkpoint_on_disk(tiny_root, tmp_path, monkeypatch):
    import benchmark.train as train
    real, calls = train.save_checkpoint, []

    def interrupted_on_the_second(run_dir, state):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a signal inside torch.save would
        real(run_dir, state)
    out = tmp_path / "runs"
    with monkeypatch.context() as patch:
        patch.setattr(train, "save_checkpoint", interrupted_on_the_second)
        result = invoke(run_args(tiny_root, out, epochs=3))
    assert result.exit_code == 1
    assert "keeps 1 complete epoch(s): rerun the same command with --resume" in result.output
    record = json.load(open(os.path.join(only_run_dir(out), "record.json")))
    assert record["status"] == "interrupted" and record["summary"]["epochs_done"] == 1
    assert invoke(run_args(tiny_root, out, "--resume", epochs=3)).exit_code == 0


def test_a_second_signal_while_stopping_still_leaves_the_record_interrupted(tiny_root, tmp_path, monkeypatch):
    import benchmark.train as train
    real_write = train.write_json

    def signal_then_write(path, record):
        if record.get("status") == "interrupted":
            os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C
        real_write(path, record)

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)
    real_epoch = train.Trainer.train_epoch
    out = tmp_path / "runs"
    with monkeypatch.context() as patch:
        patch.setattr(train, "write_json", signal_then_write)
        patch.setattr(train.Trainer, "train_epoch", interrupted)
        result = invoke(run_args(tiny_root, out, epochs=3))
    assert result.exit_code == 1 and "keeps 1 complete epoch(s)" in result.output
    assert json.load(open(os.path.join(only_run_dir(out), "record.json")))["status"] == "interrupted"


# 7. a learning rate that overflows inside the optimiser ----------------------------------------------
def test_an_overflowing_learning_rate_is_a_diverged_run_not_a_traceback(tiny_root, tmp_path):
    out = tmp_path / "runs"
    result = invoke(run_args(tiny_root, out, "--lr", "1e38", rule="bp"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "run diverged at epoch 1" in result.output
    assert json.load(open(os.path.join(only_run_dir(out), "record.json")))["status"] == "diverged"


# 8. a grid worker killed by the OS ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_grid_worker_is_named_and_every_cell_stays_resumable(tmp_path):
    data = make_tiny_mnist(str(tmp_path / "data"), n_train=2000, n_test=200)
    out = str(tmp_path / "grid")
    command = [sys.executable, os.path.join(ROOT, "cli.py"), "grid", "--datasets", "mnist", "--archs", "fc",
               "--algos", "bp,fa", "--seeds", "1", "--epochs", "30", "--batch-size", "32", "--jobs", "2",
               "--data-dir", data, "--out", out, "--quiet"]
    grid = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Both cells must have a finished epoch (a checkpoint) before one worker is
    # killed: under load one cell can lag, and a cell with nothing kept is
    # "missing", not resumable. Then kill the first cell's worker.
    workers = {}
    deadline = time.time() + 120
    while len(workers) < 2 and time.time() < deadline:
        time.sleep(0.2)
        for name in os.listdir(out) if os.path.isdir(out) else []:
            record = os.path.join(out, name, "record.json")
            try:
                if json.load(open(record))["summary"]["epochs_done"] >= 1:
                    workers[name] = int(open(os.path.join(out, name, "run.lock")).read().split()[1])
            except (OSError, ValueError, KeyError):
                pass
    assert len(workers) == 2, f"no epoch finished in time in every cell: {sorted(workers)}"
    victim = min(workers.items())
    os.kill(victim[1], signal.SIGKILL)  # what the out-of-memory killer does
    _, stderr = grid.communicate(timeout=120)
    assert grid.returncode == 1 and "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "worker process died" in line and victim[0] in line
    status = CliRunner().invoke(cli, ["grid", "--status", out]).output
    tracebacks = [open(os.path.join(out, n, "error.txt")).read() for n in os.listdir(out)
                  if os.path.exists(os.path.join(out, n, "error.txt"))]  # a surviving cell that raised says why
    assert "running: 0" in status and "resumable: 2" in status, status + "".join(tracebacks)
    assert not [n for n in os.listdir(out) if RunLock(os.path.join(out, n)).held()]


def test_a_stopping_workers_cell_that_raises_is_interrupted_not_failed(tiny_root, tmp_path, monkeypatch):
    """A SIGTERM's KeyboardInterrupt that lands inside torch (a save, a load)
    surfaces as a RuntimeError. In a worker told to stop, that is the stop, not
    a broken cell: no error.txt, so --status keeps it resumable. A worker not
    told to stop still records a real failure."""
    from benchmark import grid
    from benchmark.config import RunConfig
    from benchmark.errors import RunInterrupted
    from benchmark.train import Trainer

    def torch_wrapped_interrupt(self, run_dir, resume=False, notes=None):
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")
    monkeypatch.setattr(Trainer, "run", torch_wrapped_interrupt)
    out = str(tmp_path / "grid")
    config = RunConfig(dataset="mnist", arch="fc", rule="fa", epochs=1, batch_size=32).as_record()
    monkeypatch.setitem(grid._worker_state, "stopping", True)
    with pytest.raises(RunInterrupted):
        grid.run_cell(config, out, tiny_root, "cpu", 1)
    run_dir = os.path.join(out, RunConfig.from_record(config).run_name())
    assert not os.path.exists(os.path.join(run_dir, "error.txt"))
    monkeypatch.setitem(grid._worker_state, "stopping", False)
    _, status, message = grid.run_cell(config, out, tiny_root, "cpu", 1)
    assert status == "failed" and message.startswith("RuntimeError") and os.path.exists(
        os.path.join(run_dir, "error.txt"))


# 11. a resumed segment records its own thread count ----------------------------------------------------
def test_a_resumed_segment_records_its_threads(tiny_root, tmp_path):
    out = tmp_path / "runs"
    assert invoke(run_args(tiny_root, out, "--threads", "1", epochs=1)).exit_code == 0
    assert invoke(run_args(tiny_root, out, "--threads", "2", "--resume", epochs=2)).exit_code == 0
    record = json.load(open(os.path.join(only_run_dir(out), "record.json")))
    assert record["host"]["torch_threads"] == 1
    (segment,) = record["resumes"]
    assert segment["after_epoch"] == 1 and segment["torch_threads"] == 2


def test_a_record_made_under_other_rule_defaults_is_not_taken_for_the_current_rule(tiny_root, tmp_path):
    """Folder names hash the options a run was given, not the defaults: when a
    default changes, the old record must not pass for the new rule's."""
    out = str(tmp_path / "grid")
    args = ["grid", "--datasets", "mnist", "--archs", "fc", "--algos", "fa", "--seeds", "1", "--epochs", "1",
            "--batch-size", "32", "--data-dir", tiny_root, "--out", out]
    assert CliRunner().invoke(cli, args).exit_code == 0
    (name,) = os.listdir(out)
    path = os.path.join(out, name, "record.json")
    with open(path) as handle:
        record = json.load(handle)
    assert record["rule"]["options"] == {"feedback_init": "xavier"}
    record["rule"]["options"]["feedback_init"] = "kaiming"  # as if the default had been kaiming then
    with open(path, "w") as handle:
        json.dump(record, handle)
    before = open(path).read()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0
    assert "stale: not run: its record ran with feedback_init='kaiming' (now 'xavier')" in result.output
    assert "1 cell(s) not run" in result.output
    assert open(path).read() == before


def test_a_requeue_that_slurms_own_sigterm_cuts_short_counts_as_requeued(monkeypatch):
    submitit = pytest.importorskip("submitit")
    from benchmark import cluster
    environment = submitit.slurm.slurm.SlurmJobEnvironment
    monkeypatch.setattr(environment, "_requeue", environment._requeue)  # restored after the test
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    exit_codes = iter([-signal.SIGTERM, 1])

    def scontrol(cmd, timeout=None):
        raise subprocess.CalledProcessError(next(exit_codes), cmd)
    monkeypatch.setattr(subprocess, "check_call", scontrol)
    cluster.tolerate_requeue_race(submitit)
    cluster.tolerate_requeue_race(submitit)  # a second task in the same process wraps it once
    task_environment = environment()
    task_environment._requeue(1)  # killed by the SIGTERM that the requeue itself sends: requeued
    with pytest.raises(subprocess.CalledProcessError):
        task_environment._requeue(1)  # scontrol refused: still an error
