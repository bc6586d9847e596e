"""cli.py robustness: attacks in pixel space along the true, the rule's and a
transfer gradient, corruptions, the kept models, files, tables; each checked
against a reference computed another way (the records' own test errors, hand
gradients, finite differences, scipy, torchattacks called directly)."""
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from benchmark.config import RunConfig
from benchmark.data import Normalizer, load_dataset, training_splits
from benchmark.records import ROBUSTNESS_NAME as RESULT_NAME
from benchmark.records import ROBUSTNESS_PARTIAL_NAME as PARTIAL_NAME
from benchmark.records import load_record
from benchmark.robustness import attacks, corruptions, evaluation, gradients, loading, transfer
from benchmark.robustness import settings as rb
from benchmark.robustness.attacks import adversarial
from benchmark.robustness.corruptions import corrupt
from benchmark.robustness.evaluation import Evaluation, pixel_error
from benchmark.robustness.gradients import attacked_model, give_input_feedback, rule_gradient, unit_seed
from benchmark.robustness.jobs import plan
from benchmark.robustness.transfer import EXAMPLES_FOLDER
from benchmark.run_model import build_model, error_and_loss
from benchmark.runs import start_run
from cli import cli
from helpers import fake_record, make_tiny_mnist
from models import RULES, build_network, make_rule
from models.layers import Linear, feedback_layers, frozen_parameters

torchattacks = pytest.importorskip("torchattacks")

QUICK = dict(pgd_steps=3, corruptions=(), test_subset=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A data root and a folder with a BP and an FA run of the FC net (2 epochs, validation split)."""
    base = tmp_path_factory.mktemp("robust")
    data_dir = make_tiny_mnist(str(base / "data"), n_train=200, n_test=40)
    out = str(base / "runs")
    for rule in ("bp", "fa"):
        start_run(dict(arch="fc", rule=rule, dataset="mnist", seed=0, epochs=2, val_split=0.2, lr=3e-3), {},
                  data_dir, out, progress=False)
    return data_dir, out


@pytest.fixture
def runs(trained, tmp_path):
    """A private copy of the trained runs (tests write into run folders)."""
    data_dir, out = trained
    copy = str(tmp_path / "runs")
    shutil.copytree(out, copy)
    return data_dir, copy


def folder_of(out, rule):
    (name,) = [n for n in os.listdir(out) if f"-{rule}-" in n]
    return os.path.join(out, name)


def job_for(out, rule, settings):
    (job,) = [j for j in plan([out], settings, warn=lambda m: None) if f"-{rule}-" in j.name]
    return job


def loaded(run_dir, data_dir, file_name="checkpoint.pt"):
    """The run's model built and loaded by hand (the trainer's build path), eval mode."""
    record = load_record(os.path.join(run_dir, "record.json"))
    data = load_dataset("mnist", data_dir)
    model, rule, _ = build_model(RunConfig.from_record(record["config"]), data, "cpu")
    model.load_state_dict(torch.load(os.path.join(run_dir, file_name), weights_only=False)["model"])
    return model.eval(), rule, data, record


def pixels_of(data):
    return data.test.images.float().div(255), data.test.labels


def run_cli(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def without_timing(result):
    return {k: v for k, v in result.items() if k != "timing"}


# bad input -----------------------------------------------------------------------------------
def robustness_files(out):
    return sorted(f for _, _, files in os.walk(out) for f in files if f.startswith("robustness"))


@pytest.mark.parametrize("args, words", [
    (["--eps", "0,1.5"], "--eps '1.5' is not allowed"),
    (["--eps", "0,-0.1"], "--eps '-0.1' is not allowed"),
    (["--eps", "nan"], "--eps 'nan' is not allowed"),
    (["--attacks", "fgsm,cw"], "--attacks 'cw' is not known; allowed: fgsm, pgd"),
    (["--gradients", "exact"], "--gradients 'exact' is not known"),
    (["--attacks", "none", "--corruptions", "none"], "nothing to evaluate"),
    (["--gradients", "none", "--corruptions", "none"], "nothing to evaluate"),
    (["--states", "none"], "--states 'none' is not allowed"),
])
def test_bad_options_are_one_line_exit_2_and_write_nothing(runs, args, words):
    data_dir, out = runs
    result = run_cli(["robustness", "--runs", out, "--data-dir", data_dir, *args])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and words in result.output, result.output
    assert robustness_files(out) == []


def test_a_run_without_its_model_stops_everything_before_any_write(runs):
    data_dir, out = runs
    os.unlink(os.path.join(folder_of(out, "fa"), "checkpoint.pt"))
    result = run_cli(["robustness", "--runs", out, "--data-dir", data_dir, *QUICK_ARGS])
    assert result.exit_code == 2
    assert "keeps no model" in result.output and folder_of(out, "fa") in result.output
    assert result.output.strip().count("\n") == 0
    assert robustness_files(out) == []  # not even the BP run, which has its model


def test_a_dataset_without_pixel_bounds_is_refused(runs):
    data_dir, out = runs
    path = os.path.join(folder_of(out, "fa"), "record.json")
    record = json.load(open(path))
    record["config"]["dataset"] = "my-sensors"
    json.dump(record, open(path, "w"))
    result = run_cli(["robustness", "--runs", out, "--data-dir", data_dir, *QUICK_ARGS])
    assert result.exit_code == 2 and "'my-sensors' has no known pixel bounds" in result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert robustness_files(out) == []


QUICK_ARGS = ["--pgd-steps", "3", "--corruptions", "none", "--test-subset", "0"]


def test_data_that_is_not_the_runs_is_refused_with_the_reason(runs, tmp_path):
    """Another test set (another size, or the same size with other images)
    would make every number meaningless: the size and the loaded model's
    whole-test-set error are checked against the record."""
    data_dir, out = runs
    smaller = make_tiny_mnist(str(tmp_path / "smaller"), n_train=200, n_test=30)
    result = run_cli(["robustness", "--runs", out, "--data-dir", smaller, *QUICK_ARGS])
    assert "was tested on 40 images" in result.output and "has 30" in result.output, result.output
    other = str(tmp_path / "other")
    shutil.copytree(data_dir, other)
    labels = os.path.join(other, "MNIST", "raw", "t10k-labels-idx1-ubyte")
    raw = bytearray(open(labels, "rb").read())
    raw[8:] = bytes((b + 1) % 10 for b in raw[8:])  # the same images, other labels
    open(labels, "wb").write(bytes(raw))
    result = run_cli(["robustness", "--runs", out, "--data-dir", other, *QUICK_ARGS])
    assert result.output.count("but its record says") == 2, result.output
    assert robustness_files(out) == []


def test_a_transfer_source_trained_by_another_protocol_is_never_paired(runs):
    """A BP run of the same data, net and seed but another length is not the source of a 3-epoch target."""
    _, out = runs
    path = os.path.join(folder_of(out, "bp"), "record.json")
    record = json.load(open(path))
    record["config"]["epochs"] = 100
    json.dump(record, open(path, "w"))
    job = job_for(out, "fa", rb.Settings())
    assert job.source is None and "training protocol" in " ".join(job.notes)


def test_the_evaluations_go_through_the_executor_slurm_without_sbatch_is_one_line(runs, monkeypatch):
    data_dir, out = runs
    monkeypatch.setenv("PATH", "/nonexistent")
    result = run_cli(["robustness", "--runs", out, "--data-dir", data_dir, *QUICK_ARGS, "--executor", "slurm"])
    assert result.exit_code == 2, result.output
    assert "no sbatch on this machine's PATH" in result.output and "Traceback" not in result.output
    assert robustness_files(out) == [] and not os.path.exists(os.path.join(out, "slurm-logs"))


# the attacks ------------------------------------------------------------------------------------
PLAIN = SimpleNamespace(mean=torch.tensor([0.0]), std=torch.tensor([1.0]))  # the network sees the pixels


def mnist_net(rule_name, arch="fc", **options):
    """An eval-mode MNIST network of ``arch`` (weights from the global stream)
    with ``rule_name`` attached (its feedback from seed 1), and MNIST-like
    normalisation statistics in the default dtype (float64 under ``float64``)."""
    model = build_network(arch, "mnist", 10)
    rule = make_rule(rule_name, **options).attach(model, torch.Generator().manual_seed(1), (1, 28, 28))
    stats = SimpleNamespace(mean=torch.tensor([0.13]), std=torch.tensor([0.31]))
    return model.eval(), rule, stats


def test_fgsm_on_a_linear_model_is_the_hand_computed_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), Linear(16, 3))
    rule = make_rule("fa").attach(model, torch.Generator().manual_seed(1), (1, 4, 4))
    pixels = torch.rand(6, 1, 4, 4) * 0.6 + 0.2
    pixels[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # at the bounds: clipped
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.1
    for path in ("true", "rule"):  # one layer: no rule on the first layer, so both are exact
        adv = adversarial(attacked_model(model, rule, PLAIN, path), pixels, labels, "fgsm", eps, None, 4)
        weight, bias = model[1].weight.detach(), model[1].bias.detach()
        scale = float(1.0 / (255.0 * PLAIN.std))
        logits = (pixels.flatten(1) * 255 * scale) @ weight.t() + bias
        p = logits.softmax(1)
        # d CE / d x = sum_k p_k w_k - w_y: the step moves every pixel against the label's weight
        direction = (p @ weight - weight[labels]).sign().view_as(pixels)
        assert torch.equal(adv, (pixels + eps * direction).clamp(0, 1))
    # two classes: the step is -eps sign(w_y - w_other), Goodfellow et al.'s closed form
    binary = nn.Sequential(nn.Flatten(), Linear(16, 2))
    make_rule("bp").attach(binary, torch.Generator().manual_seed(1), (1, 4, 4))
    w = binary[1].weight.detach()
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    adv = adversarial(attacked_model(binary, make_rule("bp"), PLAIN, "true"), pixels, labels, "fgsm", eps,
                         None, 6)
    assert not (binary(pixels).softmax(1) == 1).any()  # no sample saturated: the gradient is never 0
    closed = -(w[labels] - w[1 - labels]).sign().view_as(pixels)
    assert torch.equal(adv, (pixels + eps * closed).clamp(0, 1))


def test_fgsm_error_on_a_binary_linear_model_never_falls_with_eps():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), Linear(16, 2))
    rule = make_rule("bp").attach(model, torch.Generator().manual_seed(1), (1, 4, 4))
    pixels, labels = torch.rand(200, 1, 4, 4), torch.randint(0, 2, (200,))
    module = attacked_model(model, rule, PLAIN, "true")
    errors = [pixel_error(model, PLAIN, adversarial(module, pixels, labels, "fgsm", eps, None, 200), labels, 50)
              for eps in [i / 50 for i in range(16)]]
    assert errors == sorted(errors) and errors[-1] > errors[0]


def test_apgd_dlr_attacks_a_saturated_softmax_that_masks_pgd_and_finds_what_the_geometry_allows():
    """A linear net with huge logits (as DFA's grow): the cross-entropy's input
    gradient is exactly zero in float32, so PGD cannot move; the DLR loss is
    blind to the scale. On a linear net the smallest L-inf step that flips
    sample i to class k is margin_ik / ||w_y - w_k||_1 (the box never binds
    here), so which images an attack can fool at eps is known exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), Linear(16, 4))
    rule = make_rule("bp").attach(model, torch.Generator().manual_seed(1), (1, 4, 4))
    with torch.no_grad():
        model[1].weight.normal_().mul_(3000.0)
        model[1].bias.zero_()
    pixels = 0.45 + 0.1 * torch.rand(400, 1, 4, 4)  # eps <= 0.4 never leaves [0, 1]
    module = attacked_model(model, rule, PLAIN, "true")
    with torch.no_grad():
        top2 = module(pixels).topk(2).values
        pixels = pixels[top2[:, 0] - top2[:, 1] > 150]  # exp(-150) is 0 in float32
        logits = module(pixels)
    assert len(pixels) > 200
    labels = logits.argmax(1)  # every image starts correct
    x = pixels.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(module(x), labels), x)
    assert torch.equal(grad, torch.zeros_like(grad))  # masked: no sign for FGSM or PGD to follow
    weight = model[1].weight.detach()
    margins = logits.gather(1, labels[:, None]) - logits
    norms = (weight[labels][:, None, :] - weight[None]).abs().sum(-1)
    needed = (margins / norms).masked_fill(margins == 0, float("inf")).min(1).values  # / 255 / std = 1 in PLAIN
    eps = 0.015
    pgd = {"steps": 40, "step_size": 0.002, "random_start": False}
    with frozen_parameters(model.parameters()):
        assert torch.equal(adversarial(module, pixels, labels, "pgd", eps, pgd, 100), pixels)
        adv = adversarial(module, pixels, labels, "apgd-dlr", eps, pgd, 100)
    fooled = module(adv).argmax(1) != labels
    assert (adv - pixels).abs().max() <= eps + 1e-6
    assert not fooled[needed > eps].any()  # nothing beyond the geometry
    assert 0.1 < (needed < eps).float().mean() < 0.9  # the test has images on both sides
    assert fooled[needed < 0.9 * eps].all()  # and everything clearly within it


