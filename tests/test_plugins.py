"""Third-party rules as plug-ins: a tiny package found through the
``biobench.rules`` entry-point group, run through run, grid, table and cite."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # installs a package and starts subprocesses

PLUGIN = '''
from biobench import FeedbackAlignment


class HalfFeedback(FeedbackAlignment):
    """FA whose feedback is half as strong."""
    name = "fa-half"
    title = "Feedback alignment, B / 2"
    citations = {"example2026": {"type": "misc", "author": "Example, Ada", "title": "Half feedback",
                                 "year": "2026"}}

    def backward_operand(self, layer, weight):
        return 0.5 * layer.feedback_weight, None


class Clash(FeedbackAlignment):
    name = "fa"
'''

ENTRY_POINTS = '''[biobench.rules]
fa-half = biobench_example_rule:HalfFeedback
broken = biobench_missing_module:Rule
fa = biobench_example_rule:Clash
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A plug-in package as pip would install it: a module and its dist-info."""
    site = tmp_path_factory.mktemp("site")
    (site / "biobench_example_rule.py").write_text(PLUGIN)
    info = site / "biobench_example_rule-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: biobench-example-rule\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return str(site)


def biobench(plugin_path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([plugin_path, ROOT]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def test_rules_lists_built_ins_and_the_plug_in_and_reports_bad_ones(plugin_path):
    result = biobench(plugin_path, "rules")
    assert result.returncode == 0, result.stderr
    assert "fa-half\n  source: plug-in biobench-example-rule (biobench_example_rule:HalfFeedback)" in result.stdout
    assert "title: Feedback alignment, B / 2" in result.stdout and "cite: example2026" in result.stdout
    assert "dtp-par\n  source: built-in (models.rules.tp)" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert ("plug-in 'broken' from plug-in biobench-example-rule (biobench_missing_module:Rule) failed to import: "
            "ModuleNotFoundError") in errors[0]
    assert "'fa' from plug-in biobench-example-rule (biobench_example_rule:Clash) clashes with the " \
           "built-in (models.rules.fa) one" in errors[1]
    assert "Traceback" not in result.stderr


def test_a_plug_in_rule_runs_through_run_grid_table_and_cite(plugin_path, tiny_root, tmp_path):
    out = str(tmp_path / "runs")
    run = biobench(plugin_path, "run", "--arch", "lc", "--algo", "fa-half", "--epochs", "1", "--batch-size", "32",
                   "--data-dir", tiny_root, "--out", out, "--quiet")
    assert run.returncode == 0, run.stderr
    grid = biobench(plugin_path, "grid", "--archs", "fc", "--algos", "bp,fa-half", "--seeds", "1", "--epochs", "1",
                    "--batch-size", "32", "--data-dir", tiny_root, "--out", out, "--quiet", "--jobs", "2")
    assert grid.returncode == 0, grid.stderr
    records = [json.load(open(os.path.join(out, f, "record.json"))) for f in os.listdir(out)]
    assert sorted((r["config"]["arch"], r["config"]["algo"], r["status"]) for r in records) == [
        ("fc", "bp", "complete"), ("fc", "fa-half", "complete"), ("lc", "fa-half", "complete")]
    half = next(r for r in records if r["config"]["algo"] == "fa-half")
    assert half["params"]["feedback_total"] > 0  # its B buffers are counted like FA's
    table = biobench(plugin_path, "table", "--runs", out)
    assert table.returncode == 0 and "| fa-half |" in table.stdout
    cite = biobench(plugin_path, "cite", "--runs", out)
    assert "@misc{example2026," in cite.stdout and "@article{lillicrap2016," not in cite.stdout
