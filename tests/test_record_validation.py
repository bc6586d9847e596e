"""Records with wrong types are refused where they are read (``load_record``),
naming the file and the field, so ``table``, ``plot`` and ``report`` skip them
with a warning instead of failing half-way; and symlinked run folders count
the same for ``table`` and ``grid --status``."""
import json
import os

import pytest
from click.testing import CliRunner

from benchmark.errors import RecordError
from benchmark.io import write_json
from benchmark.records import append_epoch, finish_record, load_record, new_record
from benchmark.results import load_runs
from cli import cli
from helpers import fake_record


def _delete(key):
    return lambda record: record["config"].pop(key)


def _set(value, *keys):
    """Set ``record[keys[0]][keys[1]]...`` to ``value``."""
    def change(record):
        target = record
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


# name: (how the record goes wrong, the field its error must name)
BAD_RECORDS = {
    "text-error": (_set("abc", "summary", "best_test_error"), "summary.best_test_error"),
    "null-summary": (_set(None, "summary"), "summary"),
    "null-epochs-done": (_set(None, "summary", "epochs_done"), "summary.epochs_done"),
    "text-in-curve": (_set("abc", "curves", "test_error", 1), "curves.test_error[1]"),
    "null-in-curve": (_set(None, "curves", "train_loss", 0), "curves.train_loss[0]"),
    "bool-in-curve": (_set(True, "curves", "test_error", 0), "curves.test_error[0]"),
    "curve-not-a-list": (_set(4.0, "curves", "test_error"), "curves.test_error"),
    "curve-missing": (lambda record: record["curves"].pop("val_error"), "curves.val_error"),
    "curves-unequal": (_set([1.0], "curves", "seconds"), "curves.seconds"),
    "forward-total-text": (_set("1000", "params", "forward_total"), "params.forward_total"),
    "forward-total-float": (_set(1000.5, "params", "forward_total"), "params.forward_total"),
    "per-layer-null": (_set(None, "params", "per_layer"), "params.per_layer"),
    "per-layer-empty": (_set([], "params", "per_layer"), "params.per_layer"),
    "complete-without-epochs": (lambda record: record.update(curves={key: [] for key in record["curves"]},
                                                             alignment=[]), "curves.epoch"),
    "no-dataset": (_delete("dataset"), "config.dataset"),
    "no-arch": (_delete("arch"), "config.arch"),
    "no-algo": (_delete("algo"), "config.algo"),
    "no-seed": (_delete("seed"), "config.seed"),
    "epochs-text": (_set("2", "config", "epochs"), "config.epochs"),
    "config-list": (_set([], "config"), "config"),
    "rule-options-text": (_set("alpha=1", "config", "rule_options"), "config.rule_options"),
    "status": (_set("done", "status"), "status"),
    "alignment-dict": (_set({"layers": []}, "alignment"), "alignment"),
    "alignment-entry-list": (_set([[1]], "alignment"), "alignment[0]"),
    "layers-text": (_set("x", "alignment", 0, "layers"), "alignment[0].layers"),
    "layer-row-null": (_set(None, "alignment", 1, "layers", 2), "alignment[1].layers[2]"),
    "layer-angle-text": (_set("x", "alignment", 1, "layers", 1, "wb_angle"), "alignment[1].layers[1].wb_angle"),
    "parts-text": (_set("x", "alignment", 0, "parts"), "alignment[0].parts"),
    "part-layer-text": (_set([{"block": 0, "part": "q", "layer": "x"}], "alignment", 1, "parts"),
                        "alignment[1].parts[0].layer"),
    "part-without-name": (_set([{"block": 0, "layer": 3, "update_angle": 80.0}], "alignment", 1, "parts"),
                          "alignment[1].parts[0].part"),
    "device-list": (_set(["cpu"], "device"), "device"),
    "versions-null": (_set(None, "versions"), "versions"),
    "git-commit-number": (_set({"git_commit": 123}, "code"), "code.git_commit"),
    "finished-at-number": (_set(5, "finished_at"), "finished_at"),
}


