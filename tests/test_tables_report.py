"""The paper difference of subset runs in the summary, CSV and LaTeX tables,
and HTML escaping of every record-supplied text in the report."""
import csv
import io
import math
import os
import re
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from benchmark.io import write_json
from benchmark.records import SCHEMA
from benchmark.results import load_runs
from benchmark.tables import summarize_runs, to_csv, to_latex
from cli import cli
from helpers import fake_record

PAPER_MNIST_FC_FA = 1.85  # Bartunov et al. 2018, Table 1


def write_record(root, folder, dataset="mnist", arch="fc", algo="fa", seed=0, errors=(5.0, 4.0),
                 status="complete", device="cpu", **config):
    """A minimal valid run record, as the trainer writes it."""
    errors = list(errors)
    epochs = list(range(1, len(errors) + 1))
    record = {
        "schema": SCHEMA, "status": status, "run_id": folder, "device": device,
        "config": {"dataset": dataset, "arch": arch, "algo": algo, "seed": seed, "epochs": len(errors),
                   **config},
        "summary": {"epochs_done": len(errors), "final_test_error": errors[-1],
                    "best_test_error": min(errors), "test_error_at_best_val": None},
        "params": {"forward_total": 1000, "feedback_total": 900, "per_layer": [{"layer": 0}]},
        "curves": {"epoch": epochs, "test_error": errors, "train_error": errors, "train_loss": errors,
                   "test_loss": errors, "val_error": [None] * len(errors), "seconds": [1.0] * len(errors)},
        "alignment": [],
    }
    write_json(os.path.join(str(root), folder, "record.json"), record)


# --- subset runs are not compared with the paper ---------------------------------------------
@pytest.fixture
def full_and_subset_runs(tmp_path):
    root = tmp_path / "runs"
    write_record(root, "full-0", seed=0, errors=(5.0, 4.0), train_subset=0)
    write_record(root, "full-1", seed=1, errors=(4.4, 4.6), train_subset=0)
    write_record(root, "subset-0", seed=0, errors=(31.0, 30.0), train_subset=2000)
    return root


def test_summary_has_no_paper_difference_for_a_subset_run(full_and_subset_runs):
    summary = summarize_runs(load_runs([str(full_and_subset_runs)])[0]).set_index("label")
    assert sorted(summary.index) == ["fa (train_subset=0)", "fa (train_subset=2000)"]
    full, subset = summary.loc["fa (train_subset=0)"], summary.loc["fa (train_subset=2000)"]
    assert full["paper"] == subset["paper"] == PAPER_MNIST_FC_FA
    assert bool(full["comparable"]) is True and bool(subset["comparable"]) is False
    assert full["mean"] == pytest.approx(4.2) and full["diff"] == full["mean"] - PAPER_MNIST_FC_FA
    assert subset["mean"] == 30.0 and math.isnan(subset["diff"])


