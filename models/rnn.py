"""Recurrent models (LSTM or GRU) for sequences: classification, forecasting, token text.

Inputs: (B, T, F) feature sequences; (B, C, H, W) images read row by row as H steps of C*W
features ("sequential MNIST"); or (B, T) integer tokens when the data has a vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.configs import RNNConfig
from models.layers import head
from models.registry import DataSpec, register_model

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNN(nn.Module):
    def __init__(self, config: RNNConfig, spec: DataSpec):
        super().__init__()
        if config.cell not in CELLS:
            raise ValueError(f"unknown cell {config.cell!r}; choose from {', '.join(CELLS)}")
        self.embedding = None
        if spec.vocab_size:
            self.embedding = nn.Embedding(spec.vocab_size, config.embedding_dim, padding_idx=0)
            features = config.embedding_dim
        elif len(spec.input_shape) == 3:
            features = spec.input_shape[0] * spec.input_shape[2]  # C*W per row
        else:
            features = math.prod(spec.input_shape[1:])
        self.rnn = CELLS[config.cell](
            features,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        directions = 2 if config.bidirectional else 1
        self.dropout = nn.Dropout(config.dropout)
        self.head = head(config.hidden_size * directions, spec.outputs, spec.binary)
        self.per_step = spec.per_step
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                nn.init.orthogonal_(param)  # keeps recurrent gradients well-conditioned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)  # (B, T) -> (B, T, E)
        elif x.dim() == 4:
            x = x.permute(0, 2, 1, 3).flatten(2)  # (B, C, H, W) -> (B, H, C*W)
        out, _ = self.rnn(x)  # (B, T, F) -> (B, T, H * directions)
        if self.per_step:
            return self.head(self.dropout(out))  # (B, T, outputs): e.g. next-token logits
        return self.head(self.dropout(out[:, -1]))  # last step -> (B, outputs)


@register_model("rnn", RNNConfig)
def build_rnn(*, config: RNNConfig, spec: DataSpec) -> RNN:
    return RNN(config, spec)
