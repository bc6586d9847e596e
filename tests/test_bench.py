"""The bench command works (quick mode); its figures are not asserted."""
import pytest
import torch
from click.testing import CliRunner

from benchmark.perf import broadcast_lc, time_rounds
from cli import cli
from models.lc import LocallyConnected2d

pytestmark = pytest.mark.slow  # trains nets or starts subprocesses


def test_bench_quick_prints_every_table():
    result = CliRunner().invoke(cli, ["bench", "--quick", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for heading in ("## 1. Locally connected layer", "## 2. Training-step time", "## 3. Peak memory",
                    "## 4. Harness overhead", "## 5. A converted ResNet-20", "## 6. The optimizer step"):
        assert heading in result.output
    assert "| MNIST LC2 | 8 |" in result.output
    assert "| mnist | lc |" in result.output and "| mnist | fc | 256 |" in result.output
    assert "| bp/bp | fa/bp | dfa/bp | usf/bp | brsf/bp | frsf/bp | kp/bp |" in result.output
    assert "converted under bp:" in result.output
    assert "| mnist | fc | 466,698 |" in result.output  # Adam on the MNIST FC net's parameters


def test_bench_runs_only_the_chosen_section_and_names_the_allowed_ones():
    result = CliRunner().invoke(cli, ["bench", "--quick", "--device", "cpu", "--section", "optim"])
    assert result.exit_code == 0, result.output
    assert "## 6. The optimizer step" in result.output and "## 1. Locally" not in result.output
    result = CliRunner().invoke(cli, ["bench", "--quick", "--device", "cpu", "--section", "lcc"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: Invalid value for '--section': 'lcc' is not one of 'lc', 'rules', 'harness', 'convert', 'optim'."]


def test_broadcast_reference_in_the_bench_is_the_same_layer():
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, 9, 9, 3, 2, 1).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.double)
    expected = layer(x).reshape(2, 4, -1)
    torch.testing.assert_close(broadcast_lc(x, layer.weight, layer.bias, 3, 2, 1), expected)


def test_time_rounds_returns_a_median_per_function():
    times = time_rounds({"a": lambda: None, "b": lambda: sum(range(1000))}, torch.device("cpu"), repeats=3)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_rejects_an_unavailable_device():
    result = CliRunner().invoke(cli, ["bench", "--quick", "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output
