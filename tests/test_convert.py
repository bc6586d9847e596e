"""convert(): any PyTorch model trained by a rule, the peers' networks, and
the SGD protocol. Gradients are checked against plain autograd in float64."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from benchmark.config import RunConfig, learning_rate, resolve_run_config
from benchmark.errors import ConfigError
from biobench import convert, plain_state_dict
from cli import cli
from models import RULES, build_network, feedback_layers, make_rule, parameter_counts
from models.convert import swap_layers
from models.zoo import lenet, resnet20, resnet56


class SmallResNet(nn.Module):
    """Residual blocks, BatchNorm, a strided and a grouped convolution, not nn.Sequential."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.strided = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.skip = nn.Conv2d(8, 16, 1, stride=2)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(h + self.grouped(h))
        h = torch.tanh(self.strided(h) + self.skip(h))
        return self.fc(torch.flatten(h, 1))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def grads(model, x, y):
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("make,size", [(lambda: resnet20("cifar10", 10), 32), (lambda: SmallResNet(), 8),
                                       (lambda: __import__("torchvision").models.mobilenet_v3_small(num_classes=10),
                                        32)])
def test_bp_on_a_converted_model_is_the_plain_model(make, size):
    torch.manual_seed(0)
    plain = make()
    converted = make()
    converted.load_state_dict(plain.state_dict())
    convert(converted, "bp", quiet=True)
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    plain.eval(), converted.eval()  # batch statistics of 4 images would be fine too; eval keeps it exact
    loss_plain, grads_plain = grads(plain, x, y)
    loss_conv, grads_conv = grads(converted, x, y)
    torch.testing.assert_close(loss_conv, loss_plain, rtol=1e-12, atol=1e-12)
    assert grads_conv.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_conv[name], grads_plain[name], rtol=1e-10, atol=1e-12, msg=name)


def layer_io(model, x, y):
    """Each converted layer's input, output gradient and input gradient in one backward."""
    seen = {}
    hooks = []
    for layer in feedback_layers(model):
        hooks.append(layer.register_forward_hook(lambda m, i, o: seen.setdefault(m, {}).update(x=i[0].detach())))
        hooks.append(layer.register_full_backward_hook(
            lambda m, gi, go: seen[m].update(grad_in=None if gi[0] is None else gi[0].detach(),
                                             grad_out=go[0].detach())))
    x = x.clone().requires_grad_(True)  # so the first layer reports its input gradient too
    model.zero_grad()
    out = model(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    for hook in hooks:
        hook.remove()
    return seen, out.grad


def conv_args(layer):
    return dict(stride=layer.stride, padding=layer.op_padding(), dilation=layer.dilation, groups=layer.groups)


@pytest.mark.usefixtures("float64")
def test_fa_sends_the_error_through_b_by_each_layers_adjoint_and_keeps_bp_weight_gradients():
    torch.manual_seed(1)
    model = convert(SmallResNet(), "fa", seed=3, quiet=True)
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 4, 2])
    seen, _ = layer_io(model, x, y)
    for layer, io in seen.items():
        g = io["grad_out"]
        if isinstance(layer, nn.Conv2d):
            expected_w = torch.nn.grad.conv2d_weight(io["x"], layer.weight.shape, g, **conv_args(layer))
            if hasattr(layer, "feedback_weight"):
                expected_in = torch.nn.grad.conv2d_input(io["x"].shape, layer.feedback_weight, g, **conv_args(layer))
                assert not torch.allclose(layer.feedback_weight, layer.weight)
        else:
            expected_w = g.t() @ io["x"]
            expected_in = g @ layer.feedback_weight
        torch.testing.assert_close(layer.weight.grad, expected_w)
        if hasattr(layer, "feedback_weight"):
            torch.testing.assert_close(io["grad_in"], expected_in)
    assert not hasattr(model.stem, "feedback_weight")  # the first layer sends no error down


@pytest.mark.usefixtures("float64")
def test_dfa_gives_every_layer_the_output_error_through_its_own_matrix():
    torch.manual_seed(2)
    model = convert(SmallResNet(), "dfa", seed=3, input_shape=(3, 8, 8), quiet=True)
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 4, 2])
    seen, error = layer_io(model, x, y)
    for layer, io in seen.items():
        if hasattr(layer, "feedback_weight"):
            expected = (error @ layer.feedback_weight).view(io["x"].shape)
            torch.testing.assert_close(io["grad_in"], expected)


