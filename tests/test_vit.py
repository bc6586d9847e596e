"""The registered ``vit`` architecture, torchvision's ViT under the rules, the
honest feedback count, and the per-part alignment angles of attention."""
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from benchmark.alignment import alignment_metrics, angle_degrees, epoch_alignment, exact_gradients
from cli import cli
from helpers import make_tiny_mnist
from models import RULES, build_network, feedback_layers, make_rule, parameter_counts
from models.blocks import transformer_blocks
from models.convert import convert
from models.inputs import INPUT_SHAPES
from models.vit import DEPTH, HEADS, MLP_WIDTH, WIDTH, ViTBlock

PARTS = ["q", "k", "v", "out", "mlp_in", "mlp_out"]
# The rules that run their own passes along models/chain.py's chain of segments.
CHAIN_RULES = ["dtp-par", "sdtp-alt", "aosdtp-par", "pc", "ep", "pepita", "ff"]


def vit_count(channels, image, patch, classes, width=WIDTH, depth=DEPTH, mlp=MLP_WIDTH):
    """The ViT's parameters, written out."""
    tokens = (image // patch) ** 2 + 1
    patch_embedding = channels * patch * patch * width + width
    class_token, positions = width, tokens * width
    block = (2 * 2 * width                         # two LayerNorms, gain and bias
             + 3 * width * width + 3 * width       # in_proj (q, k, v packed)
             + width * width + width               # out_proj
             + width * mlp + mlp + mlp * width + width)  # MLP in, MLP out
    return patch_embedding + class_token + positions + depth * block + 2 * width + width * classes + classes


@pytest.mark.parametrize("family,patch", [("mnist", 7), ("cifar10", 4)])
def test_vit_parameter_count_matches_the_formula(family, patch):
    channels, image, _ = INPUT_SHAPES[family]
    model = build_network("vit", family, 10)
    assert model(torch.randn(2, *INPUT_SHAPES[family])).shape == (2, 10)
    counts = parameter_counts(model)
    assert counts["forward_total"] == vit_count(channels, image, patch, 10)
    assert counts["forward_total"] == sum(p.numel() for p in model.parameters())
    per_block = [3 * WIDTH * WIDTH + 3 * WIDTH, WIDTH * WIDTH + WIDTH, WIDTH * MLP_WIDTH + MLP_WIDTH,
                 MLP_WIDTH * WIDTH + WIDTH]
    assert [row["forward"] for row in counts["per_layer"]] == (
        [channels * patch * patch * WIDTH + WIDTH] + per_block * DEPTH + [WIDTH * 10 + 10])
    # class token, positions and the LayerNorms: no rule reaches them
    tokens = (image // patch) ** 2 + 1
    assert counts["exact_gradient_params"] == WIDTH + tokens * WIDTH + DEPTH * 4 * WIDTH + 2 * WIDTH


def test_vit_is_defined_for_mnist_and_cifar10_only():
    with pytest.raises(ValueError, match="'vit' is defined for mnist .* and cifar10 .* inputs, not imagenet"):
        build_network("vit", "imagenet", 1000)


def test_vit_blocks_are_pre_norm_blocks_of_standard_modules():
    torch.manual_seed(0)
    model = build_network("vit", "mnist", 10)
    blocks = transformer_blocks(model)
    assert list(blocks) == [f"blocks.{i}" for i in range(DEPTH)] and all(isinstance(b, ViTBlock)
                                                                         for b in blocks.values())
    block = model.blocks[0]
    assert block.attention.num_heads == HEADS and block.attention.batch_first
    x = torch.randn(2, 17, WIDTH)
    h = block.norm1(x)
    attended = x + F.multi_head_attention_forward(
        h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), WIDTH, HEADS, block.attention.in_proj_weight,
        block.attention.in_proj_bias, None, None, False, 0.0, block.attention.out_proj.weight,
        block.attention.out_proj.bias, need_weights=False)[0].transpose(0, 1)
    expected = attended + block.mlp(block.norm2(attended))
    torch.testing.assert_close(block(x), expected)
    assert model.class_token.std() < 0.05 and model.position_embedding.std() < 0.05  # trunc normal, std 0.02


@pytest.mark.parametrize("placement", ["layer", "block"])
def test_dfa_trains_vit_with_both_placements(placement):
    torch.manual_seed(0)
    model = build_network("vit", "mnist", 10)
    rule = make_rule("dfa", placement=placement).attach(model, torch.Generator().manual_seed(1), (1, 28, 28))
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    rule.train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    points = [name for name, _ in model.named_modules() if name.endswith("dfa_feedback")]
    assert points == ([f"blocks.{i}.dfa_feedback" for i in range(DEPTH)] if placement == "block" else [])


def test_feedback_total_counts_attentions_feedback_and_dfas_block_points():
    model = build_network("vit", "mnist", 10)
    fa = make_rule("fa").attach(model, torch.Generator().manual_seed(0), (1, 28, 28))
    counts = parameter_counts(model, fa)
    # every layer but the first has a B of its W's shape; attention's packed in_proj one of 3E x E
    assert counts["feedback_total"] == sum(layer.weight.numel() for layer in feedback_layers(model)[1:])
    assert model.blocks[0].attention.in_proj.feedback_weight.shape == (3 * WIDTH, WIDTH)
    model = build_network("vit", "mnist", 10)
    dfa = make_rule("dfa", placement="block").attach(model, torch.Generator().manual_seed(0), (1, 28, 28))
    counts = parameter_counts(model, dfa)
    # BP inside the blocks: a B_b (classes x width) at each block's output, and the head's own B_l
    assert counts["feedback_total"] == DEPTH * 10 * WIDTH + 10 * WIDTH
    assert counts["block_feedback"] == DEPTH * 10 * WIDTH


def small_torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                             num_classes=10)