def test_csv_and_latex_tables_give_a_subset_run_no_paper_difference(full_and_subset_runs, tmp_path):
    out = tmp_path / "tables"
    result = CliRunner().invoke(cli, ["table", "--runs", str(full_and_subset_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = summarize_runs(load_runs([str(full_and_subset_runs)])[0])
    written_csv, written_latex = (out / "table_best.csv").read_text(), (out / "table_best.tex").read_text()
    assert written_csv == to_csv(summary) and written_latex == to_latex(summary)
    rows = {row["label"]: row for row in csv.DictReader(io.StringIO(written_csv))}
    full, subset = rows["fa (train_subset=0)"], rows["fa (train_subset=2000)"]
    assert (full["mean"], full["paper"], full["comparable"], full["diff"]) == (
        "4.2000", "1.8500", "True", "2.3500")
    assert (subset["mean"], subset["paper"], subset["comparable"], subset["diff"]) == (
        "30.0000", "1.8500", "False", "")
    lines = {line.split(" & ")[0]: line for line in written_latex.splitlines() if " & " in line}
    assert lines[r"fa (train\_subset=0)"] == r"fa (train\_subset=0) & 4.20 $\pm$ 0.28 (2) / 1.85 (+2.35) \\"
    assert lines[r"fa (train\_subset=2000)"] == \
        r"fa (train\_subset=2000) & 30.00 (1) / 1.85 (not comparable: trained on a subset) [1/2 seeds] \\"


# --- the report escapes what the records say -------------------------------------------------
# An opening script tag, an ampersand and a quote (for attributes); no slash, as it also names a folder.
EVIL = '<script>alert("1")&x'
TINY_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                         "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")


class Texts(HTMLParser):
    """Start tags, and every attribute value and piece of text, unescaped."""

    def __init__(self):
        super().__init__()
        self.tags, self.texts = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.texts += [value for name, value in attrs if value and name != "src"]

    def handle_data(self, data):
        self.texts.append(data)


def fake_plots(runs, summary, metric, out_dir, searches=()):
    """One tiny PNG whose name carries the dataset, instead of matplotlib's (slow) plots."""
    path = os.path.join(out_dir, f"curves_data{EVIL}.png")
    with open(path, "wb") as handle:
        handle.write(TINY_PNG)
    return [path]


def test_report_escapes_every_text_taken_from_records_and_searches(tmp_path, monkeypatch):
    import benchmark.plots
    monkeypatch.setattr(benchmark.plots, "all_plots", fake_plots)
    root = tmp_path / "runs"
    # two settings of one rule, so its row label shows the rule option
    write_record(root, "plain", rule_options={"note": "plain"})
    write_record(root, "evil", rule_options={"note": EVIL}, device=f"cuda {EVIL}")
    write_record(root, "evil-data", dataset=f"data{EVIL}", rule_options={})
    write_record(root, f"unfinished{EVIL}", status="interrupted", rule_options={})
    write_json(str(root / "search" / "search.json"), {
        "schema": "biobench.search/1", "status": "complete", "dataset": f"data{EVIL}", "arch": "fc",
        "algo": "fa", "trials": [{}], "epochs": 1, "halving": 0, "base": {},
        "chosen": {"trial": 0, "best_val_error": 3.0,
                   "settings": {"lr": 1e-3, "beta2": 0.99, "eps": 1e-8, "note": EVIL}}})
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "--runs", str(root), "--out", str(out), "--title", "t"])
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html.lower() and 'alert("1")' not in html
    # every & starts an entity
    assert re.findall(r"&(?!(?:amp|lt|gt|quot|#x?[0-9a-f]+|middot);)", html) == []
    page = Texts()
    page.feed(html)
    assert "script" not in page.tags
    # escaped exactly once: after unescaping, the reader sees the record's own text
    assert not [text for text in page.texts if "&lt;" in text or "&amp;" in text]
    expected = {
        "results row label": f"fa (note={EVIL})",
        "results column title": f"data{EVIL} FC",
        "parameter table dataset": f"data{EVIL}",
        "plot name": f"curves data{EVIL}",
        "chosen settings": f"note={EVIL}",
        "unfinished run": f"unfinished{EVIL}",
        "device": f"cuda {EVIL}",
        "command, rule option": f"--rule-opt note={EVIL}",
        "command, dataset": f"--datasets data{EVIL},mnist",
    }
    for where, text in expected.items():
        assert any(text in shown for shown in page.texts), where
    assert sum(text == f"data{EVIL}" for text in page.texts) == 2  # parameter and chosen tables
    assert sum(text == f"curves data{EVIL}" for text in page.texts) == 2  # the plot's alt and caption


@pytest.mark.parametrize("pc_angles, ylim_top, output_note", [((30.0, 24.0), 95, False), ((120.0, 0.0), 183, True)])
def test_alignment_panels_show_every_angle_and_note_exact_outputs_only_when_they_are(
        tmp_path, monkeypatch, pc_angles, ylim_top, output_note):
    from benchmark import plots
    first_layer, output = pc_angles
    record = fake_record("mnist", "fc", "pc", 0, [5.0, 4.0])
    for entry in record["alignment"]:
        entry["layers"][0]["update_angle"], entry["layers"][-1]["update_angle"] = first_layer, output
    folder = tmp_path / "runs" / "mnist-fc-pc-seed0"
    folder.mkdir(parents=True)
    write_json(str(folder / "record.json"), record)
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, out_dir, name: figures.append((name, fig)) or [name])
    runs, _ = load_runs([str(tmp_path / "runs")])
    plots.alignment_plot(runs, str(tmp_path / "plots"))
    ((name, fig),) = [(n, f) for n, f in figures if n.startswith("alignment")]
    update_row = fig.axes[len(fig.axes) // 2:]
    assert update_row[0].get_ylim()[1] == ylim_top  # an update more than orthogonal to BP's stays on the panel
    notes = [t.get_text() for t in update_row[-1].texts]
    assert any("error is exact" in note for note in notes) is output_note