@pytest.mark.usefixtures("float64")
def test_state_dicts_round_trip_and_converting_again_replaces_the_rule():
    torch.manual_seed(0)
    original = SmallResNet()
    plain = snapshot(original)
    weight = original.fc.weight
    converted = convert(original, "fa", quiet=True)
    assert converted.fc.weight is weight  # the same Parameter, not a copy
    assert {k for k in converted.state_dict() if "feedback" not in k} == set(plain)
    converted.load_state_dict(plain)  # a plain checkpoint loads; the drawn feedback stays
    back = SmallResNet()
    back.load_state_dict(plain_state_dict(converted))
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, plain[key])
    again = convert(converted, "bp", quiet=True)
    assert not [n for n, _ in again.named_buffers() if "feedback" in n]
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    back.eval(), again.eval()
    for (name, g1), g2 in zip(grads(back, x, y)[1].items(), grads(again, x, y)[1].values()):
        torch.testing.assert_close(g1, g2, msg=name)


def test_feedback_follows_the_models_dtype_and_its_seed():
    model = convert(SmallResNet().to(torch.float32), "fa", seed=7, quiet=True)
    assert model.fc.feedback_weight.dtype == torch.float32
    other = convert(SmallResNet().to(torch.float32), "fa", seed=7, quiet=True)
    torch.testing.assert_close(model.fc.feedback_weight, other.fc.feedback_weight)
    assert not torch.equal(model.fc.feedback_weight,
                           convert(SmallResNet().to(torch.float32), "fa", seed=8, quiet=True).fc.feedback_weight)


@pytest.mark.parametrize("scheme,bound", [("xavier", lambda layer: math.sqrt(6 / (256 + 5))),
                                          ("kaiming", lambda layer: math.sqrt(6 / 256)),
                                          ("like_weight",
                                           lambda layer: math.sqrt(3) * float(layer.weight.detach().std()))])
def test_feedback_init_schemes_draw_in_their_bound(scheme, bound):
    model = convert(SmallResNet(), "fa", feedback_init=scheme, quiet=True)
    b = bound(model.fc)
    assert model.fc.feedback_weight.abs().max() <= b and model.fc.feedback_weight.abs().max() > 0.9 * b


def test_unconvertible_parameters_are_said_or_refused(capsys):
    convert(SmallResNet(), "fa")
    assert "exact gradients kept: BatchNorm2d (1)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"no rule reaches BatchNorm2d \(1\)"):
        convert(SmallResNet(), "fa", strict=True)


@pytest.mark.parametrize("model,message", [
    (SmallResNet(), "target propagation needs an nn.Sequential network, got SmallResNet"),
    (lenet("mnist", 10), "cannot invert module 3 (MaxPool2d)"),  # 0 is the resize
])
def test_target_propagation_on_what_it_cannot_invert_is_one_line(model, message):
    # convert refuses target propagation whatever the model; the trainer attaches it to registered networks
    with pytest.raises(ValueError, match=re_escape(message)):
        make_rule("dtp-par").attach(swap_layers(model), torch.Generator().manual_seed(0), (1, 28, 28))


def re_escape(text):
    import re
    return re.escape(text)


@pytest.mark.parametrize("call,message", [
    (lambda: convert(3, "fa"), "convert() takes an nn.Module, got int"),
    (lambda: convert(SmallResNet(), "hebb"), "unknown learning rule 'hebb'"),
    (lambda: convert(SmallResNet(), "fa", speed=2), "unknown option(s) speed for rule 'fa'"),
    (lambda: convert(SmallResNet(), "fa", feedback_init="ones"), "feedback_init='ones' is not one of"),
    (lambda: convert(nn.Sequential(nn.ReLU()), "fa"), "has no Linear, Conv2d or LocallyConnected2d layer"),
    (lambda: convert(SmallResNet(), "dfa"), "needs the model's input shape"),
    (lambda: convert(SmallResNet(), "fa", input_shape=(3, 9, 9)),
     "convert: SmallResNet cannot run one input of input_shape (3, 9, 9): mat1 and mat2 shapes cannot be multiplied"),
])
def test_bad_input_to_convert_is_one_line(call, message):
    with pytest.raises(ConfigError, match=re_escape(message)):
        call()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 4))


# The built-in rules whose whole update is one backward pass (docs/convert.md lists them).
BACKWARD_RULES = ("bp", "fa", "dfa", "usf", "brsf", "frsf")


