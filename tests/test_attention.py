"""convert() on attention and transformers: nn.MultiheadAttention's projections
become feedback layers holding the plain module's Parameters; DFA's layer and
block placements. Every expectation is computed by hand in float64: the
attention forward written out, autograd only through what the rule leaves BP."""
import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ConfigError
from biobench import convert, plain_state_dict
from models import build_network, feedback_layers, make_rule

WIDTH, HEADS, BATCH, TARGETS, SOURCES = 8, 2, 3, 4, 5


def randn(*shape):
    return torch.randn(*shape).requires_grad_(True)


def bool_mask(rows, cols):
    """True (masked) above the diagonal: no row is masked whole."""
    return torch.ones(rows, cols, dtype=torch.bool).triu(1)


def padding(length):
    """Key padding: the last key of every other sequence is padding."""
    mask = torch.zeros(BATCH, length, dtype=torch.bool)
    mask[::2, -1] = True
    return mask


# (constructor options, call) where call(batch_first) gives (query, key, value, forward options)
def self_attention(batch_first, **options):
    x = randn(BATCH, TARGETS, WIDTH) if batch_first else randn(TARGETS, BATCH, WIDTH)
    return x, x, x, options


def cross_attention(kdim=WIDTH, vdim=WIDTH, same_key_value=False, **options):
    def call(batch_first):
        def sequence(length, dim):
            return randn(BATCH, length, dim) if batch_first else randn(length, BATCH, dim)

        key = sequence(SOURCES, kdim)
        value = key if same_key_value else sequence(SOURCES, vdim)
        return sequence(TARGETS, WIDTH), key, value, options
    return call


BP_CASES = {
    "self, weights": ({"batch_first": True}, lambda bf: self_attention(bf)),
    "self, sequence first, masks, no weights": ({}, lambda bf: self_attention(
        bf, attn_mask=bool_mask(TARGETS, TARGETS), key_padding_mask=padding(TARGETS), need_weights=False)),
    "cross, no bias, float masks, weights per head": (
        {"batch_first": True, "bias": False},
        lambda bf: cross_attention(attn_mask=torch.randn(BATCH * HEADS, TARGETS, SOURCES),
                                   key_padding_mask=padding(SOURCES).double() * -1e3,
                                   average_attn_weights=False)(bf)),
    "kdim vdim, padding, no weights": ({"batch_first": True, "kdim": 3, "vdim": 5},
                                       lambda bf: cross_attention(3, 5, key_padding_mask=padding(SOURCES),
                                                                  need_weights=False)(bf)),
    "kdim vdim, sequence first, 2-D float mask": ({"kdim": 3, "vdim": 5}, lambda bf: cross_attention(
        3, 5, attn_mask=torch.randn(TARGETS, SOURCES))(bf)),
    "bias_kv, zero attention, key is value, masks": (
        {"batch_first": True, "add_bias_kv": True, "add_zero_attn": True},
        lambda bf: cross_attention(same_key_value=True, attn_mask=bool_mask(TARGETS, SOURCES),
                                   key_padding_mask=padding(SOURCES))(bf)),
    "causal hint, no weights": ({"batch_first": True}, lambda bf: self_attention(
        bf, attn_mask=bool_mask(TARGETS, TARGETS), is_causal=True, need_weights=False)),
    "one unbatched sequence": ({"batch_first": True}, lambda bf: (
        lambda x: (x, x, x, {"key_padding_mask": torch.tensor([False] * (TARGETS - 1) + [True])}))(
        randn(TARGETS, WIDTH))),
}


