"""Grids on a real Slurm cluster through submitit (``.ci/slurm.sh up`` starts a
one-node one). Without a cluster these tests skip, unless
BIOBENCH_REQUIRE_SLURM=1 (CI), where they fail."""
import json
import os
import shutil
import subprocess
import time

import pytest
from click.testing import CliRunner

from cli import cli
from helpers import comparable, make_tiny_mnist

pytestmark = pytest.mark.slow  # trains nets or starts subprocesses


def cluster_answers():
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return states.returncode == 0 and any(s in states.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    try:
        import submitit  # noqa: F401
    except ImportError:
        submitit = None
    if submitit is None or not cluster_answers():
        reason = "no Slurm cluster answers here (start one with: sudo .ci/slurm.sh up; needs pip install submitit)"
        if os.environ.get("BIOBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(reason + " but BIOBENCH_REQUIRE_SLURM=1")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_mnist(str(tmp_path_factory.mktemp("slurm-data")), n_train=320, n_test=64)


GRID = ["grid", "--datasets", "mnist", "--archs", "fc", "--algos", "bp,fa", "--seeds", "2", "--epochs", "2",
        "--batch-size", "32", "--threads", "1"]


def records(out):
    found = {}
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "record.json")
        if os.path.exists(path):
            found[name] = json.load(open(path))
    return found




def test_slurm_grid_equals_local_grid_and_resubmitting_submits_nothing(data, tmp_path):
    local, slurm = str(tmp_path / "local"), str(tmp_path / "slurm")
    assert CliRunner().invoke(cli, GRID + ["--data-dir", data, "--out", local, "--quiet"]).exit_code == 0
    result = CliRunner().invoke(cli, GRID + ["--data-dir", data, "--out", slurm, "--executor", "slurm", "--wait"])
    assert result.exit_code == 0, result.output
    assert "submitted 4 cell(s) as job array" in result.output and "grid finished: 4 complete" in result.output
    expected, got = records(local), records(slurm)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert comparable(got[name]) == comparable(expected[name])
        assert got[name]["slurm"]["requeues"] == 0 and got[name]["slurm"]["job_id"]
    again = CliRunner().invoke(cli, GRID + ["--data-dir", data, "--out", slurm, "--executor", "slurm", "--wait"])
    assert again.exit_code == 0 and "nothing to submit (4 cell(s) done or already queued)" in again.output
    status = CliRunner().invoke(cli, GRID + ["--status", slurm])
    assert "complete: 4" in status.output and "missing: 0" in status.output


def test_preempted_cell_is_requeued_and_resumes_exactly(data, tmp_path):
    from benchmark import cluster
    from benchmark.grid import grid_cells, run_grid
    options = dict(epochs=4, batch_size=8)
    cells = grid_cells(["mnist"], ["fc"], ["fa"], [0], options)
    run_grid(cells, str(tmp_path / "local"), data, device="cpu", threads=1, echo=lambda m: None)
    out = str(tmp_path / "slurm")
    submitted, jobs, _ = cluster.submit(cells, out, data, "cpu", 1, cluster.SlurmOptions(time_minutes=10))
    record_path = os.path.join(out, cells[0].run_name(), "record.json")
    deadline = time.time() + 60
    while time.time() < deadline:  # preempt it once its first epoch is checkpointed
        try:
            if json.load(open(record_path))["summary"]["epochs_done"] >= 1:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    else:
        pytest.fail("the Slurm task did not finish an epoch in time")
    jobs[0]._interrupt()  # what a preemption does: SIGTERM, then USR2 -> checkpoint() -> requeue
    counts = cluster.wait(submitted, jobs, out, echo=lambda m: None, poll_seconds=1.0)
    assert counts == {"complete": 1}
    (expected,), (got,) = records(str(tmp_path / "local")).values(), records(out).values()
    assert got["slurm"]["requeues"] == 1
    assert comparable(got) == comparable(expected)


def test_a_failing_cell_is_reported_with_its_log_while_the_others_complete(data, tmp_path):
    from benchmark.grid import grid_cells
    out = tmp_path / "slurm"
    broken = grid_cells(["mnist"], ["fc"], ["fa"], [1], dict(epochs=2, batch_size=32))[0].run_name()
    (out / broken).mkdir(parents=True)
    (out / broken / "checkpoint.pt").write_text("not a checkpoint")  # resumable, but cannot be read
    result = CliRunner().invoke(cli, GRID + ["--data-dir", data, "--out", str(out), "--executor", "slurm",
                                             "--wait"])
    assert result.exit_code == 1
    assert "grid finished: 3 complete, 1 failed" in result.output
    failed = [line for line in result.output.splitlines() if ": failed: see " in line]
    assert len(failed) == 1 and broken in failed[0] and "slurm-logs" in failed[0]
    assert "is damaged" in (out / broken / "error.txt").read_text()  # its zip check fails


def test_unreachable_slurm_is_one_line_and_leaves_nothing(data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    out = tmp_path / "slurm"
    result = CliRunner().invoke(cli, GRID + ["--data-dir", data, "--out", str(out), "--executor", "slurm"])
    assert result.exit_code == 2
    assert "no sbatch on this machine's PATH" in result.output and "Traceback" not in result.output
    assert not (out / "slurm-logs").exists()


def test_slurm_robustness_equals_local_robustness_and_resubmitting_submits_nothing(data, tmp_path):
    """Robustness goes through the same executors as a grid: one task per run."""
    runs = str(tmp_path / "runs")
    assert CliRunner().invoke(cli, GRID + ["--data-dir", data, "--out", runs, "--quiet"]).exit_code == 0
    local = str(tmp_path / "local")
    shutil.copytree(runs, local)
    evaluate = ["robustness", "--data-dir", data, "--eps", "0,0.1", "--attacks", "fgsm", "--corruptions", "contrast",
                "--test-subset", "0", "--threads", "1"]
    assert CliRunner().invoke(cli, evaluate + ["--runs", local]).exit_code == 0
    result = CliRunner().invoke(cli, evaluate + ["--runs", runs, "--executor", "slurm"])
    assert result.exit_code == 0, result.output
    assert "submitted 4 run(s) as job array" in result.output and "robustness finished: 4 evaluated" in result.output
    for name in os.listdir(local):
        if os.path.exists(os.path.join(local, name, "record.json")):
            got, expected = (json.load(open(os.path.join(root, name, "robustness.json"))) for root in (runs, local))
            assert got["states"] == expected["states"], name
    again = CliRunner().invoke(cli, evaluate + ["--runs", runs, "--executor", "slurm"])
    assert again.exit_code == 0 and "nothing to submit (4 run(s) evaluated or already queued)" in again.output