def test_torchvision_vit_converts_and_its_encoder_blocks_are_dfa_blocks():
    torch.manual_seed(0)
    model = convert(small_torchvision_vit(), "fa", input_shape=(3, 32, 32), quiet=True)
    assert len(feedback_layers(model)) == 1 + 2 * 4 + 1  # patches, (in, out, MLP in, MLP out) per block, head
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())
    model = convert(small_torchvision_vit(), "dfa", input_shape=(3, 32, 32), placement="block", quiet=True)
    assert [name for name, _ in model.named_modules() if name.endswith("dfa_feedback")] == [
        f"encoder.layers.encoder_layer_{i}.dfa_feedback" for i in range(2)]
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    attention = model.encoder.layers.encoder_layer_0.self_attention
    assert attention.in_proj_weight.grad.abs().sum() > 0  # BP inside the block, from e @ B_b at its output


@pytest.mark.slow
def test_torchvision_vit_b_16_converts_and_runs_one_backward():
    model = build_network("torchvision:vit_b_16", "imagenet", 10)
    convert(model, "fa", input_shape=(3, 224, 224), quiet=True)
    F.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([1, 2])).backward()
    assert model.encoder.layers.encoder_layer_11.self_attention.in_proj_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CHAIN_RULES)
def test_chain_rules_refuse_vit_naming_why(name):
    with pytest.raises(ValueError, match=r"needs an nn.Sequential network, got VisionTransformer: it runs its own "
                                         r"passes segment by segment"):
        make_rule(name).attach(build_network("vit", "mnist", 10), torch.Generator().manual_seed(0), (1, 28, 28))


def probe():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(8, 1, 28, 28, generator=generator), torch.arange(8) % 10


def test_per_part_angles_are_row_slices_of_the_layer_updates():
    torch.manual_seed(0)
    model = build_network("vit", "mnist", 10)
    rule = make_rule("fa").attach(model, torch.Generator().manual_seed(1), (1, 28, 28))
    x, y = probe()
    alignment = epoch_alignment(model, rule, x, y)
    assert alignment["layers"] == alignment_metrics(model, rule, x, y)
    parts = alignment["parts"]
    assert [(row["block"], row["part"]) for row in parts] == [(b, p) for b in range(DEPTH) for p in PARTS]
    layers = feedback_layers(model)
    updates, bp = rule.weight_updates(model, x, y), exact_gradients(model, x, y, rule)
    attention = model.blocks[1].attention
    index = layers.index(attention.in_proj)
    rows = {row["part"]: row for row in parts if row["block"] == 1}
    for number, part in enumerate("qkv"):
        span = slice(number * WIDTH, (number + 1) * WIDTH)
        assert rows[part]["layer"] == index
        assert rows[part]["update_angle"] == pytest.approx(angle_degrees(updates[index][span], bp[index][span]))
        assert rows[part]["wb_angle"] == pytest.approx(
            angle_degrees(attention.in_proj_weight[span], attention.in_proj.feedback_weight[span]))
    assert len({rows[part]["update_angle"] for part in "qkv"}) == 3  # three angles, not the layer's one
    by_layer = alignment["layers"]
    assert rows["out"]["update_angle"] == by_layer[layers.index(attention.out_proj)]["update_angle"]
    assert rows["mlp_out"]["update_angle"] == by_layer[layers.index(model.blocks[1].mlp[2])]["update_angle"]
    assert all(0 < row["update_angle"] < 180 for row in parts)


