"""Tables, plots, citations and grids, from fixture records."""
import json
import os
import re
import statistics

import pytest
from click.testing import CliRunner

from benchmark.io import write_json
from benchmark.results import load_runs
from benchmark.tables import summarize_runs, to_latex, to_markdown
from cli import cli
from helpers import fake_record


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    cells = {
        ("mnist", "fc", "bp"): [[3.0, 2.0], [2.5, 2.4], [2.2, 2.6]],
        ("mnist", "fc", "fa"): [[4.0, 3.0], [3.5, 3.2]],  # one seed short
        ("mnist", "lc", "bp"): [[2.0, 1.5], [1.8, 1.6], [1.7, 1.9]],
    }
    for (d, a, r), seeds in cells.items():
        for seed, errors in enumerate(seeds):
            write_json(str(root / f"{d}-{a}-{r}-{seed}" / "record.json"), fake_record(d, a, r, seed, errors))
    write_json(str(root / "div" / "record.json"), fake_record("mnist", "fc", "fa", 2, [5.0], status="diverged",
                                                                  epochs_asked=2))
    write_json(str(root / "lc-fa-0" / "record.json"), fake_record("mnist", "lc", "fa", 0, [9.0], status="running"))
    return root


def test_table_numbers_equal_hand_computed_means_and_flags(runs_dir):
    runs, bad = load_runs([str(runs_dir)])
    assert bad == []
    summary = summarize_runs(runs, metric="best")
    row = summary[(summary.arch == "fc") & (summary.rule == "bp")].iloc[0]
    assert row["mean"] == pytest.approx(statistics.mean([2.0, 2.4, 2.2]))
    assert row["std"] == pytest.approx(statistics.stdev([2.0, 2.4, 2.2]))
    assert row["n"] == 3 and row["flag"] == ""
    assert row["paper"] == 1.48 and row["diff"] == pytest.approx(row["mean"] - 1.48)
    fa = summary[(summary.arch == "fc") & (summary.rule == "fa")].iloc[0]
    assert fa["n"] == 2 and fa["diverged"] == 1 and "2/3 seeds" in fa["flag"] and "1 diverged" in fa["flag"]
    assert fa["mean"] == pytest.approx(statistics.mean([3.0, 3.2]))  # the diverged run is not averaged in
    lc_fa = summary[(summary.arch == "lc") & (summary.rule == "fa")].iloc[0]
    assert lc_fa["n"] == 0 and "1 unfinished" in lc_fa["flag"]
    final = summarize_runs(runs, metric="final")
    assert final[(final.arch == "lc") & (final.rule == "bp")].iloc[0]["mean"] == pytest.approx(
        statistics.mean([1.5, 1.6, 1.9]))
    markdown = to_markdown(summary)
    assert "| bp | 2.20 ± 0.20 (3); paper 1.48 (+0.72) |" in markdown
    assert "[2/3 seeds; 1 diverged]" in markdown and "n/a" in markdown


def test_latex_is_balanced_booktabs(runs_dir):
    latex = to_latex(summarize_runs(load_runs([str(runs_dir)])[0]))
    assert latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == 1
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert latex.count(rule) == 1
    assert latex.count("{") == latex.count("}")
    body = [line for line in latex.splitlines() if line.endswith(r"\\")]
    columns = {line.count("&") for line in body}
    assert len(columns) == 1  # every row has the same number of cells
    assert "%" not in latex.replace(r"\%", "").split("\n", 1)[1]  # only escaped percent signs after the comment


