"""``vit``: a small Vision Transformer (Dosovitskiy et al. 2021) for 28x28 and
32x32 images, built from standard modules so that biobench converts it like
any user's model.

Patches (a Conv2d with kernel = stride = patch, MNIST 7x7 -> 16 tokens,
CIFAR-10 4x4 -> 64), a class token, learned position embeddings, ``DEPTH``
pre-norm blocks (``x + attention(norm1(x))``, then ``x + mlp(norm2(x))``; the
attention an ``nn.MultiheadAttention`` that ``swap_layers`` turns into
biobench's, the MLP Linear, GELU, Linear), a final LayerNorm on the class
token and a linear head. No dropout. Each :class:`ViTBlock` is a transformer
block for DFA's ``placement="block"`` (``dfa_block = True``). The class token
and position embeddings are plain Parameters: no rule reaches them, their
gradients are exact.

Init: class token and position embeddings truncated normal, std 0.02, as ViT
does; the patch embedding truncated normal, std sqrt(1 / fan_in), as
torchvision's ViT does; every Linear (the attention's projections included)
Glorot uniform with zero biases, the range the rules draw their random
feedback in, so |B| ~ |W| at init as in the other built-in nets; LayerNorm
gain 1, bias 0.
"""
import math

import torch
from torch import nn

from .inputs import INPUT_SHAPES

WIDTH, DEPTH, HEADS, MLP_WIDTH = 64, 4, 4, 256
PATCH = {"mnist": 7, "cifar10": 4}


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attention(norm1(x))``, then ``x + mlp(norm2(x))``, batch first."""

    dfa_block = True

    def __init__(self, width, heads, mlp_width):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_width), nn.GELU(), nn.Linear(mlp_width, width))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]  # one tensor: one projection (self-attention)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, input_shape, num_classes, patch, width=WIDTH, depth=DEPTH, heads=HEADS, mlp_width=MLP_WIDTH):
        super().__init__()
        channels, height, image_width = input_shape
        if height % patch or image_width % patch:
            raise ValueError(f"patch {patch} does not tile {height}x{image_width} images")
        tokens = (height // patch) * (image_width // patch) + 1  # the patches and the class token
        self.patch_embedding = nn.Conv2d(channels, width, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.Sequential(*(ViTBlock(width, heads, mlp_width) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.class_token, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        nn.init.trunc_normal_(self.patch_embedding.weight, std=math.sqrt(1.0 / (channels * patch * patch)))
        nn.init.zeros_(self.patch_embedding.bias)
        for module in self.modules():
            if isinstance(module, nn.Linear):  # nn.MultiheadAttention's out_proj too; in_proj is already Glorot
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (batch, patches, width)
        h = torch.cat([self.class_token.expand(len(x), -1, -1), tokens], dim=1) + self.position_embedding
        return self.head(self.norm(self.blocks(h)[:, 0]))


def vision_transformer(family, num_classes):
    if family not in PATCH:
        raise ValueError(f"architecture 'vit' is defined for mnist (1x28x28) and cifar10 (3x32x32) inputs, "
                         f"not {family}")
    return VisionTransformer(INPUT_SHAPES[family], num_classes, PATCH[family])