@pytest.mark.parametrize("name", RULES.registered(plugins=False))
def test_convert_takes_exactly_the_rules_whose_update_is_one_backward_pass(name):
    """The README's loop (backward, optimiser step) must be the rule's own
    train_step; a rule with a step of its own is refused, not trained by BP's gradients."""
    x, y = torch.randn(5, 12, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 0])
    if name not in BACKWARD_RULES:
        with pytest.raises(ConfigError, match=rf"rule '{name}' .*train_step.*cli.py run --algo {name}"):
            convert(mlp(), name, input_shape=(12,), quiet=True)
        assert not RULES.get(name).learns_by_backward
        return
    by_loop, by_rule = (convert(mlp(), name, input_shape=(12,), quiet=True) for _ in range(2))
    optimizer = torch.optim.SGD(by_loop.parameters(), lr=0.5)
    F.cross_entropy(by_loop(x), y).backward()
    optimizer.step()
    by_rule.biobench_rule.train_step(by_rule, x, y, torch.optim.SGD(by_rule.parameters(), lr=0.5))
    assert by_loop.state_dict().keys() == by_rule.state_dict().keys()
    for (key, value), expected in zip(by_loop.state_dict().items(), by_rule.state_dict().values()):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    assert RULES.get(name).learns_by_backward