def test_table_command_writes_all_formats_and_skips_bad_records(runs_dir, tmp_path):
    (runs_dir / "broken").mkdir()
    (runs_dir / "broken" / "record.json").write_text('{"schema": "biobench.run/1", "status": ')
    (runs_dir / "empty").mkdir()
    (runs_dir / "empty" / "record.json").write_text("")
    (runs_dir / "other").mkdir()
    (runs_dir / "other" / "record.json").write_text('{"hello": 1}')
    out = tmp_path / "tables"
    result = CliRunner().invoke(cli, ["table", "--runs", str(runs_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("broken", "empty", "other"):
        assert os.path.join(str(runs_dir), name, "record.json") in result.output
    for name in ("table_best.md", "table_best.csv", "table_best.tex", "params.md", "params.csv", "params.tex"):
        assert (out / name).stat().st_size > 0
    strict = CliRunner().invoke(cli, ["table", "--runs", str(runs_dir), "--strict"])
    assert strict.exit_code == 1 and "record.json" in strict.output


@pytest.mark.slow
def test_plot_command_writes_png_and_pdf(runs_dir, tmp_path):
    out = tmp_path / "plots"
    result = CliRunner().invoke(cli, ["plot", "--runs", str(runs_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = set(os.listdir(out))
    for stem in ("bars_best", "curves_mnist", "alignment_mnist_fc", "params_vs_error_best"):
        for ext in ("png", "pdf"):
            assert f"{stem}.{ext}" in names and (out / f"{stem}.{ext}").stat().st_size > 1000
    assert (out / "bars_best.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "bars_best.pdf").read_bytes()[:4] == b"%PDF"


def parse_bibtex_keys(text):
    entries = re.findall(r"@(\w+)\{([^,\s]+),", text)
    assert text.count("{") == text.count("}")
    return [key for _, key in entries]


def test_cite_emits_bibtex_for_rules_in_the_table(runs_dir):
    result = CliRunner().invoke(cli, ["cite", "--runs", str(runs_dir)])
    assert result.exit_code == 0
    keys = parse_bibtex_keys(result.output)
    assert keys[:2] == ["biobench", "bartunov2018"]
    assert "lillicrap2016" in keys and "rumelhart1986" in keys and "nokland2016" not in keys
    every = parse_bibtex_keys(CliRunner().invoke(cli, ["cite"]).output)
    assert {"nokland2016", "kolen1994", "akrout2019", "liao2016", "moskovitz2018"} <= set(every)
    text = CliRunner().invoke(cli, ["cite", "--algos", "dfa", "--format", "text"]).output
    assert "[nokland2016] Nøkland, Arild (2016)" in text


@pytest.mark.slow
def test_grid_skips_complete_cells_and_reruns_missing(tiny_root, tmp_path):
    out = tmp_path / "grid"
    args = ["grid", "--datasets", "mnist", "--archs", "fc", "--algos", "bp,fa", "--seeds", "2", "--epochs", "1",
            "--batch-size", "32", "--data-dir", tiny_root, "--out", str(out)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "grid finished: 4 complete" in first.output
    folders = sorted(os.listdir(out))
    assert len(folders) == 4
    stamps = {f: os.path.getmtime(out / f / "record.json") for f in folders}
    removed = folders[1]
    for name in os.listdir(out / removed):
        os.unlink(out / removed / name)
    os.rmdir(out / removed)
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "4 cells, 3 already done, 1 to run" in second.output
    assert "grid finished: 1 complete" in second.output
    for f in folders:
        if f != removed:
            assert os.path.getmtime(out / f / "record.json") == stamps[f]
    assert json.load(open(out / removed / "record.json"))["status"] == "complete"


@pytest.mark.slow
def test_grid_records_a_failing_cell_and_continues(tiny_root, tmp_path, monkeypatch):
    from models.rules.kp import KolenPollack

    def broken(self):
        raise RuntimeError("simulated failure")
    monkeypatch.setattr(KolenPollack, "after_step", broken)
    out = tmp_path / "grid"
    result = CliRunner().invoke(cli, ["grid", "--datasets", "mnist", "--archs", "fc", "--algos", "kp,bp",
                                      "--seeds", "1", "--epochs", "1", "--batch-size", "32",
                                      "--data-dir", tiny_root, "--out", str(out)])
    assert result.exit_code == 1
    assert "failed: RuntimeError: simulated failure" in result.output
    # bp twice: at weight decay 0 and as the control at kp's 1e-4
    assert "2 complete" in result.output and "1 failed" in result.output
    failed = [f for f in os.listdir(out) if os.path.exists(out / f / "error.txt")]
    assert len(failed) == 1 and "-kp-" in failed[0]


@pytest.mark.slow
def test_grid_rule_options_go_to_the_rules_that_know_them(tiny_root, tmp_path):
    base = ["grid", "--datasets", "mnist", "--archs", "fc", "--seeds", "1", "--epochs", "1", "--batch-size", "32",
            "--data-dir", tiny_root, "--out", str(tmp_path / "g")]
    bad = CliRunner().invoke(cli, base + ["--algos", "bp,fa", "--rule-opt", "alpha=0.1"])
    assert bad.exit_code == 2 and "alpha not known to any of bp, fa" in bad.output
    ok = CliRunner().invoke(cli, base + ["--algos", "bp,dtp-par", "--rule-opt", "alpha=0.05"])
    assert ok.exit_code == 0, ok.output
    records = [json.load(open(tmp_path / "g" / f / "record.json")) for f in os.listdir(tmp_path / "g")]
    options = {r["config"]["algo"]: r["config"]["rule_options"] for r in records}
    assert options == {"bp": {}, "dtp-par": {"alpha": 0.05}}


@pytest.mark.slow
def test_grid_runs_a_bp_control_at_kolen_pollacks_weight_decay(tiny_root, tmp_path):
    base = ["grid", "--datasets", "mnist", "--archs", "fc", "--seeds", "1", "--epochs", "1", "--batch-size", "32",
            "--data-dir", tiny_root, "--out", str(tmp_path / "g"), "--algos", "bp,fa,kp"]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 0, result.output
    records = [json.load(open(tmp_path / "g" / f / "record.json")) for f in os.listdir(tmp_path / "g")]
    cells = sorted((r["config"]["algo"], r["config"]["weight_decay"]) for r in records)
    assert cells == [("bp", 0.0), ("bp", 1e-4), ("fa", 0.0), ("kp", 1e-4)]
    table = CliRunner().invoke(cli, ["table", "--runs", str(tmp_path / "g")])
    labels = [line.split("|")[1].strip() for line in table.output.splitlines() if line.startswith("| ")][1:]
    assert labels == ["bp (weight_decay=0)", "bp (weight_decay=0.0001)", "fa", "kp"]


def test_table_prints_the_papers_target_propagation_numbers(tmp_path):
    root = tmp_path / "tp"
    for algo, errors in (("dtp-alt", [3.0]), ("aosdtp-par", [4.0]), ("ldrl", [5.0])):
        write_json(str(root / algo / "record.json"), fake_record("mnist", "lc", algo, 0, errors))
    result = CliRunner().invoke(cli, ["table", "--runs", str(root)])
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip(): line for line in result.output.splitlines() if line.startswith("| ")}
    assert "paper 1.46 (+1.54)" in rows["dtp-alt"]  # Bartunov et al. Table 1, MNIST LC
    assert "paper 1.92 (+2.08)" in rows["aosdtp-par"]
    assert "paper" not in rows["ldrl"]  # not in the paper


def test_table_never_averages_unlike_runs_and_counts_a_seed_once(tmp_path):
    root = tmp_path / "mixed"
    base = dict(lr=3e-4, train_subset=0, rule_options={})
    records = {
        "a0": fake_record("mnist", "fc", "fa", 0, [5.0, 4.0], **base),
        "a1": fake_record("mnist", "fc", "fa", 1, [5.0, 4.4], **base),
        "a1-again": fake_record("mnist", "fc", "fa", 1, [6.0, 5.0], **base),  # the same seed rerun
        "b0": fake_record("mnist", "fc", "fa", 0, [90.0, 80.0], **dict(base, lr=0.1)),
        "c0": fake_record("mnist", "fc", "fa", 0, [30.0], **dict(base, train_subset=2000)),
    }
    records["a1-again"]["finished_at"] = "2026-01-02T00:00:00+00:00"
    records["a1"]["finished_at"] = "2026-01-01T00:00:00+00:00"
    for name, record in records.items():
        write_json(str(root / name / "record.json"), record)
    result = CliRunner().invoke(cli, ["table", "--runs", str(root)])
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in result.output.splitlines() if line.startswith("| ") and "rule" not in line}
    assert set(rows) == {"fa (epochs=2, lr=0.0003, train_subset=0)", "fa (epochs=2, lr=0.1, train_subset=0)",
                         "fa (epochs=1, lr=0.0003, train_subset=2000)"}
    # seed 1 counted once: the later of its two complete records (best errors 4.0 and 5.0)
    assert rows["fa (epochs=2, lr=0.0003, train_subset=0)"].startswith("4.50 ± 0.71 (2); paper 1.85 (+2.65)")
    assert "seed 1 of mnist fc" in result.output and os.path.join("a1-again", "record.json") in result.output
    assert rows["fa (epochs=2, lr=0.1, train_subset=0)"].startswith("80.00 (1); paper 1.85 (+78.15)")
    assert rows["fa (epochs=1, lr=0.0003, train_subset=2000)"] == \
        "30.00 (1); paper 1.85 (not comparable: trained on a subset) [1/2 seeds]"


def test_val_metric_says_when_runs_have_no_validation_split(runs_dir):
    result = CliRunner().invoke(cli, ["table", "--runs", str(runs_dir), "--metric", "val"])
    assert result.exit_code == 0
    assert "no validation split" in result.output


def test_every_registered_rule_is_complete_everywhere():
    """The registry is the one list of rules: presets, table order, plot
    colours and citations all follow it."""
    from benchmark import cite
    from benchmark.grid import PRESETS
    from benchmark.plots import UNKNOWN_RULE_COLOUR, colour
    from benchmark.results import RULE_ORDER
    from models import RULES
    assert RULE_ORDER == RULES.registered(plugins=False)
    assert PRESETS["bartunov-mnist"]["rules"] == RULES.registered(plugins=False)
    colours = set()
    for name in RULES.registered(plugins=False):
        rule = RULES.get(name)
        assert rule.name == name and rule.title, name
        assert rule.citations and all(cite.entry(key)["title"] for key in rule.citations), name
        assert colour(name) == rule.colour != UNKNOWN_RULE_COLOUR, name
        colours.add(rule.colour)
    assert len(colours) == len(RULE_ORDER)  # every rule tells apart in a plot


def test_rule_metrics_plot_draws_pc_energies_per_layer_and_only_where_recorded(tmp_path):
    from benchmark.plots import family_metrics_plot
    root = tmp_path / "runs"
    for seed in (0, 1):
        record = fake_record("mnist", "fc", "pc", seed, [9.0, 8.0])
        for epoch in record["alignment"]:
            epoch["layers"] = [dict(layer, energy_before=0.0 if layer["layer"] < 2 else 2.0,
                                    energy_after=0.1 * (layer["layer"] + 1)) for layer in epoch["layers"]]
        write_json(str(root / f"pc-{seed}" / "record.json"), record)
    write_json(str(root / "fa" / "record.json"), fake_record("mnist", "lc", "fa", 0, [9.0, 8.0]))
    runs, _ = load_runs([str(root)])
    paths = family_metrics_plot(runs, str(tmp_path / "plots"))
    assert sorted(os.path.basename(p) for p in paths) == ["rule_metrics_mnist_fc.pdf", "rule_metrics_mnist_fc.png"]
    assert all(os.path.getsize(p) > 0 for p in paths)


def test_at_epoch_compares_runs_of_different_lengths_as_they_stood_then(tmp_path):
    root = tmp_path / "runs"
    long = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    val = [6.0, 4.5, 4.8, 3.0, 2.0, 1.0]
    write_json(str(root / "long" / "record.json"), fake_record("mnist", "lc", "bp", 0, long, val=val))
    write_json(str(root / "short" / "record.json"), fake_record("mnist", "fc", "bp", 0, [4.0, 3.5, 3.6], val=val[:3]))
    write_json(str(root / "cut" / "record.json"), fake_record("mnist", "conv", "bp", 0, [4.0, 3.9], status="running",
                                                              val=val[:2], epochs_asked=6))
    write_json(str(root / "cos" / "record.json"), fake_record("mnist", "conv", "fa", 0, long, val=val,
                                                              lr_schedule="cosine"))
    runs, _ = load_runs([str(root)], at_epoch=3)
    by_arch = {(r.arch, r.rule): r for r in runs.itertuples()}
    lc = by_arch[("lc", "bp")]
    # Epochs 1-3 of the long run: best 3.0, final 3.0, best validation at epoch 2 (test 4.0).
    assert (lc.status, lc.best, lc.final, lc.val, lc.epochs) == ("complete", 3.0, 3.0, 4.0, 3)
    assert by_arch[("fc", "bp")].status == "complete" and by_arch[("conv", "bp")].status == "short"
    # Cut at 3, the fc and lc runs are the same setting: one label.
    assert by_arch[("fc", "bp")].label == lc.label == "bp"
    # A cosine run cut short is not a shorter run: it keeps its length.
    assert json.loads(by_arch[("conv", "fa")].setting)["epochs"] == 6
    result = CliRunner().invoke(cli, ["table", "--runs", str(root), "--at-epoch", "3", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "Epochs here: 3, 6." in result.output and (tmp_path / "t" / "table_best_at3.md").exists()
    # A run that diverged after epoch 3 was healthy then; one that diverged sooner stays diverged there.
    late = fake_record("mnist", "lc", "bp", 1, long[:4], status="diverged", val=val[:4], epochs_asked=6)
    early = fake_record("mnist", "lc", "bp", 2, long[:2], status="diverged", val=val[:2], epochs_asked=6)
    write_json(str(root / "late" / "record.json"), late)
    write_json(str(root / "early" / "record.json"), early)
    runs, _ = load_runs([str(root)], at_epoch=3)
    lc = runs[(runs.arch == "lc") & (runs.rule == "bp")].set_index("seed").sort_index()
    assert list(lc.status) == ["complete", "complete", "diverged"] and set(lc.label) == {"bp"}
    # Short runs count as unfinished in the epoch-3 row, not as a row of their own.
    conv = runs[(runs.arch == "conv") & (runs.rule == "bp")]
    assert json.loads(conv.setting.iloc[0])["epochs"] == 3
    none = CliRunner().invoke(cli, ["table", "--runs", str(root), "--at-epoch", "7"])
    assert none.exit_code == 1 and "--at-epoch 7: no run under" in none.output and "the longest has 6" in none.output
    robust = CliRunner().invoke(cli, ["table", "--runs", str(root), "--at-epoch", "3", "--metric", "robust"])
    assert robust.exit_code == 2 and "--at-epoch cannot be used with --metric robust" in robust.output


def _vit_record(algo, seed, errors, angles, **options):
    """A fake vit record whose epoch e has per-part angles ``angles[e - 1]`` ({(block, part): angle})."""
    record = fake_record("mnist", "fc", algo, seed, errors, **({"rule_options": options} if options else {}))
    record["config"]["arch"] = "vit"
    record["rule"] = {"name": algo, "options": options}
    for epoch, by_part in zip(record["alignment"], angles):
        epoch["parts"] = [{"block": b, "part": p, "layer": 0, "update_angle": a, "wb_angle": None, "norm_ratio": None}
                          for (b, p), a in by_part.items()]
    return record


def test_the_parts_table_averages_each_parts_last_angle_over_seeds(tmp_path):
    from benchmark.part_tables import part_angles, parts_markdown
    root = tmp_path / "runs"
    early, late = {(0, "q"): 80.0, (1, "q"): 70.0}, {(0, "q"): 60.0, (1, "q"): 50.0}
    write_json(str(root / "fa0" / "record.json"), _vit_record("fa", 0, [3.0, 2.0], [early, late]))
    write_json(str(root / "fa1" / "record.json"), _vit_record("fa", 1, [3.0, 2.0], [early, {(0, "q"): 40.0,
                                                                                              (1, "q"): 30.0}]))
    write_json(str(root / "dfa0" / "record.json"), _vit_record("dfa", 0, [3.0, 2.0], [early, late],
                                                               placement="block"))
    write_json(str(root / "bp0" / "record.json"), _vit_record("bp", 0, [3.0, 2.0], [early, late]))
    table = part_angles(load_runs([str(root)])[0])
    fa = table[table.rule == "fa"].set_index("block")["angle"]
    assert (fa[0], fa[1]) == (50.0, 40.0) and set(table.rule) == {"fa", "dfa"}
    text = parts_markdown(table)
    assert "| MNIST ViT | fa (2) | Q | 50.0 | 40.0 | 45.0 |" in text
    # The rule option names the DFA row (the only DFA: nothing varies, so no brackets).
    assert "| MNIST ViT | dfa (1) | Q | 60.0 | 50.0 | 55.0 |" in text
    # Cut at epoch 1, the angles are epoch 1's.
    cut = part_angles(load_runs([str(root)], at_epoch=1)[0])
    assert list(cut[cut.rule == "fa"]["angle"]) == [80.0, 70.0]


def test_a_rules_options_label_its_rows_and_the_vit_has_its_published_numbers(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        for placement in ("layer", "block"):
            write_json(str(root / f"dfa-{placement}-{seed}" / "record.json"),
                       _vit_record("dfa", seed, [3.0, 2.0 + seed], [{}, {}], placement=placement))
    # A record from before the option existed ran at today's default: it is seed 2 of the layer row.
    old = _vit_record("dfa", 2, [3.0, 1.0], [{}, {}])
    del old["rule"]
    write_json(str(root / "dfa-old" / "record.json"), old)
    write_json(str(root / "bp" / "record.json"), _vit_record("bp", 0, [3.0, 1.5], [{}, {}]))
    result = CliRunner().invoke(cli, ["table", "--runs", str(root)])
    assert result.exit_code == 0, result.output
    assert "| dfa (placement=layer) | 2.00 ± 1.00 (3); paper 1.96 (+0.04) |" in result.output
    assert "| dfa (placement=block) | 2.50 ± 0.71 (2); paper 1.96 (+0.54) [2/3 seeds] |" in result.output
    assert "| bp | 1.50 (1); paper 1.77 (-0.27) [1/3 seeds] |" in result.output
    assert "'paper' is Nakajima et al. 2022" in result.output and "Bartunov" not in result.output
    # CSV stays CSV (the parts table goes to files, not into it).
    csv = CliRunner().invoke(cli, ["table", "--runs", str(root), "--format", "csv"])
    assert csv.exit_code == 0 and "|" not in csv.output


def test_a_table_of_cells_without_a_published_number_says_so(tmp_path):
    write_json(str(tmp_path / "fa" / "record.json"), _vit_record("fa", 0, [3.0, 2.0], [{}, {}]))
    result = CliRunner().invoke(cli, ["table", "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "together; no published number for these cells. Epochs here: 2." in result.output
