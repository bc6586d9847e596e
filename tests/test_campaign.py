"""The Table 1 campaign's presets (one command per block) and its progress
table in core-hours."""
import json
import os

from click.testing import CliRunner

from benchmark.campaign import campaign_markdown, campaign_rows, cell_records
from benchmark.cluster import grid_status
from benchmark.grid import PRESETS, TABLE1_RULES, grid_cells
from cli import cli


def test_a_campaign_preset_brings_its_epochs_validation_split_and_folder(tiny_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["grid", "--preset", "table1-mnist-fc", "--algos", "bp", "--seeds", "1",
                                      "--epochs", "1", "--batch-size", "32", "--quiet", "--data-dir", tiny_root],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = tmp_path / PRESETS["table1-mnist-fc"]["settings"]["out"]
    (folder,) = os.listdir(out)
    record = json.load(open(out / folder / "record.json"))
    # --epochs was typed, so it wins; the preset's validation split was not.
    assert record["config"]["epochs"] == 1 and record["config"]["val_split"] == 0.1
    assert folder.startswith("mnist-fc-bp-seed0")


def test_the_preset_length_decides_when_a_cell_is_done(tmp_path):
    from helpers import fake_record
    cells = grid_cells(["mnist"], ["fc"], ["bp"], [0], {"epochs": 100, "val_split": 0.1})
    run_dir = tmp_path / cells[0].run_name()
    run_dir.mkdir()
    record = fake_record("mnist", "fc", "bp", 0, [5.0] * 60, val_split=0.1)
    (run_dir / "record.json").write_text(json.dumps(record))
    status = CliRunner().invoke(cli, ["grid", "--preset", "table1-mnist-fc", "--algos", "bp", "--seeds", "1",
                                      "--status", str(tmp_path)])
    assert "complete: 0" in status.output  # 60 of the preset's 100 epochs
    status = CliRunner().invoke(cli, ["grid", "--preset", "table1-mnist-fc", "--algos", "bp", "--seeds", "1",
                                      "--epochs", "60", "--status", str(tmp_path)])
    assert "complete: 1" in status.output


def test_a_selection_outside_the_preset_is_one_line(tmp_path):
    for args, words in ((["--algos", "bp,ldrl"], "'ldrl' is not in preset 'table1-mnist-fc'"),
                        (["--archs", "lc"], "'lc' is not in preset 'table1-mnist-fc'"),
                        (["--datasets", "cifar10-jpeg"], "'cifar10-jpeg' is not in preset")):
        result = CliRunner().invoke(cli, ["grid", "--preset", "table1-mnist-fc", *args, "--status", str(tmp_path)])
        assert result.exit_code == 2 and words in result.output
        assert result.output.count("\n") == 1, result.output


def test_an_unknown_preset_is_one_line():
    result = CliRunner().invoke(cli, ["grid", "--preset", "table2"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "'table2' is not one of" in result.output, result.output


def test_the_campaign_blocks_are_table_1s_cells():
    assert PRESETS["table1-mnist-fc"]["rules"] == TABLE1_RULES
    assert PRESETS["table1-mnist-lc"]["rules"] == [r for r in TABLE1_RULES if "dtp" in r]
    assert PRESETS["table1-cifar10-fc"]["archs"] == ["fc"]


def test_grid_cells_run_every_cells_first_seed_first():
    cells = grid_cells(["mnist"], ["fc"], ["bp", "fa"], [0, 1], {"epochs": 1})
    assert [(c.rule, c.seed) for c in cells] == [("bp", 0), ("fa", 0), ("bp", 1), ("fa", 1)]


def test_campaign_rows_count_core_hours_spent_and_to_go(tmp_path):
    from helpers import fake_record
    cells = grid_cells(["mnist"], ["fc"], ["bp", "fa"], [0, 1], {"epochs": 10})
    runs = {("bp", 0): (10, "complete", 3600.0, 2), ("bp", 1): (4, "running", 1200.0, 1),
            ("fa", 0): (5, "running", 900.0, 1)}
    for cell in cells:
        if (cell.rule, cell.seed) not in runs:
            continue
        epochs, status, wall, threads = runs[(cell.rule, cell.seed)]
        record = fake_record("mnist", "fc", cell.rule, cell.seed, [5.0] * epochs, status=status, epochs_asked=10)
        record.update(wall_seconds=wall, host={"torch_threads": threads})
        (tmp_path / cell.run_name()).mkdir()
        (tmp_path / cell.run_name() / "record.json").write_text(json.dumps(record))
    records = cell_records(str(tmp_path), cells)
    rows = {r["rule"]: r for r in campaign_rows(records, cells, grid_status(str(tmp_path), cells))}
    # bp: 2 threads x 1 h + 1200 s; the running seed has 6 epochs left at its own 300 s an epoch.
    assert (rows["bp"]["done"], rows["bp"]["to do"]) == (1, 1)
    assert abs(rows["bp"]["core_hours"] - (2 + 1 / 3)) < 1e-9
    assert abs(rows["bp"]["core_hours_to_go"] - 6 * 300 / 3600) < 1e-9
    # fa: seed 1 not started, costed at seed 0's 180 s an epoch: 5 + 10 epochs left.
    assert abs(rows["fa"]["core_hours_to_go"] - 15 * 180 / 3600) < 1e-9
    table = campaign_markdown(list(rows.values()))
    assert "| mnist | fc | fa | 0 | 0 | 2 | 0.25 | 0.75 |" in table
    assert table.splitlines()[-1].startswith("| **total** | | | 1 | 0 | 3 |")


def test_convergence_rows_say_where_each_seed_bottomed_out_beside_the_paper(tmp_path):
    from benchmark.campaign import convergence_markdown, convergence_rows
    from helpers import fake_record
    cells = grid_cells(["mnist"], ["fc"], ["bp"], [0, 1, 2], {"epochs": 20})
    errors = [3.0 - 0.1 * i for i in range(20)]
    vals = {0: [5.0 - 0.1 * i for i in range(20)],                 # still improving at epoch 20
            1: [5.0 - 0.1 * i for i in range(5)] + [5.0] * 15,      # bottomed out at epoch 5
            2: None}                                                # not complete: left out
    for cell in cells:
        record = fake_record("mnist", "fc", "bp", cell.seed, errors, val=vals[cell.seed],
                             status="complete" if vals[cell.seed] else "running")
        (tmp_path / cell.run_name()).mkdir()
        (tmp_path / cell.run_name() / "record.json").write_text(json.dumps(record))
    (row,) = convergence_rows(cell_records(str(tmp_path), cells), cells)
    assert row["seeds"] == 2 and row["best_val_epochs"] == [20, 5] and row["still_falling"] == 1
    assert abs(row["test_at_best_val"] - (errors[19] + errors[4]) / 2) < 1e-9
    assert row["paper"] == 1.48  # Bartunov et al.'s MNIST FC BP
    assert "| mnist | fc | bp | 2 | 20 | 20, 5 | 1/2 |" in convergence_markdown([row])


def test_a_presets_published_per_cell_settings_reach_only_their_rule():
    cells = grid_cells(["mnist"], ["fc"], ["bp", "dtp-par"], [0], {"epochs": 1, "lr": 3e-4},
                       rule_settings=PRESETS["table1-mnist-fc"]["rule_settings"])
    assert {c.rule: c.lr for c in cells} == {"bp": 3e-4, "dtp-par": 7.6e-4}


def test_a_typed_lr_wins_over_the_presets_per_cell_lr(tmp_path):
    default = CliRunner().invoke(cli, ["grid", "--preset", "table1-mnist-fc", "--algos", "dtp-par", "--seeds", "1",
                                       "--status", str(tmp_path)])
    typed = CliRunner().invoke(cli, ["grid", "--preset", "table1-mnist-fc", "--algos", "dtp-par", "--seeds", "1",
                                     "--lr", "3e-4", "--status", str(tmp_path)])
    expected = grid_cells(["mnist"], ["fc"], ["dtp-par"], [0], {"epochs": 100, "val_split": 0.1, "lr": 3e-4})
    assert expected[0].run_name() in typed.output and expected[0].run_name() not in default.output


def test_a_presets_rule_variants_run_one_rule_once_per_option_set():
    variants = PRESETS["vit-mnist"]["rule_variants"]
    cells = grid_cells(["mnist"], ["vit"], ["bp", "dfa", "kp"], [0], {"epochs": 1}, rule_variants=variants)
    assert [(c.rule, c.rule_options.get("placement"), c.weight_decay) for c in cells] == [
        ("bp", None, 0.0), ("bp", None, 1e-4),  # kp's decay brings its BP control
        ("dfa", "layer", 0.0), ("dfa", "block", 0.0), ("kp", None, 1e-4)]
    assert len({c.run_name() for c in cells}) == 5
    # A typed rule option wins over the variants: both collapse into one cell.
    typed = grid_cells(["mnist"], ["vit"], ["dfa"], [0], {"epochs": 1}, {"placement": "block"}, rule_variants=variants)
    assert [c.rule_options for c in typed] == [{"placement": "block"}]
    # Two spellings of one setting (the default, and named) are one cell.
    same = grid_cells(["mnist"], ["vit"], ["dfa"], [0], {"epochs": 1},
                      rule_variants={"dfa": [{}, {"placement": "layer"}]})
    assert len(same) == 1


def test_the_campaign_tables_tell_a_rules_variants_apart(tmp_path):
    result = CliRunner().invoke(cli, ["grid", "--preset", "vit-mnist", "--seeds", "2", "--status", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "missing: 16" in result.output
    for label in ("dfa (placement=layer)", "dfa (placement=block)", "bp (weight_decay=0)",
                  "bp (weight_decay=0.0001)", "fa"):
        assert f"| mnist | vit | {label} | 0 | 0 | 2 |" in result.output, result.output


def test_a_short_run_is_still_falling_only_if_it_improved_in_its_last_quarter():
    from benchmark.campaign import recent_epochs
    assert [recent_epochs(n) for n in (100, 40, 20, 10, 3)] == [10, 10, 5, 2, 1]


def test_rows_no_seed_has_started_are_costed_at_their_schedules_siblings_rate(tmp_path):
    # On one net, the parallel TP rules cost about the same per epoch, and the
    # alternating ones about the same: a rule not yet started borrows that
    # rate, marked "~", never another family's (BP's epochs are 5x cheaper);
    # a rule with no sibling of its schedule stays "?".
    from helpers import fake_record
    cells = grid_cells(["mnist"], ["lc"], ["bp", "dtp-par", "sdtp-par", "dtp-alt", "sdtp-alt"], [0],
                       {"epochs": 10})
    for rule, seconds in (("bp", 18.0), ("dtp-par", 90.0)):
        run = next(c for c in cells if c.rule == rule)
        record = fake_record("mnist", "lc", rule, 0, [5.0] * 4, status="running", epochs_asked=10)
        record.update(wall_seconds=4 * seconds, host={"torch_threads": 1})
        (tmp_path / run.run_name()).mkdir()
        (tmp_path / run.run_name() / "record.json").write_text(json.dumps(record))
    rows = {r["rule"]: r for r in campaign_rows(cell_records(str(tmp_path), cells), cells,
                                                  grid_status(str(tmp_path), cells))}
    assert abs(rows["dtp-par"]["core_hours_to_go"] - 6 * 90 / 3600) < 1e-9 and not rows["dtp-par"]["borrowed"]
    assert abs(rows["sdtp-par"]["core_hours_to_go"] - 10 * 90 / 3600) < 1e-9 and rows["sdtp-par"]["borrowed"]
    assert rows["dtp-alt"]["core_hours_to_go"] is None and rows["sdtp-alt"]["core_hours_to_go"] is None
    table = campaign_markdown(list(rows.values()))
    assert "| mnist | lc | sdtp-par | 0 | 0 | 1 | 0.00 | ~0.25 |" in table
    assert "| mnist | lc | dtp-alt | 0 | 0 | 1 | 0.00 | ? |" in table
    assert table.splitlines()[-3].endswith("| ? |")  # the total: not all rows can be costed
    assert "~: no seed of the row has trained an epoch" in table