def test_bp_reference_of_a_dfa_block_net_is_plain_bp():
    """The update angle's reference (and robustness's true gradient) runs every
    rule detached: DFA's feedback points at the blocks' outputs too."""
    torch.manual_seed(0)
    model = build_network("vit", "mnist", 10)
    plain = copy.deepcopy(model)
    rule = make_rule("dfa", placement="block").attach(model, torch.Generator().manual_seed(1), (1, 28, 28))
    x, y = probe()
    rule.weight_updates(model, x, y)  # leaves an error where the points would find it
    expected = torch.autograd.grad(F.cross_entropy(plain(x), y), [layer.weight for layer in feedback_layers(plain)])
    for got, bp in zip(exact_gradients(model, x, y, rule), expected):
        torch.testing.assert_close(got, bp)
    parts = epoch_alignment(model, rule, x, y)["parts"]
    assert all(row["update_angle"] > 1.0 for row in parts)  # BP inside a block, from e @ B_b: not BP's update


def test_a_net_without_blocks_has_no_parts():
    model = build_network("fc", "mnist", 10)
    rule = make_rule("fa").attach(model, torch.Generator().manual_seed(1), (1, 28, 28))
    assert list(epoch_alignment(model, rule, *probe())) == ["layers"]


def run_args(root, out, algo, arch="vit", extra=()):
    return ["run", "--arch", arch, "--algo", algo, "--dataset", "mnist", "--epochs", "1", "--batch-size", "32",
            "--train-subset", "64", "--data-dir", root, "--out", str(out), "--quiet", *extra]