def run_attention(attention, query, key, value, options):
    """Outputs and every gradient (inputs' and parameters') of one forward and backward."""
    attention.zero_grad()
    inputs = list({id(t): t for t in (query, key, value)}.values())
    for tensor in inputs:
        tensor.grad = None
    out, weights = attention(query, key, value, **options)
    torch.manual_seed(5)  # (randn, not randn_like: that follows the memory layout, PyTorch's is transposed)
    loss = (out * torch.randn(out.shape)).sum()
    if weights is not None:
        loss = loss + (weights * torch.randn(weights.shape)).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in attention.named_parameters()}
    return out.detach(), None if weights is None else weights.detach(), [t.grad.clone() for t in inputs], grads


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("case", list(BP_CASES))
def test_bp_converted_attention_is_plain_attention(case):
    constructor, make_call = BP_CASES[case]
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(WIDTH, HEADS, **constructor)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.1 * torch.randn_like(p))  # no zero biases: every term of the forward counts
    converted = convert(copy.deepcopy(plain), "bp", quiet=True)
    assert len(feedback_layers(converted)) in (2, 4)  # the projections are feedback layers now
    query, key, value, options = make_call(constructor.get("batch_first", False))
    expected = run_attention(plain, query, key, value, options)
    got = run_attention(converted, query, key, value, options)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-10, atol=1e-12)
    assert (got[1] is None) == (expected[1] is None)
    if expected[1] is not None:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-10, atol=1e-12)
    for got_input, expected_input in zip(got[2], expected[2]):
        torch.testing.assert_close(got_input, expected_input, rtol=1e-10, atol=1e-12)
    assert got[3].keys() == expected[3].keys()
    for name in expected[3]:
        torch.testing.assert_close(got[3][name], expected[3][name], rtol=1e-10, atol=1e-12, msg=name)


class AfterAFirstLayer(nn.Module):
    """An attention behind a first layer, which sends no error down: every projection gets the rule."""

    def __init__(self, attention):
        super().__init__()
        self.first = nn.Linear(2, 2)
        self.attention = attention


def through(x, weight, bias, feedback=None):
    """x W^T + b whose input gradient is sent through ``feedback`` (FA) instead of W."""
    if feedback is None:
        return F.linear(x, weight, bias)
    sent = F.linear(x, feedback)
    return F.linear(x.detach(), weight, bias) + (sent - sent.detach())


def hand_attention(query, key, value, project, heads, mask=None):
    """Multi-head attention written out, batch first; ``project(part, x)`` is each projection."""
    q, k, v = project("q", query), project("k", key), project("v", value)
    batch, targets, width = q.shape
    size = width // heads

    def split(t):
        return t.reshape(batch, -1, heads, size).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(size)
    if mask is not None:
        scores = scores + mask
    context = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(batch, targets, width)
    return project("out", context)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kind", ["self", "cross, masked", "kdim vdim"])
def test_fa_sends_each_projections_error_through_its_own_feedback(kind):
    torch.manual_seed(0)
    dims = {"kdim": 3, "vdim": 5} if kind == "kdim vdim" else {}
    model = convert(AfterAFirstLayer(nn.MultiheadAttention(WIDTH, HEADS, batch_first=True, **dims)), "fa", seed=1,
                    quiet=True)
    attention = model.attention
    if kind == "self":
        query = key = value = randn(BATCH, TARGETS, WIDTH)
    else:
        query, key, value = (randn(BATCH, TARGETS, WIDTH), randn(BATCH, SOURCES, dims.get("kdim", WIDTH)),
                             randn(BATCH, SOURCES, dims.get("vdim", WIDTH)))
    mask = torch.randn(TARGETS, SOURCES) if kind == "cross, masked" else None
    inputs = list({id(t): t for t in (query, key, value)}.values())
    out, _ = attention(query, key, value, attn_mask=mask, need_weights=False)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()

    rows = {"q": slice(0, WIDTH), "k": slice(WIDTH, 2 * WIDTH), "v": slice(2 * WIDTH, 3 * WIDTH)}
    bias = attention.in_proj_bias

    def project(part, x):
        if part == "out":
            layer = attention.out_proj
            return through(x, layer.weight, layer.bias, layer.feedback_weight)
        if dims:
            layer = getattr(attention, f"{part}_proj")
            weight, feedback = getattr(attention, f"{part}_proj_weight"), layer.feedback_weight
        else:
            weight, feedback = attention.in_proj_weight[rows[part]], attention.in_proj.feedback_weight[rows[part]]
        assert not torch.allclose(feedback, weight)
        return through(x, weight, bias[rows[part]], feedback)

    leaves = {id(t): t.detach().requires_grad_(True) for t in inputs}
    hand = hand_attention(*(leaves[id(t)] for t in (query, key, value)), project, HEADS,
                          None if mask is None else mask.view(1, 1, TARGETS, SOURCES))
    params = list(attention.parameters())
    expected = torch.autograd.grad((hand * upstream).sum(), list(leaves.values()) + params)
    for tensor, grad in zip(inputs, expected):
        torch.testing.assert_close(tensor.grad, grad, rtol=1e-10, atol=1e-12)
    for (name, param), grad in zip(attention.named_parameters(), expected[len(inputs):]):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12, msg=name)


