"""Random search, successive halving and early stopping."""
import json
import math
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

import benchmark.grid
from benchmark.config import RunConfig
from benchmark.early_stopping import early_stop
from benchmark.errors import ConfigError
from benchmark.search import Dimension, Search, rung_epochs, sample_trials, search_space
from benchmark.train import Trainer
from cli import cli
from helpers import fake_record


def test_sampling_is_deterministic_prefix_stable_and_inside_the_ranges():
    space = search_space("dtp-par", {"lr": "log:1e-5:3e-3"})
    assert set(space) == {"lr", "beta2", "eps", "inverse_lr", "sigma", "alpha"}
    trials = sample_trials(space, 3000, search_seed=7)
    assert trials == sample_trials(space, 3000, search_seed=7)
    assert trials[:10] == sample_trials(space, 10, search_seed=7)  # more trials keep the earlier ones
    assert trials[:10] != sample_trials(space, 10, search_seed=8)
    lr = np.log10([t["lr"] for t in trials])
    assert lr.min() >= -5 and lr.max() <= math.log10(3e-3)
    # log-uniform: uniform on the log scale (mean and quartiles of log10 lr)
    low, high = -5, math.log10(3e-3)
    assert abs(lr.mean() - (low + high) / 2) < 0.05
    assert abs(np.mean(lr < low + (high - low) / 4) - 0.25) < 0.03
    sigma = np.array([t["sigma"] for t in trials])
    assert sigma.min() >= 0.01 and sigma.max() <= 0.3 and abs(np.median(sigma) - 0.155) < 0.02
    assert {t["beta2"] for t in trials} == {0.99, 0.999}
    assert {t["eps"] for t in trials} == {1e-4, 1e-6, 1e-8}
    assert {Dimension.parse("int:2:4", "k").sample(np.random.default_rng(i)) for i in range(200)} == {2, 3, 4}


@pytest.mark.parametrize("name,spec,message", [
    ("lr", "log:0:1", "is not one of log:LOW:HIGH"), ("lr", "uniform:3:1", "is not one of"),
    ("beta2", "choice:", "is not one of"), ("speed", "log:1:2", "--space speed: not a setting of fa")])
def test_bad_search_ranges_are_refused(name, spec, message):
    with pytest.raises(ConfigError, match=message):
        search_space("fa", {name: spec})


def test_rung_epochs():
    assert rung_epochs(9, 0, 1) == [9]
    assert rung_epochs(9, 3, 1) == [1, 3, 9]
    assert rung_epochs(10, 3, 2) == [2, 6, 10]
    assert rung_epochs(3, 2, 5) == [3]


def fake_trial_record(val, test):
    return fake_record("mnist", "fc", "fa", 0, test, val=val)


def make_search(tmp_path, trials=6, halving=0, epochs=2):
    return Search(dataset="mnist", arch="fc", rule="fa", trials=trials, epochs=epochs, search_seed=3,
                  space=search_space("fa"), base={"batch_size": 32, "val_split": 0.25}, rule_options={},
                  halving=halving, min_epochs=1)