def bad_record(name):
    """A record of a cell no good record has (Fashion-MNIST), made wrong as ``name`` says."""
    # Through JSON: fake_record's curves share one list.
    record = json.loads(json.dumps(fake_record("fashion-mnist", "fc", "fa", 0, [5.0, 4.0])))
    record.update(device="cpu", versions={"python": "3"}, code={"git_commit": None}, finished_at="2026-01-01")
    BAD_RECORDS[name][0](record)
    return record


def write_good_records(root):
    for algo in ("bp", "fa"):
        for seed, errors in enumerate(([3.0, 2.0], [2.5, 2.4])):
            write_json(str(root / f"mnist-fc-{algo}-{seed}" / "record.json"),
                       fake_record("mnist", "fc", algo, seed, errors))


def write_bad_record(root, name):
    path = root / f"bad-{name}" / "record.json"
    write_json(str(path), bad_record(name))
    return str(path)


def test_the_unchanged_bad_record_is_valid(tmp_path):
    path = tmp_path / "record.json"
    record = fake_record("fashion-mnist", "fc", "fa", 0, [5.0, 4.0])
    write_json(str(path), record)
    assert load_record(str(path)) == record


@pytest.mark.parametrize("name", BAD_RECORDS)
def test_load_record_names_the_file_and_the_field(tmp_path, name):
    path = write_bad_record(tmp_path, name)
    with pytest.raises(RecordError) as error:
        load_record(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {BAD_RECORDS[name][1]} ")
    assert "\n" not in message


@pytest.mark.parametrize("name", BAD_RECORDS)
def test_table_skips_a_record_of_wrong_types_and_strict_refuses_it(tmp_path, name):
    root = tmp_path / "runs"
    write_good_records(root)
    path = write_bad_record(root, name)
    result = CliRunner().invoke(cli, ["table", "--runs", str(root)])
    assert result.exit_code == 0, result.output
    assert f"warning: skipped {path}: {BAD_RECORDS[name][1]} " in result.stderr
    assert "| bp | 2.20 ± 0.28 (2)" in result.stdout and "| fa | 2.20 ± 0.28 (2)" in result.stdout
    assert "Fashion-MNIST" not in result.stdout
    strict = CliRunner().invoke(cli, ["table", "--runs", str(root), "--strict"])
    assert strict.exit_code == 1 and f"{path}: {BAD_RECORDS[name][1]} " in strict.stderr
    assert strict.exc_info[0] is SystemExit  # an error message, not a traceback


@pytest.fixture
def good_and_bad_runs(tmp_path):
    """Good records of one cell, and every kind of bad record, each its own run folder."""
    root = tmp_path / "runs"
    write_good_records(root)
    return root, [write_bad_record(root, name) for name in BAD_RECORDS]


def test_plot_skips_bad_records_and_writes_only_the_good_ones_plots(good_and_bad_runs, tmp_path):
    root, bad_paths = good_and_bad_runs
    out = tmp_path / "plots"
    result = CliRunner().invoke(cli, ["plot", "--runs", str(root), "--out", str(out)])
    assert result.exit_code == 0 and result.exception is None, result.output
    for path in bad_paths:
        assert f"warning: skipped {path}: " in result.stderr
    stems = ("bars_best", "curves_mnist", "alignment_mnist_fc", "params_vs_error_best")
    assert sorted(os.listdir(out)) == sorted(f"{stem}.{ext}" for stem in stems for ext in ("png", "pdf"))


def test_report_skips_bad_records(good_and_bad_runs, tmp_path):
    root, bad_paths = good_and_bad_runs
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "--runs", str(root), "--out", str(out)])
    assert result.exit_code == 0 and result.exception is None, result.output
    for path in bad_paths:
        assert f"warning: skipped {path}: " in result.stderr
    html = out.read_text(encoding="utf-8")
    assert "bad-" not in html and "Fashion-MNIST" not in html
    assert sorted(os.listdir(tmp_path)) == ["report.html", "runs"]  # no half-written files beside it