def test_attention_parts_are_addressable_by_name():
    packed = convert(AfterAFirstLayer(nn.MultiheadAttention(WIDTH, HEADS)), "fa", quiet=True).attention
    parts = packed.parts()
    assert list(parts) == ["q", "k", "v", "out"]
    assert parts["k"].layer is packed.in_proj and parts["out"].layer is packed.out_proj
    assert torch.equal(parts["k"].of(packed.in_proj_weight), packed.in_proj_weight[WIDTH:2 * WIDTH])
    assert torch.equal(parts["v"].of(packed.in_proj.feedback_weight), packed.in_proj.feedback_weight[2 * WIDTH:])
    assert parts["out"].of(packed.out_proj.weight) is packed.out_proj.weight
    separate = convert(AfterAFirstLayer(nn.MultiheadAttention(WIDTH, HEADS, kdim=3, vdim=5)), "fa",
                       quiet=True).attention
    parts = separate.parts()
    assert parts["v"].layer is separate.v_proj and parts["v"].of(separate.v_proj.weight) is separate.v_proj_weight


class OneBlock(nn.Module):
    """A token embedding, one post-LN transformer block, mean pooling and a head."""

    def __init__(self, features=4, classes=3, feedforward=6, batch_first=True):
        super().__init__()
        self.embed = nn.Linear(features, WIDTH)
        self.block = nn.TransformerEncoderLayer(WIDTH, HEADS, dim_feedforward=feedforward, dropout=0.0,
                                                batch_first=batch_first)
        self.head = nn.Linear(WIDTH, classes)
        self.batch_first = batch_first

    def forward(self, x):
        h = self.embed(x)
        if not self.batch_first:
            return self.head(self.block(h.transpose(0, 1)).mean(0))
        return self.head(self.block(h).mean(1))


class HandDFA:
    """DFA by hand: where the rule sends e @ B, the tensor is cut from the graph
    and a term <h, e @ B> of a surrogate loss gives it that gradient instead."""

    def __init__(self, error):
        self.error, self.terms = error, []

    def cut(self, h, signal):
        self.terms.append((h * signal).sum())
        return h.detach()

    def layer(self, h, feedback):
        """A layer's input under the layer placement: e @ B_l, B_l sized for the whole sample."""
        return self.cut(h, (self.error @ feedback).view_as(h))


def hand_block(x, block, dfa=None):
    """nn.TransformerEncoderLayer (post-LN, ReLU, no dropout) written out; with ``dfa``
    every layer inside it gets e @ B_l at its input (the layer placement)."""
    attention = block.self_attn

    def cut(layer, h):
        return h if dfa is None else dfa.layer(h, layer.feedback_weight)

    x_in = cut(attention.in_proj, x)
    q, k, v = F.linear(x_in, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)

    def project(part, h):
        if part == "out":
            return F.linear(cut(attention.out_proj, h), attention.out_proj.weight, attention.out_proj.bias)
        return {"q": q, "k": k, "v": v}[part]

    h = block.norm1(x + hand_attention(x, x, x, project, HEADS))
    hidden = F.relu(F.linear(cut(block.linear1, h), block.linear1.weight, block.linear1.bias))
    return block.norm2(h + F.linear(cut(block.linear2, hidden), block.linear2.weight, block.linear2.bias))