class ScriptedExecutor:
    """Stand-in for an executor: writes each cell's record with a scripted curve."""

    def __init__(self, scores, calls):
        self.scores, self.calls = scores, calls

    def run(self, cells, out, data_dir):
        self.calls.append([(c.run_name(), c.epochs) for c in cells])
        for cell in cells:
            val, test = self.scores[cell.run_name()]
            path = os.path.join(out, cell.run_name(), "record.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            json.dump(fake_trial_record(val[:cell.epochs], test[:cell.epochs]), open(path, "w"))
        return {"complete": len(cells)}


def test_selection_uses_the_validation_error_only(tmp_path, monkeypatch):
    job = make_search(tmp_path, trials=3)
    _, configs = job.configs(2)
    names = [c.run_name() for c in configs]
    scores = {names[0]: ([9.0, 5.0], [9.0, 1.0]),   # best test error, worse validation error
              names[1]: ([8.0, 3.0], [8.0, 4.0]),   # best validation error
              names[2]: ([7.0, 4.0], [7.0, 2.0])}
    record = job.run(str(tmp_path), "unused", echo=lambda m: None, executor=ScriptedExecutor(scores, []))
    assert record["chosen"]["trial"] == 1 and record["chosen"]["best_val_error"] == 3.0
    assert [t["best_val_error"] for t in record["trials"]] == [5.0, 3.0, 4.0]
    assert json.load(open(os.path.join(job.folder(str(tmp_path)), "search.json")))["chosen"]["trial"] == 1


def test_successive_halving_keeps_the_stated_fraction(tmp_path, monkeypatch):
    job = make_search(tmp_path, trials=9, halving=3, epochs=9)
    _, configs = job.configs(9)
    # trial i's validation error falls to i at the end: lower index = better
    scores = {c.run_name(): ([50.0 + i] * 8 + [float(i)], [1.0] * 9) for i, c in enumerate(configs)}
    calls = []
    record = job.run(str(tmp_path), "unused", echo=lambda m: None, executor=ScriptedExecutor(scores, calls))
    assert [len(c) for c in calls] == [9, 3, 1]
    assert [{e for _, e in c} for c in calls] == [{1}, {3}, {9}]
    assert [r["kept"] for r in record["rungs"]] == [[0, 1, 2], [0], [0]]
    assert record["chosen"]["trial"] == 0


def test_halving_under_a_cosine_schedule_trains_each_rung_afresh(tmp_path):
    # A cosine schedule's rates depend on the run's length: a 2-epoch trial is its own run, never the
    # 1-epoch trial extended (which would pass epoch 1 of a 1-epoch schedule for a 2-epoch run's).
    job = make_search(tmp_path, trials=2, halving=2, epochs=2)
    job.base["lr_schedule"] = "cosine"
    scores = {c.run_name(): ([5.0 + i, 1.0 + i], [1.0, 1.0]) for epochs in (1, 2)
              for i, c in enumerate(job.configs(epochs)[1])}
    calls = []
    record = job.run(str(tmp_path), "unused", echo=lambda m: None, executor=ScriptedExecutor(scores, calls))
    (first_rung, (kept,)) = calls
    assert kept[1] == 2 and kept[0] not in {name for name, _ in first_rung}
    assert record["chosen"]["run"] == kept[0]


@pytest.mark.slow
def test_search_resumes_after_an_interrupt_without_retraining_finished_trials(tiny_root, tmp_path, monkeypatch):
    args = ["search", "--dataset", "mnist", "--arch", "fc", "--algo", "fa", "--trials", "4", "--epochs", "2",
            "--halving", "2", "--val-split", "0.25", "--batch-size", "32", "--data-dir", tiny_root,
            "--out", str(tmp_path / "s"), "--quiet", "--threads", "1"]
    real = benchmark.grid.run_cell
    calls = []

    def interrupting(*a, **k):
        calls.append(a[0]["epochs"])
        if len(calls) == 6:  # the second trial of rung 2
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(benchmark.grid, "run_cell", interrupting)
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 1 and "search interrupted; rerun the same command" in first.output
    (folder,) = os.listdir(tmp_path / "s")
    trials = tmp_path / "s" / folder / "trials"
    stamps = {f: os.path.getmtime(trials / f / "record.json") for f in os.listdir(trials)}
    monkeypatch.setattr(benchmark.grid, "run_cell", real)
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "chosen (trial" in second.output
    record = json.load(open(tmp_path / "s" / folder / "search.json"))
    # the counts describe the records, not just what the resumed call trained
    assert [r["status_counts"] for r in record["rungs"]] == [{"complete": 4}, {"complete": 2}]
    losers = set(record["rungs"][0]["trials"]) - set(record["rungs"][0]["kept"])
    assert len(losers) == 2
    for index in losers:  # finished in rung 1 before the interrupt: not trained again
        name = record["trials"][index]["run"]
        assert os.path.getmtime(trials / name / "record.json") == stamps[name]


@pytest.mark.slow
def test_search_then_final_seeds_then_table_shows_the_chosen_settings(tiny_root, tmp_path):
    out = tmp_path / "s"
    result = CliRunner().invoke(cli, ["search", "--dataset", "mnist", "--arch", "fc", "--algo", "dtp-par",
                                      "--trials", "3", "--epochs", "2", "--final-seeds", "2", "--val-split", "0.25",
                                      "--space", "alpha=choice:0.1", "--batch-size", "32", "--data-dir", tiny_root,
                                      "--out", str(out), "--quiet", "--threads", "1"])
    assert result.exit_code == 0, result.output
    (folder,) = os.listdir(out)
    record = json.load(open(out / folder / "search.json"))
    chosen = record["chosen"]
    assert chosen["settings"]["alpha"] == 0.1 and set(chosen["settings"]) == {
        "lr", "beta2", "eps", "alpha", "inverse_lr", "sigma"}
    finals = [json.load(open(out / folder / "final" / f / "record.json")) for f in os.listdir(out / folder / "final")]
    assert sorted(r["seed"] for r in finals) == [1, 2] == record["final"]["seeds"]  # fresh seeds
    assert all(r["config"]["lr"] == chosen["settings"]["lr"] and r["status"] == "complete" for r in finals)
    assert all(r["config"]["rule_options"]["sigma"] == chosen["settings"]["sigma"] for r in finals)
    tables = tmp_path / "tables"
    shown = CliRunner().invoke(cli, ["table", "--runs", str(out), "--out", str(tables)])
    assert shown.exit_code == 0, shown.output
    assert "Chosen settings" in shown.output and f"| {chosen['trial']} |" in shown.output
    # the trials stay out of the results: one dtp-par row, the final seeds' (2 seeds)
    rows = [line for line in shown.output.splitlines() if line.startswith("| dtp-par")]
    assert len(rows) == 1 and "(2)" in rows[0] and "warning" not in shown.output, shown.output
    trials = CliRunner().invoke(cli, ["table", "--runs", str(out / folder / "trials")])
    assert sum(line.startswith("| dtp-par") for line in trials.output.splitlines()) == 3
    assert f"{chosen['settings']['lr']:.3g}" in (tables / "chosen.md").read_text()
    assert (tables / "chosen.csv").exists() and (tables / "chosen.tex").exists()
    drawn = CliRunner().invoke(cli, ["plot", "--runs", str(out), "--out", str(tmp_path / "plots")])
    assert drawn.exit_code == 0 and os.path.getsize(tmp_path / "plots" / "search_mnist_fc.png") > 0, drawn.output


def tiny_fa_search(tiny_root, out, trials):
    """A 1-epoch FA search with the default validation split; its folder and record."""
    result = CliRunner().invoke(cli, ["search", "--algo", "fa", "--trials", str(trials), "--epochs", "1",
                                      "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out), "--quiet",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    (folder,) = os.listdir(out)
    return out / folder, json.load(open(out / folder / "search.json"))


def test_search_holds_out_a_tenth_of_the_training_set_unless_told(tiny_root, tmp_path):
    folder, record = tiny_fa_search(tiny_root, tmp_path / "s", trials=1)
    trial = json.load(open(folder / "trials" / record["chosen"]["run"] / "record.json"))
    assert record["base"]["val_split"] == trial["config"]["val_split"] == 0.1
    assert trial["curves"]["val_error"][0] is not None


@pytest.mark.parametrize("extra,message", [
    (["--lr", "0.01"], "--lr is searched; fix it with --space lr=choice:VALUE"),
    (["--val-split", "0"], "--val-split 0: search chooses on a validation split"),
    (["--algo", "dtp-alt", "--epochs", "1"], "--epochs 1 is too short for dtp-alt"),
    (["--algo", "sdtp-alt", "--epochs", "4", "--halving", "2"], "--min-epochs 1 is too short for sdtp-alt"),
    (["--val-split", "0.2", "--space", "lr=log:-1:2"], "is not one of log:LOW:HIGH"),
    (["--val-split", "0.2", "--algo", "dtp-par", "--rule-opt", "alpha=0.1"], "--rule-opt alpha is searched"),
])
def test_search_bad_input_is_one_line(tiny_root, tmp_path, extra, message):
    result = CliRunner().invoke(cli, ["search", "--algo", "fa", "--trials", "2", "--epochs", "1", "--data-dir",
                                      tiny_root, "--out", str(tmp_path / "s"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "s").exists()


# --- early stopping ------------------------------------------------------------------------
def curves(val):
    return {"epoch": list(range(1, len(val) + 1)), "val_error": val}


def test_early_stop_rule_on_scripted_curves():
    assert early_stop(curves([5, 4, 4.5, 4.2]), 2)["epoch"] == 4
    assert early_stop(curves([5, 4, 4.5, 4.2]), 2)["best_val_epoch"] == 2
    assert early_stop(curves([5, 4, 4.5]), 2) is None
    assert early_stop(curves([5, 4, 4.0]), 1)["epoch"] == 3  # equal is not an improvement
    assert early_stop(curves([5, 4, 3, 2]), 1) is None
    assert early_stop(curves([5, 6, 7]), 0) is None


@pytest.mark.slow
def test_run_stops_at_the_right_epoch_and_says_why(tiny_root, tmp_path, monkeypatch):
    import benchmark.train as train
    script = iter([9.0, 7.0, 8.0, 7.5, 6.0])  # validation errors of epochs 1..5
    real = train.error_and_loss

    def scripted(model, split, normalize, batch_size):
        error, loss = real(model, split, normalize, batch_size)
        return (next(script), loss) if split is trainer.val else (error, loss)
    monkeypatch.setattr(train, "error_and_loss", scripted)
    config = RunConfig(dataset="mnist", arch="fc", rule="bp", epochs=10, batch_size=32, val_split=0.25,
                       patience=2)
    trainer = Trainer(config, data_dir=tiny_root, progress=False).prepare()
    record = trainer.run(str(tmp_path / "run"))
    assert record["status"] == "complete" and record["summary"]["epochs_done"] == 4
    assert record["early_stop"]["epoch"] == 4 and record["early_stop"]["best_val_epoch"] == 2
    assert "did not improve for 2 epoch(s) after epoch 2" in record["early_stop"]["reason"]
    assert benchmark.grid.cell_state(str(tmp_path / "run"), 10) == "complete"  # a grid will not extend it


@pytest.mark.slow
def test_grid_from_search_trains_the_chosen_settings_with_fresh_seeds(tiny_root, tmp_path):
    chosen = tiny_fa_search(tiny_root, tmp_path / "s", trials=3)[1]["chosen"]
    args = ["grid", "--from-search", str(tmp_path / "s"), "--epochs", "2", "--seeds", "2", "--data-dir", tiny_root,
            "--out", str(tmp_path / "g"), "--threads", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "grid finished: 2 complete" in result.output, result.output
    # each cell's line leads with what a search uses, in two decimals
    assert re.search(r"complete: validation error \d+\.\d\d% \(best \d+\.\d\d%\), test error", result.output)
    records = [json.load(open(tmp_path / "g" / f / "record.json")) for f in sorted(os.listdir(tmp_path / "g"))]
    assert sorted(r["seed"] for r in records) == [1, 2]
    for record in records:
        config = record["config"]
        assert (config["lr"], config["beta2"], config["eps"]) == tuple(chosen["settings"][k]
                                                                      for k in ("lr", "beta2", "eps"))
        assert config["epochs"] == 2 and config["batch_size"] == 32 and config["val_split"] == 0.1
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "grid finished: nothing to do" in again.output, again.output


@pytest.mark.parametrize("extra,message", [
    (["--lr", "0.01"], "--lr cannot be combined with --from-search"),
    (["--algos", "bp"], "--algos cannot be combined with --from-search"),
    ([], "no finished search there"),
])
def test_grid_from_search_bad_input_is_one_line(tiny_root, tmp_path, extra, message):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["grid", "--from-search", str(tmp_path / "empty"), "--data-dir", tiny_root,
                                      "--out", str(tmp_path / "g"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "g").exists()