def test_apgd_dlr_leaves_misclassified_images_alone_and_sends_drtp_the_labels_it_attacks():
    torch.manual_seed(2)
    model, rule, data = mnist_net("drtp")
    pixels, labels = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    module = attacked_model(model, rule, data, "rule")
    module.labels = labels
    with torch.no_grad():
        wrong = module(pixels).argmax(1) != labels
    seen = []
    project = rule.project_target
    rule.project_target = lambda y, logits: (seen.append((len(y), len(logits))), project(y, logits))[1]
    assert 0 < wrong.sum() < len(labels)
    with frozen_parameters(model.parameters()):
        adv = adversarial(module, pixels, labels, "apgd-dlr", 0.05, {"steps": 5}, 40)
    assert torch.equal(adv[wrong], pixels[wrong])
    assert seen and all(n_labels == n_logits for n_labels, n_logits in seen)


def test_eps_0_is_the_records_own_test_error_and_fgsm_error_grows_with_eps(runs):
    data_dir, out = runs
    settings = rb.Settings(gradients=("true",), states=rb.STATES, **QUICK)
    for rule in ("bp", "fa"):
        job = job_for(out, rule, settings)
        result = Evaluation(job, settings, data_dir, torch.device("cpu")).run()
        summary = job.record["summary"]
        # the trainer measured these on the same (whole) test set during training
        expected = {"final": summary["final_test_error"], "best": summary["test_error_at_best_val"]}
        for state, entry in result["states"].items():
            assert entry["clean_error"] == expected[state]
            assert ([r["error"] for r in entry["attacks"] if r["eps"] == 0]
                    == [expected[state]] * len(attacks.ATTACKS.registered()))
    # at eps 0 both library attacks return the images bit for bit (what the eps-0 shortcut relies on)
    model, rule, data, _ = loaded(folder_of(out, "fa"), data_dir)
    pixels, labels = pixels_of(data)
    module = attacked_model(model, rule, data, "true")
    for attack in (torchattacks.FGSM(module, eps=0.0), torchattacks.PGD(module, eps=0.0, alpha=0.01, steps=3),
                   torchattacks.APGD(module, eps=0.0, steps=3, loss="dlr")):
        assert torch.equal(attack(pixels, labels), pixels)
    errors = [pixel_error(model, data, adversarial(module, pixels, labels, "fgsm", eps, None, 40), labels, 40)
              for eps in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)]
    assert errors == sorted(errors) and errors[-1] > errors[0]


def input_gradient(module, pixels, labels):
    pixels = pixels.clone().requires_grad_()
    module.labels = labels
    (grad,) = torch.autograd.grad(F.cross_entropy(module(pixels), labels), pixels)
    return grad


def test_true_gradient_of_an_fa_net_is_autograd_on_a_plain_bp_net_and_the_rule_gradient_is_not():
    torch.manual_seed(0)
    fa_net, rule, data = mnist_net("fa")
    plain = build_network("fc", "mnist", 10).eval()  # no rule ever attached: PyTorch's own autograd
    missing, extra = plain.load_state_dict(fa_net.state_dict(), strict=False)
    assert not missing and all(k.endswith("feedback_weight") for k in extra)
    pixels, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    reference = pixels.clone().requires_grad_()
    loss = F.cross_entropy(plain((reference - data.mean) / data.std), labels)
    (expected,) = torch.autograd.grad(loss, reference)
    with frozen_parameters(fa_net.parameters()):
        true = input_gradient(attacked_model(fa_net, rule, data, "true"), pixels, labels)
        along_rule = input_gradient(attacked_model(fa_net, rule, data, "rule"), pixels, labels)
        # float32: each pixel's gradient ends in a 256-term sum (W_1^T delta_1 / std, sum of |terms| <= 0.035
        # here), within 256 eps (1.19e-7) of that: 1e-6 (observed: 4 eps, 1.4e-8)
        torch.testing.assert_close(true, expected, rtol=1e-4, atol=1e-6)
        cosine = F.cosine_similarity(along_rule.flatten(), true.flatten(), dim=0)
        assert cosine < 0.9
        for layer in feedback_layers(fa_net)[1:]:  # B = W: the rule's path is BP's
            layer.feedback_weight.copy_(layer.weight.detach())
        torch.testing.assert_close(input_gradient(attacked_model(fa_net, rule, data, "rule"), pixels, labels),
                                   true, rtol=1e-4, atol=1e-6)