def test_records_the_code_writes_load(tmp_path):
    """A run about to train, one with an epoch (no validation split, a layer
    without B, a rule metric that has no value) and one diverged at epoch 1."""
    config = {"dataset": "mnist", "arch": "fc", "algo": "fa", "seed": 0, "epochs": 2, "train_subset": 0,
              "rule_options": {}}
    params = {"forward_total": 10, "feedback_total": 4, "per_layer": [{"layer": 0}, {"layer": 1}]}
    fresh = new_record("run", dict(config), "cpu", {}, {"name": "fa"}, params)
    trained = new_record("run", dict(config), "cpu", {}, {"name": "fa"}, params)
    layers = [{"layer": 0, "wb_angle": None, "update_angle": 10.0, "norm_ratio": None, "target_distance": None},
              {"layer": 1, "wb_angle": 30.0, "update_angle": None, "norm_ratio": 1.0,
               "reconstruction_error": 0.5}]
    append_epoch(trained, {"epoch": 1, "phase": "forward", "layers": layers}, epoch=1, train_loss=float("nan"),
                 train_error=50.0, test_loss=2.0, test_error=40, val_error=None, seconds=0.1)
    finish_record(trained, "complete", 1.0)
    diverged = new_record("run", dict(config), "cpu", {}, {"name": "fa"}, params)
    finish_record(diverged, "diverged", 1.0, diverged_epoch=1)
    for name, record in (("fresh", fresh), ("trained", trained), ("diverged", diverged)):
        path = tmp_path / name / "record.json"
        write_json(str(path), record)
        assert load_record(str(path))["status"] == record["status"]


# --- symlinked run folders ---------------------------------------------------------------------
def test_table_and_grid_status_count_the_same_run_folders(tmp_path):
    """A run folder linked in from elsewhere counts for both; a second link to
    a counted folder and a link back to the results folder do not."""
    results, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    write_json(str(results / "real-run" / "record.json"), fake_record("mnist", "fc", "bp", 0, [3.0, 2.0]))
    write_json(str(elsewhere / "linked-run" / "record.json"), fake_record("mnist", "fc", "bp", 1, [2.5, 2.4]))
    os.symlink(elsewhere / "linked-run", results / "linked")
    os.symlink(results / "real-run", results / "real-run-again")
    os.symlink(results, results / "loop")
    runs, bad = load_runs([str(results)])
    in_table = sorted(os.path.basename(os.path.dirname(path)) for path in runs.path)
    assert bad == [] and in_table == ["linked", "real-run"]
    table = CliRunner().invoke(cli, ["table", "--runs", str(results)])
    assert table.exit_code == 0 and "2.20 ± 0.28 (2)" in table.stdout, table.output
    status = CliRunner().invoke(cli, ["grid", "--status", str(results)])
    assert status.exit_code == 0, status.output
    counted = [line.strip() for line in status.stdout.splitlines() if line.startswith("  ")]
    assert sorted(counted) == in_table
    assert "complete: 2" in status.stdout


def test_grid_status_leaves_out_folders_that_hold_no_run(tmp_path):
    """plots/ and tables/ written beside the runs (plot/table --out) are not runs, missing or otherwise."""
    write_json(str(tmp_path / "a-run" / "record.json"), fake_record("mnist", "fc", "bp", 0, [3.0, 2.0]))
    (tmp_path / "plots").mkdir()
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "table_best.md").write_text("| rule |\n")
    status = CliRunner().invoke(cli, ["grid", "--status", str(tmp_path)])
    assert status.exit_code == 0, status.output
    counted = [line.strip() for line in status.stdout.splitlines() if line.startswith("  ")]
    assert counted == ["a-run"] and "missing: 0" in status.stdout
