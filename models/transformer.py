"""Pre-norm Transformer encoder for sequences: classification, forecasting, token text and
character language models (causal), with images read as sequences of rows or patches.

Inputs as the rnn family takes them: (B, T) integer tokens when the data has a vocabulary
(index 0 is padding, never attended to), (B, T, F) feature sequences, or (B, C, H, W) images
(H rows of C*W values, or (H/p)*(W/p) patches of C*p*p values with `patch_size` p).
Attention runs through `torch.nn.functional.scaled_dot_product_attention` (fused kernels on
GPU); `attention_maps` recomputes the weights explicitly for figures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.configs import TransformerConfig
from models.layers import head
from models.registry import DataSpec, register_model


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.heads, self.dropout = config.heads, config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape  # -> three (B, heads, T, d / heads)
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        return self.out(y.transpose(1, 2).flatten(2))  # (B, heads, T, dh) -> (B, T, D)

    def weights(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The attention weights forward uses, (B, heads, T, T), computed explicitly."""
        q, k, _ = self._qkv(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1)


class Block(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x)): pre-norm keeps deep stacks trainable
    without warmup tricks."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = SelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.ff_mult * d), nn.GELU(), nn.Linear(config.ff_mult * d, d)
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x), mask, causal))
        return x + self.drop(self.mlp(self.norm2(x)))


def sinusoidal(length: int, d: int) -> torch.Tensor:
    """The fixed positions of "Attention Is All You Need": sines and cosines of geometric
    wavelengths, (length, d)."""
    position = torch.arange(length, dtype=torch.float).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float) * (-math.log(10000.0) / d))
    table = torch.zeros(length, d)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : d // 2]
    return table


def _small_init(module: nn.Module) -> None:
    """GPT-2's initialisation: weights from N(0, 0.02), zero biases. PyTorch's default gives
    embeddings unit variance, which drowns the positions and slows early training."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig, spec: DataSpec):
        super().__init__()
        if config.d_model % config.heads:
            raise ValueError(f"d_model {config.d_model} must be a multiple of heads {config.heads}")
        self.config, self.per_step = config, spec.per_step
        self.tokens = bool(spec.vocab_size)
        self.patch = config.patch_size
        shape = spec.input_shape
        if self.tokens:
            self.embed = nn.Embedding(spec.vocab_size, config.d_model)
            length = shape[0]
        elif len(shape) == 3:
            c, h, w = shape
            p = self.patch
            if p and (h % p or w % p):
                raise ValueError(f"patch_size {p} must divide the image size {h}x{w}")
            length = (h // p) * (w // p) if p else h
            self.embed = nn.Linear(c * p * p if p else c * w, config.d_model)
        else:
            length = shape[0]
            self.embed = nn.Linear(math.prod(shape[1:]), config.d_model)
        if config.positions == "learned":
            self.position = nn.Parameter(torch.randn(length, config.d_model) * 0.02)
        else:
            self.register_buffer("position", sinusoidal(length, config.d_model), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = head(config.d_model, spec.outputs, spec.binary)
        self.apply(_small_init)

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) inputs -> (B, T, F) token vectors before embedding."""
        if x.dim() != 4:
            return x
        if not self.patch:
            return x.permute(0, 2, 1, 3).flatten(2)  # (B, C, H, W) -> (B, H, C*W)
        p = self.patch  # (B, C, H, W) -> (B, H/p * W/p, C*p*p), patches row by row
        return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token vectors with positions, and the attention mask: (B, 1, 1, T) keys that are
        not padding when token text is padded, else None."""
        mask = None
        if self.tokens and not self.per_step:
            keep = x != 0
            keep = keep | ~keep.any(1, keepdim=True)  # an all-padding row attends to all
            mask = keep[:, None, None, :]
        h = self.embed(x if self.tokens else self._sequence(x))
        t = h.shape[1]
        return self.drop(h + self.position[:t]), mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = self._embed(x)
        for block in self.blocks:
            h = block(h, mask, causal=self.per_step)
        h = self.norm(h)
        if self.per_step:
            return self.head(h)  # (B, T, outputs): next-token logits at every step
        if mask is None:
            return self.head(h.mean(1))  # the mean over positions -> (B, outputs)
        keep = mask[:, 0, 0, :, None].to(h.dtype)  # padding left out of the mean
        return self.head((h * keep).sum(1) / keep.sum(1))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Each layer's attention weights, averaged over heads: (layers, B, T, T)."""
        h, mask = self._embed(x)
        if self.per_step:
            t = h.shape[1]
            mask = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
        maps = []
        for block in self.blocks:
            maps.append(block.attention.weights(block.norm1(h), mask).mean(1))
            h = block(h, None if self.per_step else mask, causal=self.per_step)
        return torch.stack(maps)


@register_model("transformer", TransformerConfig)
def build_transformer(*, config: TransformerConfig, spec: DataSpec) -> Transformer:
    return Transformer(config, spec)