def through_backward_operands(model, rule, x):
    """The FC net's forward with each layer's input gradient sent through its
    backward operand (B, or W for a layer without a rule): x @ B^T plus
    x @ (W - B)^T held constant has W's value and B's input gradient."""
    layers = feedback_layers(model)
    for module in model:
        if module in layers:
            b = rule.backward_operand(module, module.weight)[0] if module.rule is not None else module.weight
            x = F.linear(x, b, module.bias) + F.linear(x, module.weight - b).detach()
        else:
            x = module(x)
    return x


@pytest.mark.parametrize("name", ["fa", "frsf", "usf", "kp"])
def test_the_rule_gradient_reaches_the_pixels_through_every_layers_feedback(name, float64):
    torch.manual_seed(0)
    model, rule, data = mnist_net(name)
    first = feedback_layers(model)[0]
    assert first.rule is None  # training never sends a gradient below layer 1
    text = give_input_feedback(model, rule, seed=0)
    if rule.learned_feedback:  # KP: the first layer keeps W_1^T
        assert first.rule is None and "W_1^T" in text
    else:
        assert first.rule is rule and "drawn as" in text
        b = rule.backward_operand(first, first.weight)[0]
        assert b.shape == first.weight.shape and not torch.equal(b, first.weight)
    pixels, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    reference = pixels.clone().requires_grad_()
    loss = F.cross_entropy(through_backward_operands(model, rule, (reference - data.mean) / data.std), labels)
    (expected,) = torch.autograd.grad(loss, reference)
    with frozen_parameters(model.parameters()):
        got = input_gradient(attacked_model(model, rule, data, "rule"), pixels, labels)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("arch", ["fc", "conv", "lc"])
@pytest.mark.parametrize("name", ["dfa", "drtp"])
def test_the_direct_rules_gradient_at_the_pixels_is_the_output_signal_through_b0(name, arch):
    """DFA: e @ B_0 (e the mean cross-entropy's gradient at the logits); DRTP:
    the one-hot target / N @ B_0; B_0 of the input's size, drawn like B_l."""
    torch.manual_seed(0)
    model, rule, data = mnist_net(name, arch)
    give_input_feedback(model, rule, seed=0)
    b0 = feedback_layers(model)[0].feedback_weight
    assert b0.shape == (10, 28 * 28)
    pixels, labels = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    with torch.no_grad():
        logits = model((pixels - data.mean) / data.std)
    onehot = F.one_hot(labels, 10).to(logits.dtype)
    signal = (F.softmax(logits, 1) - onehot if name == "dfa" else onehot) / len(labels)
    expected = (signal @ b0).view_as(pixels) / data.std
    with frozen_parameters(model.parameters()):
        got = input_gradient(attacked_model(model, rule, data, "rule"), pixels, labels)
    # float32: a 10-term sum (classes), within 10 eps (1.19e-7) of its sum of |terms| <= (2 / N) max|B_0| / std
    # = (2 / 6) 0.087 / 0.31 = 0.094: 1.2e-7 (observed: 3 eps, 1.5e-8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1.2e-7)


@pytest.mark.parametrize("name", RULES.names())
def test_a_rule_has_a_rule_gradient_column_exactly_when_it_declares_one(name):
    """``LearningRule.has_rule_gradient`` against what the attack finds on the
    attached net (layers that send a signal of the rule's own down, or an
    estimate of its own)."""
    model = build_network("fc", "mnist", 10)
    rule = make_rule(name).attach(model, torch.Generator().manual_seed(1), (1, 28, 28))
    assert rule_gradient(model, rule)[0] is RULES.get(name).has_rule_gradient


@pytest.mark.parametrize("name", ["fa", "dfa", "drtp", "brsf", "ep", "ff"])
@pytest.mark.parametrize("attack", attacks.ATTACKS.registered())
def test_attacks_stay_in_pixel_space_within_eps(name, attack):
    torch.manual_seed(0)
    # EP relaxes at every gradient; the nudge needs as many steps as hidden layers (5) to reach s_1
    short = {"free_steps": 8, "nudged_steps": 6} if name == "ep" else {}
    model, rule, data = mnist_net(name, **short)
    pixels = torch.rand(8, 1, 28, 28)
    pixels[:, :, :3] = torch.tensor([0.0, 1.0, 0.5]).view(1, 1, 3, 1)  # rows at the bounds
    with torch.no_grad():  # labels the net gets right: APGD leaves wrong ones alone
        labels = attacked_model(model, rule, data, "true")(pixels).argmax(1)
    pgd = {"steps": 4, "step_size": 0.05, "random_start": True}
    with frozen_parameters(model.parameters()):
        for path in ("true", "rule") if rule_gradient(model, rule)[0] else ("true",):
            adv = adversarial(attacked_model(model, rule, data, path), pixels, labels, attack, 0.1, pgd, 5)
            assert adv.min() >= 0 and adv.max() <= 1
            assert (adv - pixels).abs().max() <= 0.1 + 1e-6
            assert (adv != pixels).any()


class SignNoise(attacks.Attack):
    """A random corner of the eps ball: reads the pixels only, never the model."""
    library = "torch"
    follows_gradient = False

    def perturb(self, module, pixels, labels):
        return (pixels + self.eps * (torch.randint(0, 2, pixels.shape) * 2 - 1)).clamp(0, 1)


def test_an_attack_is_one_class_and_one_registry_line(runs, monkeypatch):
    """SignNoise registered in a registry of this test's own: it is
    evaluated, its numbers are those of its own examples, it has no rule
    column (it follows no gradient), its library is checked and recorded,
    and the table shows it."""
    from benchmark import results, tables
    from benchmark.errors import ConfigError
    from models.registry import Registry
    data_dir, out = runs
    local = Registry("attack")
    for name in attacks.ATTACKS.registered():
        local.register(name, attacks.ATTACKS.get(name))
    local.register("sign-noise", SignNoise)
    monkeypatch.setattr(attacks, "ATTACKS", local)
    settings = rb.Settings(attacks=("fgsm", "sign-noise"), eps=[0.0, 0.1], **QUICK)
    settings.check_libraries()
    job = job_for(out, "fa", settings)
    result = Evaluation(job, settings, data_dir, torch.device("cpu")).run()
    at_01 = {(r["attack"], r["gradient"]): r["error"] for r in result["states"]["final"]["attacks"] if r["eps"] == 0.1}
    assert set(at_01) == {("fgsm", "true"), ("fgsm", "rule"), ("fgsm", "transfer"), ("sign-noise", "true"),
                          ("sign-noise", "transfer")}
    assert result["versions"]["torch"] == torch.__version__ and result["attack_library"] == "torchattacks, torch"
    model, _, data, _ = loaded(job.run_dir, data_dir)
    pixels, labels = pixels_of(data)
    torch.manual_seed(unit_seed(0, "final/sign-noise/true/0.1"))
    noisy = (pixels + 0.1 * (torch.randint(0, 2, pixels.shape) * 2 - 1)).clamp(0, 1)
    with torch.no_grad():
        wrong = (model(Normalizer(data.mean, data.std, "cpu")(noisy * 255)).argmax(1) != labels).float().mean()
    assert at_01["sign-noise", "true"] == pytest.approx(100 * float(wrong))
    runs_table, _ = results.load_runs([out])
    text = tables.robustness_markdown(results.robustness_summary(results.load_robustness(runs_table)))
    assert "**SIGN-NOISE, true gradient: test error (%)**" in text

    class Missing(SignNoise):
        library = "no_such_library_here"
    local.register("missing", Missing)
    with pytest.raises(ConfigError, match="^robustness needs no_such_library_here: pip install"):
        rb.Settings(attacks=("fgsm", "missing")).check_libraries()