def output_error(model, x, y):
    """e: the gradient of the mean cross-entropy at the logits, from a plain forward by hand."""
    with torch.no_grad():
        logits = model.head(hand_block(model.embed(x), model.block).mean(1))
        return (logits.softmax(-1) - F.one_hot(y, logits.shape[-1])) / x.shape[0]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("placement", ["layer", "block"])
def test_dfa_placements_match_a_hand_computation_on_one_block(placement):
    torch.manual_seed(0)
    model = OneBlock()
    convert(model, "dfa", seed=2, input_shape=(TARGETS, 4), placement=placement, quiet=True)
    x, y = torch.randn(BATCH, TARGETS, 4), torch.tensor([0, 2, 1])
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()

    dfa = HandDFA(output_error(model, x, y))
    if placement == "layer":
        out = hand_block(model.embed(x), model.block, dfa)
    else:
        assert not [name for name, _ in model.block.named_buffers() if name.endswith("feedback_weight")
                    and not name.startswith("dfa_feedback")]  # BP inside the block
        out = hand_block(model.embed(x), model.block)
        # the block's output gets e @ B_b on every token, divided by sqrt(tokens) (TinyDFA's convention)
        signal = (dfa.error @ model.block.dfa_feedback.feedback_weight) / math.sqrt(TARGETS)
        out = dfa.cut(out, signal.unsqueeze(1).expand_as(out))
    logits = model.head(dfa.layer(out.mean(1), model.head.feedback_weight))
    surrogate = F.cross_entropy(logits, y) + sum(dfa.terms)
    names, params = zip(*model.named_parameters())
    expected = torch.autograd.grad(surrogate, params)
    for name, param, grad in zip(names, params, expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-9, atol=1e-12, msg=name)


class Pooled(nn.Module):
    """A batch-first sequence model, its tokens averaged, then a head."""

    def __init__(self, body, classes=3):
        super().__init__()
        self.body, self.head = body, nn.Linear(WIDTH, classes)

    def forward(self, x):
        return self.head(self.body(x).mean(1))


def encoder(layers=2, **options):
    layer = nn.TransformerEncoderLayer(WIDTH, HEADS, dim_feedforward=6, dropout=0.0, batch_first=True, **options)
    return nn.TransformerEncoder(layer, layers)