class HeadFirst(nn.Module):
    """Registers its output layer first and its first layer last."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.middle = nn.Linear(32, 16)
        self.stem = nn.Linear(12, 32)

    def forward(self, x):
        return self.head(torch.tanh(self.middle(torch.tanh(self.stem(x)))))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_layer_order_is_the_forward_passes_not_the_registration_order(rule):
    torch.manual_seed(0)
    plain = HeadFirst()
    model = convert(copy.deepcopy(plain), rule, input_shape=(12,), quiet=True)
    x, y = torch.randn(4, 12), torch.tensor([0, 9, 3, 5])
    seen, error = layer_io(model, x, y)
    bp = grads(plain, x, y)[1]
    assert not hasattr(model.stem, "feedback_weight")  # the first layer sends no error down
    torch.testing.assert_close(model.head.weight.grad, bp["head.weight"])  # the output layer's own error
    for layer in (model.head, model.middle):
        assert layer.feedback_weight.shape[0] == (10 if rule == "dfa" else layer.weight.shape[0])
        sent = (seen[layer]["grad_out"] if rule == "fa" else error) @ layer.feedback_weight
        torch.testing.assert_close(seen[layer]["grad_in"], sent)
    assert not torch.allclose(model.middle.weight.grad, bp["middle.weight"])


def test_without_input_shape_a_model_run_out_of_registration_order_is_refused_at_its_first_forward():
    model = convert(HeadFirst(), "fa", quiet=True)
    with pytest.raises(ConfigError, match=r"runs 'stem' first and 'head' last.*input_shape"):
        model(torch.randn(2, 12))
    in_order = convert(SmallResNet(), "fa", quiet=True)  # registered in forward order: nothing to refuse
    in_order(torch.randn(2, 3, 8, 8))
    assert convert(HeadFirst(), "bp", quiet=True)(torch.randn(2, 12)).shape == (2, 10)  # BP has no order


@pytest.mark.parametrize("model,message", [
    (nn.Linear(0, 0), "the model (Linear) has an empty weight of shape (0, 0)"),
    (nn.Sequential(nn.Linear(3, 10), nn.Linear(10, 0)), "layer '1' (Linear) has an empty weight of shape (0, 10)"),
    (nn.Sequential(nn.Conv2d(3, 0, 3), nn.Conv2d(0, 2, 3)),
     "layer '0' (Conv2d) has an empty weight of shape (0, 3, 3, 3)"),
])
def test_a_layer_without_weights_is_refused_in_one_line(model, message):
    with pytest.raises(ConfigError, match=re_escape(message)):
        convert(model, "fa", quiet=True)


def test_dfa_on_an_input_of_another_shape_than_input_shape_is_one_line():
    model = convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(8, 4)), "dfa", input_shape=(1, 8, 8), quiet=True)
    F.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([0, 3])).backward()
    message = "layer '1' (Conv2d) gets inputs of shape (2, 8, 8), but its direct feedback was sized for (2, 6, 6)"
    with pytest.raises(ConfigError, match=re_escape(message)):
        F.cross_entropy(model(torch.randn(2, 1, 10, 10)), torch.tensor([0, 3])).backward()


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.feedback_gain = nn.Parameter(torch.ones(6))  # the user's own, not convert's

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)) * self.feedback_gain)


def test_plain_state_dict_keeps_the_users_own_feedback_named_parameters():
    plain_keys = set(Gated().state_dict())
    model = convert(Gated(), "fa", quiet=True)
    assert set(plain_state_dict(model)) == plain_keys
    without_gain = {k: v for k, v in plain_state_dict(model).items() if k != "feedback_gain"}
    with pytest.raises(RuntimeError, match="Missing key.*feedback_gain"):
        model.load_state_dict(without_gain)  # only convert's own feedback may be missing


def test_usf_scale_has_the_layers_dtype():
    assert torch.get_default_dtype() == torch.float32
    layer = convert(mlp().double(), "usf", quiet=True)[3]
    assert layer.feedback_scale.dtype == torch.float64
    assert layer.feedback_scale.item() == layer.init_bound() / math.sqrt(3.0)


# Every option convert claims for nn.Conv2d (kernel 3 unless set).
CONV_OPTIONS = [dict(stride=2, padding=1), dict(stride=(2, 1)), dict(dilation=2, padding=2), dict(groups=2),
                dict(bias=False), dict(padding=1, padding_mode="zeros"), dict(padding=1, padding_mode="reflect"),
                dict(padding=(1, 2), padding_mode="circular"), dict(padding=1, padding_mode="replicate"),
                dict(padding="same"), dict(kernel_size=4, padding="same"),
                dict(kernel_size=(2, 3), padding="same", dilation=(1, 2)),
                dict(kernel_size=4, padding="same", padding_mode="reflect"), dict(padding="valid")]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("options", CONV_OPTIONS, ids=str)
def test_a_converted_convolution_computes_what_nn_conv2d_computes(options):
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 6, **{"kernel_size": 3, **options})
    model = convert(nn.Sequential(nn.Conv2d(2, 4, 1), copy.deepcopy(plain)), "fa", quiet=True)
    layer = model[1]
    assert hasattr(layer, "feedback_weight")  # it runs the rule's Function, not nn.Conv2d's forward
    h = torch.randn(2, 4, 9, 8)
    out, expected = layer(h), plain(h)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(expected)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    plain_params = [p for p in (plain.weight, plain.bias) if p is not None]
    for got, want in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(expected, plain_params, g)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_an_optimizer_built_before_convert_still_moves_every_weight_and_bias():
    torch.manual_seed(0)
    model = SmallResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model = convert(model, "fa", quiet=True)
    F.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    optimizer.step()
    assert before.keys() == dict(model.named_parameters()).keys()
    for name, param in model.named_parameters():
        assert not torch.equal(param.detach(), before[name]), name


@pytest.mark.parametrize("scheme,bound", [("xavier", math.sqrt(6 / (18 + 36))), ("kaiming", math.sqrt(6 / 18))])
def test_feedback_bounds_follow_a_grouped_convolutions_fan_in(scheme, bound):
    # Conv2d(8, 16, 3, groups=4): each output channel reads 8/4 channels through 3x3: fan_in 18, fan_out 36
    model = convert(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 16, 3, groups=4)), "fa", feedback_init=scheme,
                    quiet=True)
    largest = float(model[1].feedback_weight.abs().max())
    assert 0.9 * bound < largest <= bound


# the peers' networks ---------------------------------------------------------------------------------------
def test_peer_networks_have_their_published_sizes_and_count_every_parameter():
    assert sum(p.numel() for p in resnet20("cifar10", 10).parameters()) == 269_722  # He et al.: 0.27 M
    assert sum(p.numel() for p in resnet56("cifar10", 10).parameters()) == 853_018  # 0.85 M
    # BioTorch's LeNets: conv 6/16/120 (5x5), FC 84, 10 on 32x32; CIFAR-10 conv 32/64/128 (3x3), FC 256, 10
    expected = (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (16 * 120 * 25 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert parameter_counts(build_network("lenet", "mnist", 10))["forward_total"] == expected
    expected = (3 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + (128 * 256 + 256) + (256 * 10 + 10)
    assert parameter_counts(build_network("lenet", "cifar10", 10))["forward_total"] == expected
    net = build_network("resnet20", "cifar10", 10)
    counts = parameter_counts(net)
    batch_norm = 2 * 16 * 7 + 2 * 32 * 6 + 2 * 64 * 6  # weight and bias of each BatchNorm
    assert counts["forward_total"] == 269_722 and counts["exact_gradient_params"] == batch_norm


# the SGD protocol ------------------------------------------------------------------------------------------
def test_learning_rate_schedules():
    config = RunConfig(lr=0.1, epochs=100, lr_schedule="multistep", lr_milestones=[50, 75])
    assert [learning_rate(config, e) for e in (1, 50, 51, 75, 76, 100)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cosine = RunConfig(lr=0.1, epochs=10, lr_schedule="cosine")
    assert learning_rate(cosine, 1) == pytest.approx(0.1)
    assert learning_rate(cosine, 6) == pytest.approx(0.05)
    assert learning_rate(RunConfig(lr=0.1), 7) == 0.1


def test_sgd_with_coupled_l2_takes_the_hand_step_and_the_trainer_sets_each_epochs_lr(tiny_root):
    from benchmark.train import Trainer
    config = RunConfig(dataset="mnist", arch="fc", rule="bp", epochs=3, batch_size=96, optimizer="sgd",
                       momentum=0.0, l2_penalty=1e-3, lr=0.5, lr_schedule="multistep", lr_milestones=[1, 2],
                       lr_gamma=0.5)
    trainer = Trainer(config, data_dir=tiny_root, progress=False).prepare()
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    seen, real = [], trainer.train_epoch

    def spy(epoch):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        layer = feedback_layers(trainer.model)[0]
        before = layer.weight.detach().clone()
        x = trainer.normalize(trainer.train.images[:96])
        loss = F.cross_entropy(trainer.model(x), trainer.train.labels[:96])
        (grad,) = torch.autograd.grad(loss, layer.weight)
        result = real(epoch)  # one batch: the whole tiny training set
        expected = before - seen[-1] * (grad + 1e-3 * before)
        torch.testing.assert_close(layer.weight.detach(), expected.to(layer.weight.dtype), rtol=1e-5, atol=1e-6)
        return result
    trainer.train_epoch = spy
    import tempfile
    trainer.run(tempfile.mkdtemp())
    assert seen == pytest.approx([0.5, 0.25, 0.125])


@pytest.mark.parametrize("options,message", [
    ({"optimizer": "adam", "momentum": 0.9}, "--momentum 0.9 applies to --optimizer sgd"),
    ({"lr_schedule": "multistep"}, "needs --lr-milestones"),
    ({"lr_milestones": [5]}, "--lr-milestones applies to --lr-schedule multistep"),
])
def test_inconsistent_protocols_are_refused(options, message):
    with pytest.raises(ConfigError, match=re_escape(message)):
        resolve_run_config({"rule": "bp", **options})


def test_old_records_without_an_optimizer_are_adam_in_tables(tmp_path):
    from benchmark.io import write_json
    from benchmark.results import load_runs
    from helpers import fake_record
    write_json(str(tmp_path / "a" / "record.json"), fake_record("mnist", "fc", "bp", 0, [3.0]))
    write_json(str(tmp_path / "b" / "record.json"), fake_record("mnist", "fc", "bp", 1, [2.0], optimizer="adam"))
    write_json(str(tmp_path / "c" / "record.json"), fake_record("mnist", "fc", "bp", 0, [5.0], optimizer="sgd"))
    runs, _ = load_runs([str(tmp_path)])
    labels = dict(zip(runs.path.map(lambda p: p.split("/")[-2]), runs.label))
    assert labels["a"] == labels["b"] == "bp (optimizer=adam)" and labels["c"] == "bp (optimizer=sgd)"


def test_the_cli_trains_a_peer_network_with_the_sgd_protocol(tiny_root, tmp_path):
    result = CliRunner().invoke(cli, ["run", "--arch", "lenet", "--algo", "fa", "--epochs", "2", "--batch-size", "32",
                                      "--optimizer", "sgd", "--momentum", "0.9", "--l2-penalty", "1e-3",
                                      "--lr", "0.01", "--lr-schedule", "multistep", "--lr-milestones", "1",
                                      "--data-dir", tiny_root, "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(cli, ["run", "--arch", "lenet", "--momentum", "0.9", "--data-dir", tiny_root,
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--momentum 0.9 applies to --optimizer sgd" in bad.output
    assert not (tmp_path / "bad").exists()


def test_peer_network_cells_show_biotorchs_number_for_their_optimizer(tmp_path):
    from benchmark.io import write_json
    from benchmark.results import load_runs
    from benchmark.tables import summarize_runs, to_markdown
    from helpers import fake_record
    for name, dataset, optimizer in (("m", "mnist", "sgd"), ("a", "cifar10", "adam"), ("s", "cifar10", "sgd")):
        write_json(str(tmp_path / name / "record.json"),
                   fake_record(dataset, "lc", "fa", 0, [5.0], optimizer=optimizer) | {"config": {
                       "dataset": dataset, "arch": "lenet", "algo": "fa", "seed": 0, "epochs": 1,
                       "optimizer": optimizer}})
    summary = summarize_runs(load_runs([str(tmp_path)])[0])
    papers = {(r.dataset, r.label): r.paper for r in summary.itertuples()}
    assert papers == {("mnist", "fa (optimizer=sgd)"): 1.7, ("cifar10", "fa (optimizer=adam)"): 40.67,
                      ("cifar10", "fa (optimizer=sgd)"): 46.69}
    text = to_markdown(summary)
    assert "BioTorch's published benchmark" in text and "Bartunov" not in text