def test_transfer_examples_come_from_the_bp_net_and_never_touch_the_target(runs, monkeypatch):
    data_dir, out = runs
    settings = rb.Settings(gradients=("transfer",), attacks=("pgd",), eps=[0.0, 0.1], states=("final",), **QUICK)
    job = job_for(out, "fa", settings)
    assert job.source == folder_of(out, "bp")
    attacked = []
    real = gradients.attacked_model

    def spy(model, rule, data, path):
        attacked.append(rule.name)
        return real(model, rule, data, path)
    monkeypatch.setattr(gradients, "attacked_model", spy)
    target_inputs = []  # whether each input the target network saw carried a graph
    real_load = loading.load_model

    def load_spy(run_dir, *args):
        loaded_model = real_load(run_dir, *args)
        if run_dir == job.run_dir:
            loaded_model[0].register_forward_pre_hook(
                lambda module, inputs: target_inputs.append(inputs[0].requires_grad or torch.is_grad_enabled()))
        return loaded_model
    monkeypatch.setattr(loading, "load_model", load_spy)
    result = Evaluation(job, settings, data_dir, torch.device("cpu")).run()
    assert attacked == ["bp"]  # the only network an attack was built on
    assert target_inputs and not any(target_inputs)  # the target only ever ran without autograd
    (row,) = [r for r in result["states"]["final"]["attacks"] if r["eps"] == 0.1]
    # the same examples made by calling torchattacks directly on the BP network
    bp_model, bp_rule, data, bp_record = loaded(folder_of(out, "bp"), data_dir)
    fa_model, *_ = loaded(job.run_dir, data_dir)
    pixels, labels = pixels_of(data)
    normalise = Normalizer(data.mean, data.std, "cpu")

    class Pixels(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = bp_model

        def forward(self, p):
            return self.net(normalise(p * 255))
    torch.manual_seed(unit_seed(0, "final/pgd/true/0.1"))
    adv = torchattacks.PGD(Pixels(), eps=0.1, alpha=0.01, steps=3, random_start=True)(pixels, labels)
    with torch.no_grad():
        wrong = (fa_model(normalise(adv * 255)).argmax(1) != labels).float().mean() * 100
    assert row["error"] == pytest.approx(float(wrong))
    assert result["states"]["final"]["transfer_source"]["run_id"] == os.path.basename(folder_of(out, "bp"))


def test_the_bp_runs_own_examples_are_kept_and_serve_its_targets_bit_for_bit(runs, tmp_path, monkeypatch):
    data_dir, out = runs
    fresh = str(tmp_path / "fresh")
    shutil.copytree(out, fresh)
    settings = rb.Settings(gradients=("true", "transfer"), attacks=("pgd",), eps=[0.0, 0.1], states=("final",),
                           **QUICK)
    Evaluation(job_for(out, "bp", settings), settings, data_dir, torch.device("cpu")).run()
    (kept,) = os.listdir(os.path.join(folder_of(out, "bp"), EXAMPLES_FOLDER))
    attacked = []
    real = gradients.attacked_model
    monkeypatch.setattr(gradients, "attacked_model",
                        lambda model, rule, *rest: attacked.append(rule.name) or real(model, rule, *rest))
    monkeypatch.setattr(transfer, "_SOURCE_CACHE", {})
    transfer_only = rb.Settings(gradients=("transfer",), attacks=("pgd",), eps=[0.0, 0.1], states=("final",), **QUICK)
    reused = Evaluation(job_for(out, "fa", transfer_only), transfer_only, data_dir, torch.device("cpu")).run()
    assert attacked == []  # no attack was made again: the BP run's own examples were read
    # without kept examples the target makes them itself (and keeps them): the same tensor, the same error
    monkeypatch.setattr(transfer, "_SOURCE_CACHE", {})
    made = Evaluation(job_for(fresh, "fa", transfer_only), transfer_only, data_dir, torch.device("cpu")).run()
    assert attacked == ["bp"] and made["states"] == reused["states"]
    load = lambda root: torch.load(os.path.join(folder_of(root, "bp"), EXAMPLES_FOLDER, kept))  # noqa: E731
    assert torch.equal(load(out), load(fresh))
    # a damaged file is made again, not read
    open(os.path.join(folder_of(out, "bp"), EXAMPLES_FOLDER, kept), "wb").write(b"not a tensor")
    monkeypatch.setattr(transfer, "_SOURCE_CACHE", {})
    os.unlink(os.path.join(folder_of(out, "fa"), RESULT_NAME))
    again = Evaluation(job_for(out, "fa", transfer_only), transfer_only, data_dir, torch.device("cpu")).run()
    assert attacked == ["bp", "bp"] and again["states"] == reused["states"]
    assert torch.equal(load(out), load(fresh))


def test_resuming_an_interrupted_evaluation_gives_the_same_file(runs, tmp_path, monkeypatch):
    data_dir, out = runs
    other = str(tmp_path / "other")
    shutil.copytree(out, other)
    settings = rb.Settings(eps=[0.0, 0.1, 0.2], **dict(QUICK, corruptions=("gaussian_noise",)))
    real, counted = evaluation.pixel_error, []

    def counting(*args):
        counted.append(1)
        return real(*args)
    monkeypatch.setattr(evaluation, "pixel_error", counting)
    whole = Evaluation(job_for(other, "fa", settings), settings, data_dir, torch.device("cpu")).run()
    units = len(counted)
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(evaluation, "pixel_error", interrupted)
    job = job_for(out, "fa", settings)
    with pytest.raises(KeyboardInterrupt):
        Evaluation(job, settings, data_dir, torch.device("cpu")).run()
    assert os.path.exists(os.path.join(job.run_dir, PARTIAL_NAME))
    assert not os.path.exists(os.path.join(job.run_dir, RESULT_NAME))
    counted.clear()
    monkeypatch.setattr(evaluation, "pixel_error", counting)
    resumed = Evaluation(job, settings, data_dir, torch.device("cpu")).run()
    assert len(counted) == units - 6  # the six finished units were read back, not recomputed
    assert without_timing(resumed) == without_timing(whole)
    assert resumed["timing"]["units_from_earlier_calls"] == 6 and whole["timing"]["units_from_earlier_calls"] == 0
    assert json.load(open(os.path.join(job.run_dir, RESULT_NAME)))["states"] == whole["states"]
    assert not os.path.exists(os.path.join(job.run_dir, PARTIAL_NAME))


def test_cli_evaluates_every_run_in_parallel_skips_done_ones_and_tables_them(runs, tmp_path):
    data_dir, out = runs
    serial = str(tmp_path / "serial")
    shutil.copytree(out, serial)
    args = ["--data-dir", data_dir, "--pgd-steps", "2", "--corruptions", "contrast", "--eps", "0,0.1", "--states",
            "final,best"]
    result = run_cli(["robustness", "--runs", out, "--jobs", "2", "--threads", "1", *args])
    assert result.exit_code == 0, result.output
    assert "2 evaluated" in result.output
    assert run_cli(["robustness", "--runs", serial, *args]).exit_code == 0
    for rule in ("bp", "fa"):
        parallel = json.load(open(os.path.join(folder_of(out, rule), RESULT_NAME)))
        alone = json.load(open(os.path.join(folder_of(serial, rule), RESULT_NAME)))
        assert parallel["states"] == alone["states"]
        assert set(parallel["states"]) == {"final", "best"}
    fa = json.load(open(os.path.join(folder_of(out, "fa"), RESULT_NAME)))
    assert {r["gradient"] for r in fa["states"]["final"]["attacks"]} == {"true", "rule", "transfer"}
    assert "first layer's feedback" in fa["states"]["final"]["gradients"]["rule"]  # the rule reaches the pixels
    bp = json.load(open(os.path.join(folder_of(out, "bp"), RESULT_NAME)))
    assert {r["gradient"] for r in bp["states"]["final"]["attacks"]} == {"true"}
    assert "every layer's backward is exact" in bp["states"]["final"]["rule_gradient_left_out"]
    again = run_cli(["robustness", "--runs", out, *args])
    assert "2 already evaluated, 0 to evaluate" in again.output
    table = run_cli(["table", "--runs", out, "--metric", "robust"])
    assert table.exit_code == 0 and "PGD, rule gradient" in table.output
    report = str(tmp_path / "report.html")
    assert run_cli(["report", "--runs", out, "--out", report]).exit_code == 0
    html = open(report).read()
    assert "<h2>Robustness</h2>" in html and 'alt="robustness final mnist"' in html


# the kept models ---------------------------------------------------------------------------------
def test_the_best_validation_model_is_kept_and_is_that_epochs(trained):
    data_dir, out = trained
    for rule in ("bp", "fa"):
        run_dir = folder_of(out, rule)
        record = load_record(os.path.join(run_dir, "record.json"))
        best = torch.load(os.path.join(run_dir, "model_best.pt"), weights_only=True)
        assert best["epoch"] == record["summary"]["best_val_epoch"]
        model, _, data, _ = loaded(run_dir, data_dir, "model_best.pt")
        _, val = training_splits(data, 0, 0.2)
        error = error_and_loss(model, val, Normalizer(data.mean, data.std, "cpu"), 1000)[0]
        assert error == record["curves"]["val_error"][best["epoch"] - 1]


# equilibrium propagation ---------------------------------------------------------------------------
def small_ep(feedback, order="synchronous"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), Linear(12, 8), nn.Tanh(), Linear(8, 6), nn.Tanh(), Linear(6, 3))
    rule = make_rule("ep", free_steps=60, nudged_steps=30, beta=0.01, feedback=feedback, update_order=order)
    rule.attach(model, torch.Generator().manual_seed(1), (1, 3, 4))
    return model.eval(), rule


