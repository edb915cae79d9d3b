"""Encoder-decoder models that translate one token sequence into another (dates written out in
words into ISO dates, a user's sentence pairs).

Source: (B, S) token ids, 0 padding. Target: (B, T) ids with PAD 0, UNK 1, BOS 2, EOS 3 (the
order `pipeline.data.seq2seq` writes). `forward(src, tgt_in)` gives the teacher-forced logits
(B, T, V) for training; `forward(src)` decodes greedily and gives (B, spec.horizon) ids.

Two architectures:
- recurrent (GRU/LSTM): a bidirectional encoder; the decoder runs over its inputs and each of
  its states attends to the encoder states (Luong's global attention, scored additively as in
  Bahdanau et al. or by a scaled dot product), the context and the state combined predict the
  next token. The decoder never feeds its context back into its own recurrence, so teacher
  forcing is one call of the cell over the whole target.
- transformer: pre-norm blocks (`models.transformer.Block`) in the encoder; decoder blocks
  with causal self-attention and cross-attention to the encoder, all through
  `scaled_dot_product_attention`.

Decoding (greedy and beam search) re-reads the whole prefix at each step: targets are short
and one code path serves both architectures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.configs import Seq2SeqConfig, TransformerConfig
from models.registry import DataSpec, register_model
from models.transformer import Block, SelfAttention, _small_init, sinusoidal

PAD, UNK, BOS, EOS = 0, 1, 2, 3
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class CrossAttention(nn.Module):
    """Decoder positions (queries) reading encoder states (keys and values)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.kv, self.out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def _qkv(self, x: torch.Tensor, memory: torch.Tensor):
        (b, t, d), s, h = x.shape, memory.shape[1], self.heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(memory).view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x, memory, mask):
        q, k, v = self._qkv(x, memory)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).flatten(2))

    def weights(self, x, memory, mask) -> torch.Tensor:
        """(B, T, S): the weights forward uses, averaged over heads."""
        q, k, _ = self._qkv(x, memory)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, -math.inf)
        return scores.softmax(-1).mean(1)