@pytest.mark.usefixtures("float64")
def test_a_transformer_encoder_converts_with_its_own_feedback_per_layer_and_bp_is_plain():
    torch.manual_seed(0)
    plain = encoder(layers=3)
    model = convert(copy.deepcopy(plain), "fa", seed=0, quiet=True)
    first, second = model.layers[1:]  # (the first layer of all, layers.0's in_proj, sends no error down)
    for name in ("self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2"):
        b1, b2 = first.get_submodule(name).feedback_weight, second.get_submodule(name).feedback_weight
        assert not torch.equal(b1, b2), name  # drawn after nn.TransformerEncoder's deep copies
    dfa = convert(Pooled(copy.deepcopy(plain)), "dfa", input_shape=(TARGETS, WIDTH), placement="block", quiet=True)
    points = [layer.dfa_feedback.feedback_weight for layer in dfa.body.layers]
    assert not torch.equal(points[0], points[1]) and not torch.equal(points[1], points[2])
    fresh = Pooled(encoder(layers=3))
    fresh.load_state_dict(plain_state_dict(dfa))  # the block points' feedback is left out
    dfa.load_state_dict(fresh.state_dict())  # and kept when a plain checkpoint loads
    torch.testing.assert_close(dfa.body.layers[0].dfa_feedback.feedback_weight, points[0])
    convert(dfa, "fa", quiet=True)  # converting again removes the points and their hooks
    assert not [name for name, _ in dfa.named_modules() if name.endswith("dfa_feedback")]
    assert not any(layer._forward_hooks for layer in dfa.body.layers)

    convert(model, "bp", quiet=True)
    assert not [name for name, _ in model.named_buffers() if "feedback" in name]
    x, mask = randn(BATCH, TARGETS, WIDTH), bool_mask(TARGETS, TARGETS)
    outputs, grads = [], []
    for net in (plain, model):
        net.zero_grad()
        x.grad = None
        out = net(x, mask=mask, src_key_padding_mask=padding(TARGETS))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-12)
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    plain.eval(), model.eval()
    with torch.no_grad():  # inference: PyTorch's fast paths (nested tensors for the padding) as in the plain model
        expected = plain(x, src_key_padding_mask=padding(TARGETS))
        torch.testing.assert_close(model(x, src_key_padding_mask=padding(TARGETS)), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("dims", [{}, {"kdim": 3, "vdim": 5}])
def test_plain_attention_checkpoints_load_and_plain_state_dict_goes_back(dims):
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(WIDTH, HEADS, **dims)
    saved = {k: v.clone() for k, v in plain.state_dict().items()}
    weight = plain.out_proj.weight
    model = convert(AfterAFirstLayer(plain), "fa", quiet=True)
    attention = model.attention
    assert attention.out_proj.weight is weight  # the same Parameters, not copies
    assert {k for k in attention.state_dict() if "feedback" not in k} == set(saved)
    drawn = attention.out_proj.feedback_weight.clone()
    attention.load_state_dict(saved)  # a plain checkpoint loads; the drawn feedback stays
    torch.testing.assert_close(attention.out_proj.feedback_weight, drawn)
    back = nn.MultiheadAttention(WIDTH, HEADS, **dims)
    back.load_state_dict(plain_state_dict(attention))
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_layernorm_is_named_as_exact_and_attention_is_not(capsys):
    convert(encoder(), "fa")
    err = capsys.readouterr().err
    assert "exact gradients kept: LayerNorm (4)" in err and "MultiheadAttention" not in err
    convert(nn.MultiheadAttention(WIDTH, HEADS, add_bias_kv=True), "fa")  # bias_k, bias_v: no rule reaches them
    assert "exact gradients kept: MultiheadAttention (1)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"no rule reaches LayerNorm \(4\)"):
        convert(encoder(), "fa", strict=True)


@pytest.mark.parametrize("call,message", [
    (lambda: convert(OneBlock(), "dfa", input_shape=(TARGETS, 4), placement="nowhere"),
     "rule 'dfa' option placement='nowhere' is not one of layer, block"),
    (lambda: convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "dfa", input_shape=(4,),
                     placement="block"),
     "DFA placement='block' sends the error to each transformer block's output, but Sequential has none"),
    (lambda: make_rule("dfa", placement="block").attach(build_network("fc", "mnist", 10),
                                                        torch.Generator(), (1, 28, 28)),
     "DFA placement='block' sends the error to each transformer block's output, but"),
    (lambda: convert(OneBlock(batch_first=False), "dfa", input_shape=(TARGETS, 4)),
     "DFA placement='layer' sends e @ B_l to each layer's input with the batch first, but 'block' "
     "(TransformerEncoderLayer) runs its layers sequence first"),
])
def test_bad_dfa_placements_are_one_line(call, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        call()
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2


@pytest.mark.usefixtures("float64")
def test_dfa_block_placement_on_a_sequence_first_block_broadcasts_over_its_tokens():
    torch.manual_seed(0)
    model = OneBlock(batch_first=False)
    plain_block = copy.deepcopy(model.block)
    convert(model, "dfa", seed=2, input_shape=(TARGETS, 4), placement="block", quiet=True)
    x, y = torch.randn(BATCH, TARGETS, 4), torch.tensor([0, 2, 1])
    h = model.embed(x).transpose(0, 1).detach().requires_grad_(True)  # (tokens, batch, width)
    logits = model.head(model.block(h).mean(0))
    F.cross_entropy(logits, y).backward()
    error = (logits.detach().softmax(-1) - F.one_hot(y, 3)) / BATCH
    leaf = h.detach().requires_grad_(True)
    out = plain_block(leaf)
    signal = (error @ model.block.dfa_feedback.feedback_weight / math.sqrt(TARGETS)).unsqueeze(0).expand_as(out)
    expected = torch.autograd.grad(out, leaf, signal)[0]
    torch.testing.assert_close(h.grad, expected, rtol=1e-9, atol=1e-12)