@pytest.mark.parametrize("order", ["synchronous", "alternating"])
@pytest.mark.parametrize("feedback", ["symmetric", "random"])
def test_ep_true_gradient_is_the_derivative_of_its_eval_forward(float64, feedback, order):
    model, rule = small_ep(feedback, order)
    x, y = torch.randn(5, 1, 3, 4), torch.tensor([0, 1, 2, 0, 1])
    inputs = x.clone().requires_grad_()
    logits = rule.differentiable_forward(model, inputs)
    torch.testing.assert_close(logits.detach(), model(x), rtol=0, atol=1e-12)  # the eval forward (the hook)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), inputs)
    direction, h = torch.randn_like(x), 1e-5
    with torch.no_grad():
        finite = (F.cross_entropy(model(x + h * direction), y) - F.cross_entropy(model(x - h * direction), y)) / 2 / h
    assert float((grad * direction).sum()) == pytest.approx(float(finite), rel=1e-5)


@pytest.mark.parametrize("feedback, agrees", [("symmetric", True), ("random", False)])
def test_ep_own_estimate_matches_the_true_gradient_only_with_symmetric_feedback(float64, feedback, agrees):
    model, rule = small_ep(feedback)
    x, y = torch.randn(5, 1, 3, 4), torch.tensor([0, 1, 2, 0, 1])
    inputs = x.clone().requires_grad_()
    (true,) = torch.autograd.grad(F.cross_entropy(rule.differentiable_forward(model, inputs), y), inputs)
    with torch.no_grad():
        logits = model(x)
    estimate = rule.estimate_input_gradient(x, (logits.softmax(1) - F.one_hot(y, 3)) / 5)
    cosine = float(F.cosine_similarity(estimate.flatten(), true.flatten(), dim=0))
    assert (cosine > 0.999) is agrees
    if agrees:
        assert float(estimate.norm() / true.norm()) == pytest.approx(1.0, abs=0.01)


# corruptions -------------------------------------------------------------------------------------
def test_blur_is_scipys_gaussian_filter_and_contrast_the_hand_formula():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    torch.manual_seed(0)
    pixels = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    for sigma in corruptions.CORRUPTIONS.get("gaussian_blur").levels:
        ours = corrupt(pixels, "gaussian_blur", sigma)
        # torch's reflect padding is scipy's "mirror"; radius int(4 sigma + 0.5) is scipy's truncate=4
        theirs = torch.from_numpy(scipy_ndimage.gaussian_filter(pixels.numpy(), sigma=(0, 0, sigma, sigma),
                                                                mode="mirror", truncate=4.0))
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    for factor in corruptions.CORRUPTIONS.get("contrast").levels:
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        expected = ((pixels - mean) * factor + mean).clamp(0, 1)
        torch.testing.assert_close(corrupt(pixels, "contrast", factor), expected)


def test_noise_has_the_severitys_std_and_stays_in_pixel_space():
    grey = torch.full((20, 1, 28, 28), 0.5)
    torch.manual_seed(0)
    for sigma in corruptions.CORRUPTIONS.get("gaussian_noise").levels:
        noisy = corrupt(grey, "gaussian_noise", sigma)
        assert float((noisy - grey).std()) == pytest.approx(sigma, rel=0.03)
    edge = corrupt(torch.zeros(4, 1, 28, 28), "gaussian_noise", 0.1)
    assert edge.min() == 0 and edge.max() <= 1 and (edge == 0).float().mean() > 0.4  # clipped below 0


# tables -------------------------------------------------------------------------------------------
def test_table_gives_mean_and_std_over_seeds(tmp_path):
    from benchmark import results, tables
    for seed, (true, rule_error) in enumerate([(40.0, 10.0), (60.0, 20.0)]):
        for algo in ("bp", "fa"):
            folder = tmp_path / f"mnist-lc-{algo}-seed{seed}"
            folder.mkdir()
            json.dump(fake_record("mnist", "lc", algo, seed, [5.0]), open(folder / "record.json", "w"))
            attacks = [{"attack": "pgd", "gradient": "true", "eps": 0.1, "error": true}]
            if algo == "fa":
                attacks.append({"attack": "pgd", "gradient": "rule", "eps": 0.1, "error": rule_error})
            json.dump({"states": {"final": {"attacks": attacks, "corruptions": [
                {"corruption": "contrast", "severity": s, "error": float(s + 2 * seed)} for s in range(1, 6)]}}},
                open(folder / "robustness.json", "w"))
    runs, _ = results.load_runs([str(tmp_path)])
    summary = results.robustness_summary(results.load_robustness(runs), "final")
    text = tables.robustness_markdown(summary)
    true_block = text.split("**PGD, true gradient")[1].split("**")[1]
    assert "| bp | 50.0 ± 14.1 (2) |" in true_block and "| fa | 50.0 ± 14.1 (2) |" in true_block
    rule_block = text.split("**PGD, rule gradient")[1].split("**")[1]
    assert "| fa | 15.0 ± 7.1 (2) |" in rule_block and "| bp |" not in rule_block
    # each run's mean over severities 1-5 (3 and 5), then mean and std over seeds
    assert "| bp | 4.0 ± 1.4 (2) |" in text.split("**Corruptions")[1]


def test_headline_is_each_runs_strongest_attack_at_the_datasets_eps_then_the_seeds_mean(tmp_path, monkeypatch):
    from benchmark import results, tables
    # per seed: (clean, {attack: (true, rule)} at eps 0.1); at eps 0.3 everything is 100 (not the headline's)
    seeds = [(2.0, {"fgsm": (30.0, 5.0), "pgd": (20.0, 9.0), "apgd-dlr": (90.0, 7.0)}),
             (4.0, {"fgsm": (50.0, 3.0), "pgd": (70.0, 1.0), "apgd-dlr": (60.0, 2.0)})]
    for seed, (clean, by_attack) in enumerate(seeds):
        folder = tmp_path / f"mnist-fc-fa-seed{seed}"
        folder.mkdir()
        json.dump(fake_record("mnist", "fc", "fa", seed, [clean]), open(folder / "record.json", "w"))
        attacks = []
        for attack, (true, rule_error) in by_attack.items():
            for gradient, at_01 in (("true", true), ("rule", rule_error)):
                attacks += [{"attack": attack, "gradient": gradient, "eps": 0.0, "error": clean},
                            {"attack": attack, "gradient": gradient, "eps": 0.1, "error": at_01},
                            {"attack": attack, "gradient": gradient, "eps": 0.3, "error": 100.0}]
        json.dump({"states": {"final": {"attacks": attacks, "corruptions": []}}}, open(folder / "robustness.json", "w"))
    runs, _ = results.load_runs([str(tmp_path)])
    text = tables.robustness_markdown(results.robustness_summary(results.load_robustness(runs), "final"))
    headline = text.split("**Headline at ε=0.1")[1].split("**")[1]
    assert "| FC clean | FC true | FC rule |" in headline
    # clean 2 and 4; true: max(30, 20, 90) = 90 and max(50, 70, 60) = 70; rule: 9 and 3
    assert "| fa | 3.0 ± 1.4 (2) | 80.0 ± 14.1 (2) | 6.0 ± 4.2 (2) |" in headline
    # the line plot draws attacks only (panels are (attack, gradient) pairs); the headline is drawn as bars whose
    # heights are the table's numbers
    import matplotlib.pyplot as plt

    from benchmark import plots
    drawn = []
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, out_dir, name: drawn.append((name, fig))
                        or real_save(fig, out_dir, name))
    paths = plots.robustness_plot(runs, str(tmp_path / "p"))
    assert [os.path.basename(p) for p in paths if p.endswith(".png")] == [
        "robustness_headline_final_mnist.png", "robustness_final_mnist.png"]
    bars = {c.get_label(): [round(b.get_height(), 6) for b in c.patches]
            for c in drawn[0][1].axes[0].containers if hasattr(c, "patches")}
    assert bars == {"clean": [3.0], "true gradient": [80.0], "rule gradient": [6.0]}
    plt.close("all")


