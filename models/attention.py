"""``nn.MultiheadAttention`` whose projections a learning rule can change.

PyTorch's attention keeps its input projection as bare Parameters (one packed
3E x E ``in_proj_weight``, or ``q/k/v_proj_weight`` when ``kdim``/``vdim``
differ from E) and hands them, with ``out_proj``'s, to a functional that never
calls ``out_proj``: swapping its layers changes nothing. biobench's
:class:`MultiheadAttention` holds **the same Parameters under the same names**
(so ``state_dict`` keys stay the plain module's) and runs its projections
through feedback layers: ``in_proj`` over the packed weight (or ``q_proj``,
``k_proj``, ``v_proj`` over the separate ones) and ``out_proj``; the scores,
softmax and weighted sum between them stay exact (BP), as in every FA-family
paper. :meth:`MultiheadAttention.parts` names the q, k, v and out parts.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .feedback import LinearOps, apply_feedback
from .layers import FeedbackLayer, Linear


class InProjection(FeedbackLayer, nn.Module):
    """A feedback layer over an input-projection weight its attention module
    holds (``weight_name``) and rows ``bias_rows`` of the module's
    ``in_proj_bias`` (None: all of it). It owns no Parameter, so no
    ``state_dict`` key beyond the rule's feedback. ``forward(x, rows)`` projects
    by some rows only (a packed projection's q, or k and v): W's, b's and, as
    FA's and sign symmetry's feedback is elementwise, B's same rows."""

    def __init__(self, owner, weight_name, bias_rows=None):
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a child module: the owner holds this layer
        self.weight_name, self.bias_rows = weight_name, bias_rows
        self.ops = LinearOps()

    @property
    def weight(self):
        return getattr(self._owner, self.weight_name)

    @property
    def bias(self):
        bias = self._owner.in_proj_bias
        return bias if bias is None or self.bias_rows is None else bias[self.bias_rows]

    def fan_in_out(self):
        # The packed weight's own: PyTorch draws it with Xavier over all 3E rows.
        return self.weight.shape[1], self.weight.shape[0]

    def exact(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def forward(self, x, rows=None):
        if rows is None:
            return self.run(x, self.weight, self.bias)
        weight, bias = self.weight[rows], None if self.bias is None else self.bias[rows]
        if self.rule is not None and torch.is_grad_enabled():
            backward_weight, route = self.rule.backward_operand(self, self.weight)
            if route is None:  # a matrix of W's shape; DFA's route sends e @ B to the input whatever the rows
                backward_weight = backward_weight[rows]
            return apply_feedback(x, weight, bias, backward_weight, self.ops, route)
        return self.exact(x, weight, bias)

    def extra_repr(self):
        return f"{self.weight_name}" + ("" if self.bias_rows is None else f", in_proj_bias[{self.bias_rows}]")


class AttentionPart(NamedTuple):
    """One of attention's q, k, v, out projections: the feedback layer it runs
    on and its rows of that layer's W, b and B (None: all)."""
    layer: FeedbackLayer
    rows: slice | None

    def of(self, matrix):
        """This part's rows of ``matrix`` (the layer's weight, feedback, or a gradient of either)."""
        return matrix if self.rows is None else matrix[self.rows]


class MultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (same constructor, forward and Parameters)
    whose four projections are feedback layers. Its forward is PyTorch's
    composite one, batch first inside, with ``scaled_dot_product_attention``
    when no weights are asked for; it gives up only PyTorch's inference fast
    path (``torch._native_multi_head_attention``), which would bypass the
    layers (and the traces that find them), except for nested tensors, which
    only that path takes and which never carry gradients."""

    def __init__(self, embed_dim, num_heads, *args, **kwargs):
        super().__init__(embed_dim, num_heads, *args, **kwargs)
        plain_out = self.out_proj
        del self.out_proj  # registered again after the input projection: registration order is forward order
        if self._qkv_same_embed_dim:
            self.in_proj = InProjection(self, "in_proj_weight")
        else:
            width = self.embed_dim
            for index, part in enumerate("qkv"):
                setattr(self, f"{part}_proj",
                        InProjection(self, f"{part}_proj_weight", slice(index * width, (index + 1) * width)))
        with torch.device("meta"):  # it takes plain_out's Parameters, drawn as PyTorch draws them
            self.out_proj = Linear(embed_dim, embed_dim, bias=plain_out.bias is not None)
        self.out_proj.weight, self.out_proj.bias = plain_out.weight, plain_out.bias

    @classmethod
    def converted(cls, plain):
        """``plain`` (an nn.MultiheadAttention) as this class, holding its Parameters."""
        with torch.device("meta"):  # no second copy of the weights, even briefly
            attention = cls(plain.embed_dim, plain.num_heads, dropout=plain.dropout,
                            bias=plain.in_proj_bias is not None, add_bias_kv=plain.bias_k is not None,
                            add_zero_attn=plain.add_zero_attn, kdim=plain.kdim, vdim=plain.vdim,
                            batch_first=plain.batch_first)
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                     "bias_k", "bias_v"):
            setattr(attention, name, getattr(plain, name))
        attention.out_proj.weight, attention.out_proj.bias = plain.out_proj.weight, plain.out_proj.bias
        attention.train(plain.training)
        return attention

    def parts(self):
        """``{"q", "k", "v", "out": AttentionPart}``: where each projection's W, b and B are."""
        width = self.embed_dim
        if self._qkv_same_embed_dim:
            inner = {part: AttentionPart(self.in_proj, slice(index * width, (index + 1) * width))
                     for index, part in enumerate("qkv")}
        else:
            inner = {part: AttentionPart(getattr(self, f"{part}_proj"), None) for part in "qkv"}
        return {**inner, "out": AttentionPart(self.out_proj, None)}

    def _in_projection(self, query, key, value):
        """q, k, v, each (batch, length, E); a shared input is projected once (self-attention: one call)."""
        width = self.embed_dim
        if not self._qkv_same_embed_dim:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if query is key and key is value:
            return self.in_proj(query).chunk(3, dim=-1)
        q = self.in_proj(query, slice(0, width))
        if key is value:
            return (q, *self.in_proj(key, slice(width, None)).chunk(2, dim=-1))
        return q, self.in_proj(key, slice(width, 2 * width)), self.in_proj(value, slice(2 * width, None))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if query.is_nested:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        batched = query.dim() == 3
        if not batched:  # one sequence: a batch of one
            query, key, value = _each(lambda t: t.unsqueeze(0), query, key, value)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = _each(lambda t: t.transpose(0, 1), query, key, value)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        # As PyTorch: the hint replaces the mask only where nothing else needs the mask.
        causal = is_causal and key_padding_mask is None and not need_weights
        padding = _additive(key_padding_mask, query.dtype)
        mask = None if causal else _additive(attn_mask, query.dtype)
        q, k, v = self._in_projection(query, key, value)
        batch, targets, width = q.shape
        heads, size = self.num_heads, self.head_dim
        if mask is not None:  # (L, S) or (batch * heads, L, S) -> broadcastable to (batch, heads, L, S)
            mask = mask.view(1, 1, *mask.shape) if mask.dim() == 2 else mask.reshape(batch, heads, *mask.shape[1:])
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, width)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, width)], dim=1)
            mask, padding = _one_more_key(mask), _one_more_key(padding)

        def split(t):  # (batch, length, E) -> (batch, heads, length, head_dim)
            return t.reshape(batch, t.shape[1], heads, size).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        if self.add_zero_attn:
            k, v = (torch.cat([t, t.new_zeros(batch, heads, 1, size)], dim=2) for t in (k, v))
            mask, padding = _one_more_key(mask), _one_more_key(padding)
        if padding is not None:
            padding = padding.view(batch, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / size)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(dim=-1)
            if dropout > 0:  # PyTorch returns the weights after dropout
                weights = F.dropout(weights, p=dropout)
            context = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            context = F.scaled_dot_product_attention(q, k, v, mask, dropout, is_causal=causal)
        out = self.out_proj(context.transpose(1, 2).reshape(batch, targets, width))
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _each(function, *tensors):
    """``function`` of each tensor, applied once per distinct tensor so that ``query is key`` stays true."""
    done = {}
    for tensor in tensors:
        if id(tensor) not in done:
            done[id(tensor)] = function(tensor)
    return [done[id(tensor)] for tensor in tensors]


def _additive(mask, dtype):
    """A mask as PyTorch's attention adds it: a boolean one's True is -inf."""
    if mask is None or mask.is_floating_point():
        return mask
    if mask.dtype is not torch.bool:
        raise TypeError(f"attention masks are boolean or floating point, not {mask.dtype}")
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


def _one_more_key(mask):
    """A mask for one more key (bias_k's, or the zero attention's), which nothing masks."""
    return None if mask is None else F.pad(mask, (0, 1))