class DecoderBlock(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = SelfAttention(config)
        self.cross = CrossAttention(d, config.heads, config.dropout)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.ff_mult * d), nn.GELU(), nn.Linear(config.ff_mult * d, d)
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, memory, mask, align: bool = False):
        x = x + self.drop(self.attention(self.norm1(x), None, causal=True))
        weights = self.cross.weights(self.norm2(x), memory, mask) if align else None
        x = x + self.drop(self.cross(self.norm2(x), memory, mask))
        return x + self.drop(self.mlp(self.norm3(x))), weights


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig, spec: DataSpec):
        super().__init__()
        d = config.hidden_size
        self.config, self.max_len = config, spec.horizon
        self.recurrent = config.architecture != "transformer"
        self.drop = nn.Dropout(config.dropout)
        if self.recurrent:
            if d % 2:
                raise ValueError(f"hidden_size {d} must be even (two encoder directions)")
            e = config.embedding_dim
            self.src_embed = nn.Embedding(spec.vocab_size, e, padding_idx=PAD)
            self.tgt_embed = nn.Embedding(spec.num_classes, e, padding_idx=PAD)
            cell = CELLS[config.architecture]
            self.encoder = cell(e, d // 2, config.layers, batch_first=True, bidirectional=True)
            self.decoder = cell(e, d, config.layers, batch_first=True)
            self.bridge = nn.Linear(d, d)  # the encoder's last states -> the decoder's first
            if config.attention == "additive":
                self.query, self.key = nn.Linear(d, d, bias=False), nn.Linear(d, d)
                self.energy = nn.Linear(d, 1, bias=False)
            self.combine = nn.Linear(2 * d, d)
        else:
            if d % config.heads:
                raise ValueError(f"hidden_size {d} must be a multiple of heads {config.heads}")
            blocks = TransformerConfig(d_model=d, heads=config.heads, dropout=config.dropout)
            self.src_embed = nn.Embedding(spec.vocab_size, d, padding_idx=PAD)
            self.tgt_embed = nn.Embedding(spec.num_classes, d, padding_idx=PAD)
            length = max(spec.input_shape[0], spec.horizon + 1)
            self.register_buffer("position", sinusoidal(length, d), persistent=False)
            self.encoder = nn.ModuleList(Block(blocks) for _ in range(config.layers))
            self.decoder = nn.ModuleList(DecoderBlock(blocks) for _ in range(config.layers))
            self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
            self.apply(_small_init)
        self.head = nn.Linear(d, spec.num_classes)

    # -- encoder and one decoder pass -------------------------------------------------------

    def encode(self, src: torch.Tensor):
        """-> (memory (B, S, d), mask (B, S) of real tokens, the decoder's first state)."""
        keep = src != PAD
        keep = keep | ~keep.any(1, keepdim=True)  # an empty source attends to its padding
        if not self.recurrent:
            h = self.drop(self.src_embed(src) + self.position[: src.shape[1]])
            for block in self.encoder:
                h = block(h, keep[:, None, None, :], causal=False)
            return self.enc_norm(h), keep, None
        lengths = keep.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.drop(self.src_embed(src)), lengths, batch_first=True, enforce_sorted=False
        )
        out, last = self.encoder(packed)
        memory, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=src.shape[1]
        )
        h = last[0] if isinstance(last, tuple) else last  # LSTM: (h, c)
        first = torch.tanh(self.bridge(torch.cat([h[-2], h[-1]], -1)))  # both directions
        state = first.expand(self.config.layers, -1, -1).contiguous()
        if self.config.architecture == "lstm":
            state = (state, torch.zeros_like(state))
        return memory, keep, state

    def decode(self, encoded, prefix: torch.Tensor, align: bool = False):
        """Logits (B, T, V) after each token of `prefix` (B, T); with `align`, also the
        attention over source positions (B, T, S) that produced them (last layer)."""
        memory, keep, state = encoded
        if not self.recurrent:
            h = self.drop(self.tgt_embed(prefix) + self.position[: prefix.shape[1]])
            for block in self.decoder:
                h, weights = block(h, memory, keep[:, None, None, :], align)
            return self.head(self.dec_norm(h)), weights
        out, _ = self.decoder(self.drop(self.tgt_embed(prefix)), state)  # (B, T, d)
        if self.config.attention == "additive":
            energy = torch.tanh(self.query(out)[:, :, None] + self.key(memory)[:, None])
            scores = self.energy(energy).squeeze(-1)
        else:
            scores = out @ memory.transpose(1, 2) / math.sqrt(out.shape[-1])
        weights = scores.masked_fill(~keep[:, None, :], -math.inf).softmax(-1)  # (B, T, S)
        h = torch.tanh(self.combine(torch.cat([out, weights @ memory], -1)))
        return self.head(self.drop(h)), weights if align else None

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor | None = None) -> torch.Tensor:
        if tgt_in is None:
            return self.greedy(src)
        return self.decode(self.encode(src), tgt_in)[0]

    # -- decoding ---------------------------------------------------------------------------

    def _next(self, encoded, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the next token (B, V); padding and BOS are never produced."""
        logits = self.decode(encoded, prefix)[0][:, -1].float()
        logits[:, [PAD, BOS]] = -math.inf
        return logits.log_softmax(-1)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor) -> torch.Tensor:
        """(B, horizon) ids: the likeliest token at each step, PAD after EOS."""
        encoded = self.encode(src)
        ids = torch.full((len(src), 1), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros(len(src), dtype=torch.bool, device=src.device)
        for _ in range(self.max_len):
            token = self._next(encoded, ids).argmax(-1).masked_fill(done, PAD)
            ids = torch.cat([ids, token[:, None]], 1)
            done |= token == EOS
            if done.all():
                break
        return F.pad(ids[:, 1:], (0, self.max_len + 1 - ids.shape[1]), value=PAD)

    @torch.no_grad()
    def beam_search(self, src: torch.Tensor, width: int) -> torch.Tensor:
        """(B, horizon) ids: the likeliest of `width` hypotheses kept at each step (by the sum
        of log-probabilities); a finished hypothesis keeps its score."""
        b, device = len(src), src.device
        memory, keep, state = self.encode(src)
        repeat = lambda t: t.repeat_interleave(width, 0)  # noqa: E731 - beams of one source
        if state is not None:  # (layers, B, d): beams on dimension 1
            state = (
                tuple(s.repeat_interleave(width, 1) for s in state)
                if isinstance(state, tuple)
                else state.repeat_interleave(width, 1)
            )
        encoded = (repeat(memory), repeat(keep), state)
        ids = torch.full((b * width, 1), BOS, dtype=torch.long, device=device)
        scores = torch.full((b, width), -math.inf, device=device)
        scores[:, 0] = 0.0  # one hypothesis to start from, not `width` copies of it
        finished = torch.zeros(b * width, dtype=torch.bool, device=device)
        for _ in range(self.max_len):
            logp = self._next(encoded, ids)  # (B*w, V)
            stay = torch.full_like(logp, -math.inf)
            stay[:, PAD] = 0.0  # a finished hypothesis continues with padding, at no cost
            logp = torch.where(finished[:, None], stay, logp)
            vocab = logp.shape[1]
            total = (scores.reshape(-1, 1) + logp).view(b, width * vocab)
            scores, index = total.topk(width, dim=1)
            parent = (torch.arange(b, device=device)[:, None] * width + index // vocab).flatten()
            token = (index % vocab).flatten()
            ids = torch.cat([ids[parent], token[:, None]], 1)
            finished = finished[parent] | (token == EOS)
            if finished.all():
                break
        best = ids.view(b, width, -1)[torch.arange(b, device=device), scores.argmax(1), 1:]
        return F.pad(best, (0, self.max_len - best.shape[1]), value=PAD)

    @torch.no_grad()
    def alignment(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """(B, T, S): which source positions each output token attended to (last layer)."""
        return self.decode(self.encode(src), tgt_in, align=True)[1]


@register_model("seq2seq", Seq2SeqConfig)
def build_seq2seq(*, config: Seq2SeqConfig, spec: DataSpec) -> Seq2Seq:
    return Seq2Seq(config, spec)