def test_table_robust_format_latex_prints_the_markdown_tables_cells_in_latex(tmp_path):
    for seed, error in enumerate((40.0, 60.0)):
        folder = tmp_path / f"mnist-fc-fa-seed{seed}"
        folder.mkdir()
        json.dump(fake_record("mnist", "fc", "fa", seed, [5.0]), open(folder / "record.json", "w"))
        attacks_rows = [{"attack": "pgd", "gradient": gradient, "eps": eps, "error": error if eps else 5.0}
                        for gradient in ("true", "rule") for eps in (0.0, 0.1)]
        json.dump({"states": {"final": {"attacks": attacks_rows, "corruptions": []}}},
                  open(folder / "robustness.json", "w"))
    markdown = run_cli(["table", "--runs", str(tmp_path), "--metric", "robust"]).output
    result = run_cli(["table", "--runs", str(tmp_path), "--metric", "robust", "--format", "latex"])
    assert result.exit_code == 0, result.output
    latex = result.output
    assert "|---|" not in latex and latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == 3
    assert r"\textbf{PGD, true gradient: test error (\%)}" in latex
    assert r"rule & FC $\varepsilon$=0 & FC $\varepsilon$=0.1 \\" in latex
    rows = [line for line in markdown.splitlines() if line.startswith("| fa |")]
    assert len(rows) == 3 and "| fa | 5.0 ± 0.0 (2) | 50.0 ± 14.1 (2) |" in rows
    for row in rows:  # the Markdown tables' cells, row by row
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert " & ".join(cells).replace("±", r"$\pm$") + r" \\" in latex, row
    assert "ε" not in latex and "±" not in latex  # pdflatex without extra packages reads every character
    # --out writes the same LaTeX beside the Markdown and CSV, as every other metric does.
    written = run_cli(["table", "--runs", str(tmp_path), "--metric", "robust", "--out", str(tmp_path / "tables")])
    assert written.exit_code == 0, written.output
    assert (tmp_path / "tables" / "robustness_final.tex").read_text().strip() == latex.strip()


def test_algos_selects_runs_but_bp_still_serves_as_the_transfer_source(runs):
    _, out = runs
    for settings in (rb.Settings(rules=("fa",)), rb.Settings(skip_rules=("bp",))):
        (job,) = plan([out], settings, warn=lambda m: None)
        assert "-fa-" in job.name and job.source == folder_of(out, "bp")
    with pytest.raises(rb.ConfigError, match="--algos 'fb' is not known"):
        rb.parse_names("fa,fb", ("fa", "bp"), "--algos")


def test_runs_evaluated_with_another_protocol_are_rows_of_their_own(tmp_path):
    from benchmark import results, tables
    for algo, images, error in (("bp", 500, 30.0), ("fa", 500, 20.0), ("ep", 100, 10.0)):
        folder = tmp_path / f"mnist-fc-{algo}"
        folder.mkdir()
        json.dump(fake_record("mnist", "fc", algo, 0, [5.0]), open(folder / "record.json", "w"))
        json.dump({"test_images": images, "settings": {"pgd": {"steps": 40, "step_size": 0.01, "random_start": True}},
                   "states": {"final": {"attacks": [{"attack": "pgd", "gradient": "true", "eps": 0.1,
                                                     "error": error}], "corruptions": []}}},
                  open(folder / "robustness.json", "w"))
    runs, _ = results.load_runs([str(tmp_path)])
    text = tables.robustness_markdown(results.robustness_summary(results.load_robustness(runs)))
    assert "| ep [100 images, PGD 40 x 0.01] | 10.0 (1) |" in text and "| fa | 20.0 (1) |" in text


def write_evaluated_run(folder, algo, seed, error, record=None, **result):
    """A run folder holding a record and a robustness.json whose PGD error at eps 0.1 is ``error``."""
    folder.mkdir(parents=True)
    json.dump(record or fake_record("mnist", "fc", algo, seed, [5.0]), open(folder / "record.json", "w"))
    json.dump({"settings": {"attacks": ["fgsm", "pgd"]}, **result,
               "states": {"final": {"epoch": 1, "attacks": [{"attack": "pgd", "gradient": "true", "eps": 0.1,
                                                             "error": error}], "corruptions": []}}},
              open(folder / "robustness.json", "w"))


def test_a_seed_evaluated_twice_counts_once_with_a_warning(tmp_path):
    from benchmark import results, tables
    write_evaluated_run(tmp_path / "a" / "mnist-fc-fa-seed0", "fa", 0, 50.0)
    write_evaluated_run(tmp_path / "a" / "mnist-fc-fa-seed1", "fa", 1, 70.0)
    write_evaluated_run(tmp_path / "copy" / "mnist-fc-fa-seed0", "fa", 0, 50.0)  # a copied folder
    runs, _ = results.load_runs([str(tmp_path / "a"), str(tmp_path / "copy")])
    warnings = []
    text = tables.robustness_markdown(results.robustness_summary(results.load_robustness(runs, warnings.append)))
    assert "| fa | 60.0 ± 14.1 (2) |" in text  # not 56.7 over three
    assert len(warnings) == 1 and "seed 0 of mnist fc fa has more than one robustness.json" in warnings[0]


def test_results_of_an_older_model_or_an_unfinished_run_are_left_out_with_a_warning(tmp_path):
    from benchmark import results
    write_evaluated_run(tmp_path / "mnist-fc-bp-seed0", "bp", 0, 90.0)
    # resumed for two more epochs after its evaluation: the file describes the epoch-1 model
    write_evaluated_run(tmp_path / "mnist-fc-fa-seed0", "fa", 0, 40.0,
                        record=fake_record("mnist", "fc", "fa", 0, [5.0, 4.0, 3.0]))
    write_evaluated_run(tmp_path / "mnist-fc-dfa-seed0", "dfa", 0, 30.0,
                        record=fake_record("mnist", "fc", "dfa", 0, [5.0], status="running"))
    runs, _ = results.load_runs([str(tmp_path)])
    warnings = []
    rows = results.load_robustness(runs, warnings.append)
    assert set(rows.rule) == {"bp"}
    assert any("mnist-fc-fa-seed0: robustness.json evaluated the final model of epoch 1, the record's is epoch 3"
               in w for w in warnings)
    assert any("mnist-fc-dfa-seed0 is running" in w for w in warnings)


def test_runs_evaluated_with_other_attacks_are_rows_of_their_own(tmp_path):
    from benchmark import results
    for seed in range(2):
        write_evaluated_run(tmp_path / f"mnist-fc-fa-seed{seed}", "fa", seed, 80.0,
                            settings={"attacks": ["pgd", "fgsm", "apgd-dlr"]})
    write_evaluated_run(tmp_path / "mnist-fc-fa-seed2", "fa", 2, 20.0)  # without APGD: its strongest is weaker
    runs, _ = results.load_runs([str(tmp_path)])
    labels = set(results.load_robustness(runs).label)
    assert labels == {"fa", "fa [? images, PGD ? x 0, attacks fgsm+pgd]"}


def test_tensorboard_gets_the_results_of_runs_it_already_mirrors(runs, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from benchmark.board import write_robustness
    data_dir, out = runs
    settings = rb.Settings(gradients=("true",), eps=[0.0, 0.1], **QUICK)
    for rule in ("bp", "fa"):
        Evaluation(job_for(out, rule, settings), settings, data_dir, torch.device("cpu")).run()
    board = tmp_path / "board"
    (board / os.path.basename(folder_of(out, "fa"))).mkdir(parents=True)  # only fa has a TensorBoard run
    assert write_robustness(str(board), [folder_of(out, "bp"), folder_of(out, "fa")]) == 1
    assert os.listdir(board) == [os.path.basename(folder_of(out, "fa"))]
    events = event_accumulator.EventAccumulator(str(board / os.listdir(board)[0]))
    events.Reload()
    result = json.load(open(os.path.join(folder_of(out, "fa"), RESULT_NAME)))
    (expected,) = [r["error"] for r in result["states"]["final"]["attacks"] if r["attack"] == "pgd" and r["eps"] == 0.1]
    points = {e.step: e.value for e in events.Scalars("robustness_final/pgd_true")}
    assert points[100] == pytest.approx(expected)


def test_a_later_call_mirrors_runs_evaluated_before(runs, tmp_path):
    """--tensorboard mirrors every selected run with current results, not only
    the runs this call evaluated."""
    pytest.importorskip("tensorboard")
    data_dir, out = runs
    args = ["robustness", "--runs", out, "--data-dir", data_dir, *QUICK_ARGS, "--gradients", "true", "--eps", "0,0.1"]
    assert run_cli(args).exit_code == 0
    board = tmp_path / "board"
    (board / os.path.basename(folder_of(out, "fa"))).mkdir(parents=True)
    result = run_cli([*args, "--tensorboard", str(board)])
    assert result.exit_code == 0, result.output
    assert "0 to evaluate" in result.output and "robustness scalars added to 1 run(s)" in result.output


# the transfer source ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bp_seed1(trained, tmp_path_factory):
    """A BP run of seed 1 of the same protocol as ``trained``'s (another network, the same data)."""
    data_dir, _ = trained
    out = str(tmp_path_factory.mktemp("seed1"))
    start_run(dict(arch="fc", rule="bp", dataset="mnist", seed=1, epochs=2, val_split=0.2, lr=3e-3), {},
              data_dir, out, progress=False)
    return folder_of(out, "bp")


def spoil_weights(path):
    """The model in ``path`` with its last layer zeroed (every logit equal: 90% error), the rest as kept."""
    saved = torch.load(path, weights_only=False)
    last = [k for k in saved["model"] if k.endswith("weight") and "feedback" not in k][-1]
    saved["model"][last].zero_()
    torch.save(saved, path)


@pytest.mark.parametrize("file_name, state", [("checkpoint.pt", "final"), ("model_best.pt", "best")])
@pytest.mark.parametrize("fault, words", [("another seed's file", "seed 1"), ("other weights", "but its record says")])
def test_a_transfer_source_that_is_not_its_records_model_is_refused(runs, bp_seed1, file_name, state, fault,
                                                                     words):
    """BP seed 1's model copied into BP seed 0's folder (the same epoch, so
    the file's epoch agrees), or BP seed 0's weights changed: the targets'
    transfer columns would be made on the wrong network. The source is checked
    against its record as the evaluated model is (the config the file was
    saved with, its test error)."""
    data_dir, out = runs
    source = os.path.join(folder_of(out, "bp"), file_name)
    if fault == "other weights":
        spoil_weights(source)
    else:
        shutil.copy(os.path.join(bp_seed1, file_name), source)
    result = run_cli(["robustness", "--runs", out, "--data-dir", data_dir, "--algos", "fa", "--states", state,
                      "--gradients", "transfer", "--attacks", "fgsm", "--eps", "0,0.1", *QUICK_ARGS])
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if ": failed: " in line]
    assert line.startswith(f"[1/1] {os.path.basename(folder_of(out, 'fa'))}: failed: ") and "transfer source" in line
    assert source in line and words in line, line
    assert not os.path.exists(os.path.join(folder_of(out, "fa"), RESULT_NAME))