def test_vit_trains_under_bp_and_fa_and_the_tables_and_plots_show_it(tmp_path):
    root = make_tiny_mnist(str(tmp_path / "data"))
    runs = tmp_path / "runs"
    records = {}
    for algo in ("bp", "fa"):
        result = CliRunner().invoke(cli, run_args(root, runs, algo), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        (folder,) = [f for f in os.listdir(runs) if f"-{algo}-" in f]
        records[algo] = json.load(open(runs / folder / "record.json"))
    for algo, record in records.items():
        parts = record["alignment"][0]["parts"]
        assert [(row["block"], row["part"]) for row in parts] == [(b, p) for b in range(DEPTH) for p in PARTS]
        angles = [row["update_angle"] for row in parts]
        if algo == "bp":
            assert max(angles) < 0.01  # the update is BP's
        else:
            assert min(angles) > 1.0
    assert records["fa"]["params"]["feedback_total"] > 0
    tables = tmp_path / "tables"
    result = CliRunner().invoke(cli, ["table", "--runs", str(runs), "--out", str(tables)])
    assert result.exit_code == 0, result.output
    params = (tables / "params.md").read_text()
    assert f"| MNIST | vit | bp | {vit_count(1, 28, 7, 10):,} | 0 |" in params
    # The per-part angles of FA's last epoch, as the table prints them (BP's are 0 and left out).
    fa_q = next(row for row in records["fa"]["alignment"][-1]["parts"] if (row["block"], row["part"]) == (0, "q"))
    assert "Alignment per part of each transformer block" in result.output
    assert f"| MNIST ViT | fa (1) | Q | {fa_q['update_angle']:.1f} |" in (tables / "parts_alignment.md").read_text()
    assert "| bp (1) |" not in (tables / "parts_alignment.md").read_text()
    assert f"| MNIST | vit | fa | {vit_count(1, 28, 7, 10):,} | {records['fa']['params']['feedback_total']:,} |" \
        in params
    plots = tmp_path / "plots"
    result = CliRunner().invoke(cli, ["plot", "--runs", str(runs), "--out", str(plots)])
    assert result.exit_code == 0, result.output
    assert (plots / "attention_alignment_mnist_vit.png").stat().st_size > 0
    assert str(plots / "attention_alignment_mnist_vit.pdf") in result.output
    # robustness (true, rule and transfer gradients through the attention) and the report take it too
    result = CliRunner().invoke(cli, ["robustness", "--runs", str(runs), "--attacks", "fgsm", "--eps", "0,0.1",
                                      "--corruptions", "none", "--test-subset", "20", "--threads", "1",
                                      "--data-dir", root], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (fa_folder,) = [f for f in os.listdir(runs) if "-fa-" in f]
    rows = json.load(open(runs / fa_folder / "robustness.json"))["states"]["final"]["attacks"]
    assert {row["gradient"] for row in rows} == {"true", "rule", "transfer"}
    result = CliRunner().invoke(cli, ["report", "--runs", str(runs), "--out", str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.output
    assert "vit" in (tmp_path / "report.html").read_text()


def test_a_chain_rule_on_vit_is_one_line_and_exit_code_2(tmp_path):
    root = make_tiny_mnist(str(tmp_path / "data"))
    result = CliRunner().invoke(cli, run_args(root, tmp_path / "runs", "dtp-par"))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith(
        "error: target propagation needs an nn.Sequential network, got VisionTransformer: it runs its own passes "
        "segment by segment along a chain of layers and elementwise modules, which residual connections, "
        "attention and other branches are not")


@pytest.mark.parametrize("name", sorted(RULES.registered(plugins=False)))
def test_needs_chain_says_which_rules_refuse_a_branched_net(name):
    """The metadata the grid refuses by is what attaching does."""
    try:
        make_rule(name).attach(build_network("vit", "mnist", 10), torch.Generator().manual_seed(0), (1, 28, 28))
        refused = False
    except ValueError as exc:
        refused = "needs an nn.Sequential network" in str(exc)
    assert RULES.get(name).needs_chain == refused


def test_the_rules_command_says_which_rules_take_only_chains():
    output = CliRunner().invoke(cli, ["rules"]).output
    blocks = {lines[0]: "\n".join(lines) for lines in _rule_blocks(output)}
    for name in RULES.registered(plugins=False):
        assert ("networks: chains of layers only" in blocks[name]) == RULES.get(name).needs_chain, name


def _rule_blocks(output):
    """``rules``' output, one list of lines per rule (a rule's block starts unindented)."""
    blocks = []
    for line in output.splitlines():
        if not line.startswith(" "):
            blocks.append([])
        blocks[-1].append(line)
    return blocks


def test_a_grid_with_a_chain_rule_on_vit_is_refused_before_anything_trains(tmp_path):
    root = make_tiny_mnist(str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["grid", "--archs", "fc,vit", "--algos", "bp,dtp-par,pc", "--seeds", "1",
                                      "--epochs", "1", "--data-dir", root, "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("error: --algos dtp-par cannot train --archs vit: target propagation needs an "
                                    "nn.Sequential network, got VisionTransformer")
    assert not (tmp_path / "runs").exists()


def test_a_grid_with_dfas_block_placement_on_a_net_without_blocks_is_refused_before_anything_trains(tmp_path):
    root = make_tiny_mnist(str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["grid", "--archs", "fc", "--algos", "dfa", "--rule-opt", "placement=block",
                                      "--seeds", "1", "--epochs", "1", "--data-dir", root, "--out",
                                      str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: --algos dfa cannot train --archs fc: ")
    assert not (tmp_path / "runs").exists()


def test_a_search_runs_on_vit(tmp_path):
    root = make_tiny_mnist(str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["search", "--arch", "vit", "--algo", "fa", "--trials", "2", "--epochs", "1",
                                      "--batch-size", "32", "--train-subset", "64", "--val-split", "0.25",
                                      "--data-dir", root, "--out", str(tmp_path / "search"), "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (search,) = [path for path, _, files in os.walk(tmp_path / "search") if "search.json" in files]
    record = json.load(open(os.path.join(search, "search.json")))
    assert record["arch"] == "vit" and len(record["trials"]) == 2
    assert record["chosen"]["run"].startswith("mnist-vit-fa-")
