"""Search selection on scripted curves whose best validation epoch is not the
last, successive halving with trial counts eta does not divide, and the
per-trial independence of the drawn settings."""
import json
import math
import os

import numpy as np
import pytest

from benchmark.search import Search, best_validation_error, choose, sample_trials, search_space
from helpers import fake_record


def make_search(trials, epochs, halving=0, search_seed=3):
    return Search(dataset="mnist", arch="fc", rule="fa", trials=trials, epochs=epochs,
                  search_seed=search_seed, space=search_space("fa"),
                  base={"batch_size": 32, "val_split": 0.25}, rule_options={}, halving=halving, min_epochs=1)


class ScriptedExecutor:
    """Stand-in for an executor: writes each trial's record with the first
    ``epochs`` values of its scripted validation curve; ``calls`` gets the
    trial indices and epochs of every call."""

    def __init__(self, curves, calls):
        self.curves, self.calls = curves, calls

    def run(self, cells, out, data_dir):
        curves, calls = self.curves, self.calls
        calls.append([(curves[cell.run_name()][0], cell.epochs) for cell in cells])
        for cell in cells:
            _, val = curves[cell.run_name()]
            path = os.path.join(out, cell.run_name(), "record.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                json.dump(fake_record("mnist", "fc", "fa", 0, [1.0] * cell.epochs, val=val[:cell.epochs]), handle)
        return {"complete": len(cells)}


def run_scripted(tmp_path, job, val_curves):
    """Run ``job`` with trial i's validation curve ``val_curves[i]``."""
    _, configs = job.configs(job.epochs)
    curves = {config.run_name(): (i, val) for i, (config, val) in enumerate(zip(configs, val_curves))}
    calls = []
    record = job.run(str(tmp_path), "unused", echo=lambda message: None,
                     executor=ScriptedExecutor(curves, calls))
    return record, calls


def test_best_validation_error_is_the_lowest_over_epochs_not_the_last():
    def record(status, val):
        return {"status": status, "curves": {"val_error": val}}
    assert best_validation_error(record("complete", [None, 6.0, 2.5, 7.0])) == 2.5
    assert best_validation_error(record("diverged", [3.0])) == math.inf
    assert best_validation_error(record("complete", [None])) == math.inf
    assert choose([4.0, 2.0, 3.0, 2.0]) == 1  # a tie goes to the earlier trial


def test_search_chooses_the_trial_with_the_lowest_validation_error_at_any_epoch(tmp_path):
    job = make_search(trials=3, epochs=3)
    record, _ = run_scripted(tmp_path, job, [
        [6.0, 2.0, 7.0],   # lowest of all at epoch 2, but the worst last value
        [5.0, 4.0, 3.0],   # the lowest last value
        [4.0, 3.5, 8.0],
    ])
    assert [t["best_val_error"] for t in record["trials"]] == [2.0, 3.0, 3.5]
    assert record["chosen"]["trial"] == 0 and record["chosen"]["best_val_error"] == 2.0


def test_successive_halving_keeps_ceil_of_a_third_of_seven_then_one(tmp_path):
    job = make_search(trials=7, epochs=9, halving=3)  # rungs of 1, 3 and 9 epochs
    record, calls = run_scripted(tmp_path, job, [
        [50.0] * 9,
        [20.0, 5.0, 12.0] + [11.0] * 6,  # best over 3 epochs (5), though not last at epoch 3
        [30.0, 7.0, 6.0] + [9.0] * 6,    # the lowest value at epoch 3
        [60.0] * 9,
        [10.0, 9.0, 8.0] + [8.0] * 6,
        [30.0] * 9,                      # ties trial 2 at epoch 1 and loses: the earlier trial stays
        [40.0] * 9,
    ])
    # rung 1: ceil(7 / 3) = 3 of 7 stay; rung 2: ceil(3 / 3) = 1
    assert [sorted(rung["trials"]) for rung in record["rungs"]] == [[0, 1, 2, 3, 4, 5, 6], [1, 2, 4], [1]]
    assert [sorted(rung["kept"]) for rung in record["rungs"]] == [[1, 2, 4], [1], [1]]
    assert [sorted(calls_of_rung) for calls_of_rung in calls] == [
        [(i, 1) for i in range(7)], [(1, 3), (2, 3), (4, 3)], [(1, 9)]]
    assert record["chosen"]["trial"] == 1 and record["chosen"]["best_val_error"] == 5.0
    # every trial's score is the best of the epochs it ran
    assert [t["best_val_error"] for t in record["trials"]] == [50.0, 5.0, 6.0, 60.0, 8.0, 30.0, 40.0]
    assert [t["epochs"] for t in record["trials"]] == [1, 9, 3, 1, 3, 1, 1]


def test_successive_halving_rounds_five_halves_up_twice(tmp_path):
    job = make_search(trials=5, epochs=4, halving=2)  # rungs of 1, 2 and 4 epochs
    record, _ = run_scripted(tmp_path, job, [[10.0 + i, 10.0 - i, 10.0 - i, 1.0 + i] for i in range(5)])
    # rung 1 (epoch 1): 0, 1, 2 lead; rung 2 (best of two epochs): 2 (8) and 1 (9);
    # rung 3 (best of four): trial 1 (2) beats trial 2 (3)
    assert [sorted(rung["kept"]) for rung in record["rungs"]] == [[0, 1, 2], [1, 2], [1, 2]]
    assert record["chosen"]["trial"] == 1 and record["chosen"]["best_val_error"] == 2.0


# --- drawing the settings ----------------------------------------------------------------------
OPTIMIZER_ONLY = search_space("fa")  # beta2, eps and lr


def test_trial_i_is_drawn_from_its_own_generator_seeded_by_search_seed_and_i():
    assert sorted(OPTIMIZER_ONLY) == ["beta2", "eps", "lr"]
    trials = sample_trials(OPTIMIZER_ONLY, 5, search_seed=11)
    for index, trial in enumerate(trials):
        rng = np.random.default_rng([11, index])
        # the settings in name order, each with its own kind of draw
        beta2 = (0.99, 0.999)[int(rng.integers(2))]
        eps = (1e-4, 1e-6, 1e-8)[int(rng.integers(3))]
        lr = math.exp(rng.uniform(math.log(1e-5), math.log(3e-3)))
        assert trial == {"beta2": beta2, "eps": eps, "lr": lr}, index


def test_trials_do_not_depend_on_each_other_or_on_how_many_are_drawn():
    five = sample_trials(OPTIMIZER_ONLY, 5, search_seed=11)
    assert sample_trials(OPTIMIZER_ONLY, 3, search_seed=11) == five[:3]
    assert len({t["lr"] for t in five}) == 5  # two trials never share their draws
    other_seed = sample_trials(OPTIMIZER_ONLY, 5, search_seed=12)
    assert all(a["lr"] != b["lr"] for a in five for b in other_seed)  # not a shifted copy either
    space = search_space("dtp-par")
    assert sample_trials(space, 4, search_seed=11)[3] == sample_trials(space, 9, search_seed=11)[3]


@pytest.mark.parametrize("seed", [0, 7])
def test_a_search_trains_the_settings_its_trials_were_drawn_with(seed):
    job = make_search(trials=4, epochs=1, search_seed=seed)
    params, configs = job.configs(1)
    assert params == sample_trials(job.space, 4, seed)
    for trial, config in zip(params, configs):
        assert (config.lr, config.beta2, config.eps) == (trial["lr"], trial["beta2"], trial["eps"])