def test_a_source_model_of_another_architecture_names_the_file_and_its_targets(runs):
    data_dir, out = runs
    source = os.path.join(folder_of(out, "bp"), "checkpoint.pt")
    saved = torch.load(source, weights_only=False)
    saved["model"] = build_network("conv", "mnist", 10).state_dict()
    torch.save(saved, source)
    result = run_cli(["robustness", "--runs", out, "--data-dir", data_dir, "--eps", "0,0.1", "--attacks", "fgsm",
                      *QUICK_ARGS])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = {name: line for line in result.output.splitlines() if ": failed: " in line
             for name in (os.path.basename(folder_of(out, r)) for r in ("bp", "fa")) if name in line.split(":")[0]}
    fa = os.path.basename(folder_of(out, "fa"))
    assert set(lines) == {os.path.basename(folder_of(out, "bp")), fa}
    for line in lines.values():  # each one line naming the file and the network it does not fit
        assert source in line and "fc network" in line
    assert f"transfer source of {fa}" in lines[os.path.basename(folder_of(out, "bp"))]
    assert "transfer source" in lines[fa]


def test_every_targets_transfer_source_is_the_bp_run_of_its_seed_architecture_and_protocol(tmp_path):
    """Candidates that differ in one thing each, named so that the wrong one
    comes first where the names break a tie."""
    def run(name, arch, algo, seed, epochs, **config):
        folder = tmp_path / name
        folder.mkdir()
        json.dump(fake_record("mnist", arch, algo, seed, [5.0] * epochs, **config), open(folder / "record.json", "w"))
        (folder / "checkpoint.pt").write_bytes(b"")
        return str(folder)
    sources = {}
    for arch in ("fc", "conv"):
        for seed in (0, 1):
            sources[arch, seed] = run(f"{arch}-bp-seed{seed}-e2", arch, "bp", seed, 2)
            run(f"{arch}-bp-seed{seed}-e1", arch, "bp", seed, 1)  # another training length
            for algo in ("fa", "dfa"):
                run(f"{arch}-{algo}-seed{seed}-e2", arch, algo, seed, 2)
    run("fc-fa-seed2-e2", "fc", "fa", 2, 2)  # no BP run of its seed
    planned = {os.path.basename(j.run_dir): j for j in plan([str(tmp_path)], rb.Settings(), warn=lambda m: None)}
    targets = [j for j in planned.values() if j.record["config"]["algo"] != "bp"]
    assert len(targets) == 9
    for job in targets:
        config = job.record["config"]
        if config["seed"] == 2:
            assert job.source is None and "no BP run" in " ".join(job.notes)
            continue
        assert job.source == sources[config["arch"], config["seed"]], job.name
    assert all(j.source is None for j in planned.values() if j.record["config"]["algo"] == "bp")


def test_the_transfer_examples_come_from_the_sources_model_of_the_same_state(runs, monkeypatch):
    data_dir, out = runs
    asked = []
    real = transfer.source_examples

    def spy(source_dir, record, state, *rest):
        asked.append(state)
        return real(source_dir, record, state, *rest)
    monkeypatch.setattr(transfer, "source_examples", spy)
    monkeypatch.setattr(transfer, "_SOURCE_CACHE", {})
    settings = rb.Settings(gradients=("transfer",), attacks=("fgsm",), eps=[0.0, 0.1], states=rb.STATES, **QUICK)
    result = Evaluation(job_for(out, "fa", settings), settings, data_dir, torch.device("cpu")).run()
    assert asked == ["final", "best"]
    for state, file_name in (("final", "checkpoint.pt"), ("best", "model_best.pt")):
        source = result["states"][state]["transfer_source"]
        assert source["state"] == state and source["model_file"] == file_name
    # a source without a best-validation model serves the final state only: never its final model for the best
    os.unlink(os.path.join(folder_of(out, "bp"), "model_best.pt"))
    asked.clear()
    os.unlink(os.path.join(folder_of(out, "fa"), RESULT_NAME))
    result = Evaluation(job_for(out, "fa", settings), settings, data_dir, torch.device("cpu")).run()
    assert asked == ["final"]
    assert "transfer_source" not in result["states"]["best"]
    assert not [r for r in result["states"]["best"]["attacks"] if r["gradient"] == "transfer"]
    assert any("best" in note and "model_best.pt" in note for note in result["notes"])


# what each number is measured on ---------------------------------------------------------------------
def test_the_clean_error_is_measured_on_the_attacked_images(trained, tmp_path):
    from benchmark.data import stratified_subset
    data_dir, _ = trained
    out = str(tmp_path / "runs")  # a net that errs on some images (the trained ones get all or none right)
    start_run(dict(arch="fc", rule="bp", dataset="mnist", seed=0, epochs=1, lr=2e-4), {}, data_dir, out,
              progress=False)
    model, _, data, record = loaded(folder_of(out, "bp"), data_dir)
    pixels, labels = pixels_of(data)
    whole = record["summary"]["final_test_error"]
    for size in (10, 20, 30):  # a subset whose error differs from the whole test set's
        index = stratified_subset(data.test.labels, size, seed=0)
        on_subset = pixel_error(model, data, pixels[index], labels[index], 1000)
        if on_subset != whole:
            break
    assert on_subset != whole
    settings = rb.Settings(gradients=("true",), attacks=("fgsm",), eps=[0.0, 0.1], pgd_steps=3, corruptions=(),
                           test_subset=size)
    result = Evaluation(job_for(out, "bp", settings), settings, data_dir, torch.device("cpu")).run()
    entry = result["states"]["final"]
    assert result["test_images"] == size
    assert entry["clean_error"] == on_subset
    assert [r["error"] for r in entry["attacks"] if r["eps"] == 0] == [on_subset]


