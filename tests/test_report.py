"""cli.py report: one self-contained HTML page whose numbers are table's."""
import base64
import csv
import io
import json
import os
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from cli import cli


class Page(HTMLParser):
    """Tables by id (rows of cell texts), image sources, and every URL-ish attribute."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.references = {}, [], []
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.references.append(attrs[key])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.slow
def test_report_is_self_contained_and_its_numbers_are_tables(tiny_root, tmp_path):
    runs = tmp_path / "runs"
    grid = CliRunner().invoke(cli, ["grid", "--archs", "fc,lc", "--algos", "bp,dtp-alt", "--seeds", "2",
                                    "--epochs", "2", "--batch-size", "32", "--data-dir", tiny_root,
                                    "--out", str(runs), "--quiet", "--threads", "1"])
    assert grid.exit_code == 0, grid.output
    # one unfinished run, to be listed (as text, not a link)
    (folder,) = [f for f in os.listdir(runs) if "-lc-dtp-alt-seed1-" in f]
    record = json.load(open(runs / folder / "record.json"))
    record["status"] = "interrupted"
    json.dump(record, open(runs / folder / "record.json", "w"))
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "--runs", str(runs), "--out", str(out), "--title", "tiny <check>"])
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    page = Page()
    page.feed(html)
    assert "tiny &lt;check&gt;" in html  # escaped by the template engine
    table = CliRunner().invoke(cli, ["table", "--runs", str(runs), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(table.output)))
    header, *body = page.tables["results"]
    assert header == ["rule", "MNIST FC", "MNIST LC"]
    shown = {(line[0], column): cell for line in body for column, cell in zip(header[1:], line[1:])}
    assert len(rows) == 4
    for row in rows:
        cell = shown[(row["label"], f"MNIST {row['arch'].upper()}")]
        n = int(row["n"])
        assert cell.startswith(f"{float(row['mean']):.2f}"), (row, cell)
        assert f"({n})" in cell
        if n > 1:
            assert f"± {float(row['std']):.2f}" in cell
    assert "paper 1.83" in shown[("dtp-alt", "MNIST FC")] and "paper 1.46" in shown[("dtp-alt", "MNIST LC")]
    params = {(r[1], r[2]): r[3] for r in page.tables["params"][1:]}
    assert params[("lc", "bp")] == "4,191,562"
    assert [r[0] for r in page.tables["problems"][1:]] == ["interrupted"]
    assert folder in page.tables["problems"][1][1]
    assert len(page.images) >= 5
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert page.references == [] and "http://" not in html and "https://" not in html
    assert "python cli.py grid --datasets mnist --archs fc,lc --algos bp,dtp-alt --seeds 2 --epochs 2" in html