def test_random_draws_differ_between_seeds_and_repeat_in_a_rerun(runs, tmp_path, monkeypatch):
    """PGD's random start and the noise come from each unit's own seed, made
    from the run's seed: another seed draws other numbers; a rerun draws the
    same ones, even one that computes only some of the units (a resume).
    FGSM, which draws nothing, is the control: the two folders hold the same
    network."""
    data_dir, out = runs
    other = tmp_path / "seed1" / os.path.basename(folder_of(out, "fa"))
    shutil.copytree(folder_of(out, "fa"), other)
    record = json.load(open(other / "record.json"))
    record["config"]["seed"] = 1  # the same weights: only the seed the files say differs
    json.dump(record, open(other / "record.json", "w"))
    saved = torch.load(other / "checkpoint.pt", weights_only=False)
    saved["config"]["seed"] = saved["record"]["config"]["seed"] = 1
    torch.save(saved, other / "checkpoint.pt")
    made = []
    real_adversarial, real_corrupt = attacks.adversarial, corruptions.corrupt
    monkeypatch.setattr(attacks, "adversarial", lambda module, pixels, labels, attack, eps, *rest: made.append(
        ((attack, eps), real_adversarial(module, pixels, labels, attack, eps, *rest))) or made[-1][1])
    monkeypatch.setattr(corruptions, "corrupt", lambda pixels, name, level: made.append(
        ((name, level), real_corrupt(pixels, name, level))) or made[-1][1])

    def draws(root, **changes):
        made.clear()
        settings = rb.Settings(**{**dict(gradients=("true",), attacks=("fgsm", "pgd"), eps=[0.0, 0.05, 0.1],
                                         corruptions=("gaussian_noise",), pgd_steps=2, test_subset=0), **changes})
        Evaluation(job_for(str(root), "fa", settings), settings, data_dir, torch.device("cpu")).run()
        os.unlink(os.path.join(folder_of(str(root), "fa"), RESULT_NAME))
        return dict(made)
    seed0, seed1 = draws(out), draws(other.parent)
    again = draws(out, attacks=("pgd",), eps=[0.0, 0.1])  # a rerun of some units only, as a resume computes
    assert torch.equal(seed0["fgsm", 0.1], seed1["fgsm", 0.1])
    noise = corruptions.CORRUPTIONS.get("gaussian_noise").levels
    for unit in [("pgd", 0.1)] + [("gaussian_noise", level) for level in noise]:
        assert not torch.equal(seed0[unit], seed1[unit]), unit
        assert torch.equal(seed0[unit], again[unit]), unit


# a later call keeps what it does not recompute -----------------------------------------------------------
def rows(result, state, gradient=None):
    return [r for r in result["states"][state]["attacks"] if gradient in (None, r["gradient"])]


def test_a_call_on_the_target_alone_keeps_the_transfer_rows_of_a_call_with_its_source(runs):
    data_dir, out = runs
    args = ["--data-dir", data_dir, "--attacks", "fgsm,pgd", "--eps", "0,0.1", "--corruptions", "contrast",
            "--pgd-steps", "2", "--test-subset", "0"]
    assert run_cli(["robustness", "--runs", out, *args]).exit_code == 0
    path = os.path.join(folder_of(out, "fa"), RESULT_NAME)
    before = json.load(open(path))
    assert len(rows(before, "final", "transfer")) == 4
    result = run_cli(["robustness", "--runs", folder_of(out, "fa"), *args])  # BP is not under --runs now
    assert result.exit_code == 0 and "1 evaluated" in result.output, result.output
    after = json.load(open(path))
    assert after["states"] == before["states"]  # the transfer rows and their source, the rest recomputed alike
    assert any("kept from an earlier call" in note and "transfer" in note for note in after["notes"])
    assert any("no BP run" in note for note in after["notes"])


def test_states_best_after_final_keeps_the_final_block(runs):
    data_dir, out = runs
    args = ["--runs", folder_of(out, "fa"), "--data-dir", data_dir, "--gradients", "true", *QUICK_ARGS,
            "--attacks", "fgsm", "--eps", "0,0.1"]
    assert run_cli(["robustness", *args, "--states", "final"]).exit_code == 0
    path = os.path.join(folder_of(out, "fa"), RESULT_NAME)
    final = json.load(open(path))
    assert run_cli(["robustness", *args, "--states", "best"]).exit_code == 0
    both = json.load(open(path))
    assert list(both["states"]) == ["final", "best"] and both["states"]["final"] == final["states"]["final"]
    assert both["settings"]["states"] == ["final", "best"]
    table = run_cli(["table", "--runs", out, "--metric", "robust"])
    assert table.exit_code == 0 and "FGSM, true gradient" in table.output
    # a final model retrained since: its old block describes another model and goes
    spoil_weights(os.path.join(folder_of(out, "fa"), "checkpoint.pt"))
    settings = rb.Settings(gradients=("true",), attacks=("fgsm",), eps=[0.0, 0.1], states=("best",), **QUICK)
    merged = Evaluation(job_for(out, "fa", settings), settings, data_dir, torch.device("cpu")).run()
    assert list(merged["states"]) == ["best"] and merged["settings"]["states"] == ["best"]
    assert any("final" in note and "another model" in note for note in merged["notes"])


def test_rows_of_another_protocol_are_replaced_not_mixed(runs):
    data_dir, out = runs
    first = rb.Settings(gradients=("true",), attacks=("fgsm",), eps=[0.0, 0.1], **QUICK)
    job = job_for(out, "fa", first)
    Evaluation(job, first, data_dir, torch.device("cpu")).run()
    fewer_images = rb.Settings(gradients=("true",), attacks=("pgd",), eps=[0.0, 0.1], pgd_steps=3, corruptions=(),
                               test_subset=20)
    result = Evaluation(job, fewer_images, data_dir, torch.device("cpu")).run()
    assert {r["attack"] for r in rows(result, "final")} == {"pgd"} and result["settings"]["attacks"] == ["pgd"]
    assert any("other settings" in note for note in result["notes"])


# files of the wrong shape ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content, field", [
    ([], "top level is list"),
    ({"states": {"final": {"attacks": [{"attack": "pgd", "gradient": "true", "eps": 0.1, "error": "high"}]}}},
     "states.final.attacks[0].error"),
    ({"settings": {"attacks": "pgd"}, "states": {}}, "settings.attacks"),
    ({"states": {"final": {"corruptions": [{"corruption": "contrast", "error": 3.0}]}}},
     "states.final.corruptions[0].severity is missing"),
    ({"states": {"last": {}}}, "states.last"),
])
def test_a_robustness_json_of_the_wrong_shape_is_named_in_one_line(runs, tmp_path, content, field):
    data_dir, out = runs
    path = os.path.join(folder_of(out, "fa"), RESULT_NAME)
    json.dump(content, open(path, "w"))
    result = run_cli(["robustness", "--runs", out, "--data-dir", data_dir, *QUICK_ARGS])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert result.output.startswith(f"error: {path}: ") and field in result.output, result.output
    for command in (["table", "--runs", out, "--metric", "robust"], ["plot", "--runs", out, "--out",
                                                                      str(tmp_path / "plots")],
                    ["report", "--runs", out, "--out", str(tmp_path / "report.html")]):
        result = run_cli(command)  # the others' results still count; this one is left out with a warning
        assert "Traceback" not in result.output
        assert f"warning: skipped {path}: " in result.output and field in result.output, (command, result.output)


def test_tensorboard_names_a_robustness_json_of_the_wrong_shape(tmp_path):
    pytest.importorskip("tensorboard")
    from benchmark.board import write_robustness
    from benchmark.errors import RecordError
    run_dir = tmp_path / "runs" / "mnist-fc-fa-seed0"
    run_dir.mkdir(parents=True)
    (tmp_path / "board" / run_dir.name).mkdir(parents=True)
    (run_dir / RESULT_NAME).write_text(json.dumps({"states": {"final": {"attacks": "none"}}}))
    with pytest.raises(RecordError, match=f"^{run_dir / RESULT_NAME}: states.final.attacks is 'none', not a list$"):
        write_robustness(str(tmp_path / "board"), [str(run_dir)])


@pytest.mark.parametrize("content, field", [
    ([], "top level is list"),
    ({"fingerprint": "x", "units": {"final/fgsm/true/0.1": {"error": None, "seconds": 1.0}}},
     "units['final/fgsm/true/0.1'].error"),
])
def test_a_partial_file_of_the_wrong_shape_is_named(runs, content, field):
    data_dir, out = runs
    path = os.path.join(folder_of(out, "fa"), PARTIAL_NAME)
    json.dump(content, open(path, "w"))
    result = run_cli(["robustness", "--runs", out, "--data-dir", data_dir, *QUICK_ARGS, "--eps", "0,0.1"])
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if ": failed: " in line]
    assert path in line and field in line and "delete it" in line, line


# a worker killed by the OS -----------------------------------------------------------------------------------
def test_a_killed_worker_names_the_run_and_a_rerun_resumes_it(runs, monkeypatch):
    import signal
    data_dir, out = runs
    real_unit = evaluation.Evaluation._unit

    def dying(self, unit, compute):  # the FA run's worker is killed after its first finished unit
        if "-fa-" in self.job.name and len(self.done) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_unit(self, unit, compute)
    args = ["robustness", "--runs", out, "--data-dir", data_dir, "--eps", "0,0.1", *QUICK_ARGS]
    with monkeypatch.context() as patch:
        patch.setattr(evaluation.Evaluation, "_unit", dying)  # forked workers inherit it
        result = run_cli([*args, "--jobs", "2", "--threads", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "worker process died" in line and os.path.basename(folder_of(out, "fa")) in line and "rerun" in line
    resumed = run_cli(args)
    assert resumed.exit_code == 0, resumed.output
    result = json.load(open(os.path.join(folder_of(out, "fa"), RESULT_NAME)))
    assert result["timing"]["units_from_earlier_calls"] == 1
