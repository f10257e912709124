"""FireRedASR AED in our own PyTorch code: conformer encoder + transformer decoder.

Module and parameter names follow the official checkpoint exactly
(FireRedTeam/FireRedASR fireredasr/models/module/*.py), so `model.pth.tar`
loads with strict=True at any dimensions its `args` give. The computation is the
official one, written so it traces to ONNX with dynamic lengths: masks are built
arithmetically (the original `(L+3)//4` rule) instead of by a Python loop, and
the positional tables can be computed in-graph instead of stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# Both official PE tables are built for 5000 positions; the encoder ignores pe_maxlen.
ENC_PE_MAX_LEN = 5000
SUBSAMPLE_CONTEXT = 7  # two k3/s2 convs: 3 left + current + 3 right; the encoder pads 6 frames


@dataclass(frozen=True)
class AedDims:
    """The `args` fields the official constructor reads (names as in the checkpoint)."""

    idim: int = 80
    odim: int = 7832  # vocabulary size
    d_model: int = 1280
    n_head: int = 20
    n_layers_enc: int = 16
    n_layers_dec: int = 16
    kernel_size: int = 33
    pe_maxlen: int = 5000  # decoder absolute PE length
    sos_id: int = 3
    eos_id: int = 4
    pad_id: int = 2
    residual_dropout: float = 0.1
    dropout_rate: float = 0.1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def _inv_freq(d_model: int) -> torch.Tensor:
    """w_i = exp(2i * -(ln 10000 / d)), float32, exactly as the official tables compute it."""
    return torch.exp(torch.arange(0, d_model, 2).float() * -(torch.log(torch.tensor(10000.0, device="cpu")).item() / d_model))


def sinusoid(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Interleaved [sin, cos] encoding; positions shape = (P,), returns shape = (P, d_model), float32."""
    angles = positions.float().unsqueeze(1) * _inv_freq(d_model).to(positions.device)
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(positions.shape[0], d_model)


def encoder_lengths(x_len: torch.Tensor) -> torch.Tensor:
    """Valid frames after 4x subsampling: ceil(L/4), the rule the published results used."""
    return torch.div(x_len + 3, 4, rounding_mode="floor")


class Conv2dSubsampling(nn.Module):
    def __init__(self, idim: int, d_model: int, out_channels: int = 32):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, out_channels, 3, 2), nn.ReLU(), nn.Conv2d(out_channels, out_channels, 3, 2), nn.ReLU()
        )
        self.out = nn.Linear(out_channels * (((idim - 1) // 2 - 1) // 2), d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: shape = (N, T+6, idim) -> shape = (N, T', d_model)."""
        x = self.conv(x.unsqueeze(1))
        n, c, t, f = x.size()
        return self.out(x.transpose(1, 2).reshape(n, t, c * f))


class RelPositionalEncoding(nn.Module):
    """Symmetric relative table: index k holds position 4999 - k; shape = (1, 9999, d)."""

    def __init__(self, d_model: int, max_len: int = ENC_PE_MAX_LEN):
        super().__init__()
        pos = torch.arange(max_len - 1, -max_len, -1)
        self.register_buffer("pe", sinusoid(pos, d_model).unsqueeze(0))
        self.d_model = d_model
        self.in_graph = False  # export: compute the 2T-1 rows instead of storing 9999

    def forward(self, t: int | torch.Tensor) -> torch.Tensor:
        """Positions T-1 .. -(T-1): shape = (1, 2T-1, d)."""
        if self.in_graph:
            return sinusoid(torch.arange(t - 1, -t, -1), self.d_model).unsqueeze(0)
        center = self.pe.size(1) // 2
        return self.pe[:, center - t + 1 : center + t]


class ConformerFeedForward(nn.Module):
    def __init__(self, d_model: int, dropout_rate: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, d_model * 4), nn.SiLU(), nn.Dropout(dropout_rate),
            nn.Linear(d_model * 4, d_model), nn.Dropout(dropout_rate),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x


class RelPosMultiHeadAttention(nn.Module):
    """Encoder MHSA: LayerNorm per q/k/v, no biases, rel-shift, scale after ac + bd."""

    def __init__(self, n_head: int, d_model: int, residual_dropout: float):
        super().__init__()
        self.n_head, self.d_k = n_head, d_model // n_head
        for name in ("w_qs", "w_ks", "w_vs", "fc", "linear_pos"):
            setattr(self, name, nn.Linear(d_model, d_model, bias=False))
        self.layer_norm_q, self.layer_norm_k, self.layer_norm_v = (nn.LayerNorm(d_model) for _ in range(3))
        self.pos_bias_u = nn.Parameter(torch.empty(n_head, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(n_head, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(residual_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """shape (N, T, d) -> (N, T, H, d_k)."""
        return x.reshape(x.size(0), x.size(1), self.n_head, self.d_k)

    @staticmethod
    def rel_shift(x: torch.Tensor) -> torch.Tensor:
        """(N, H, T, 2T-1) -> (N, H, T, T) with out[i, j] = x[i, T-1-i+j] (official Concat trick)."""
        n, h, t1, t2 = x.size()
        padded = torch.cat([x.new_zeros(n, h, t1, 1), x], dim=-1).reshape(n, h, t2 + 1, t1)
        return padded[:, :, 1:].reshape(n, h, t1, t2)[:, :, :, : t2 // 2 + 1]

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """x: (N, T, d); pos_emb: (1, 2T-1, d); attn_bias: (N, 1, 1, T) additive 0 / -inf."""
        q = self._heads(self.w_qs(self.layer_norm_q(x)))
        k = self._heads(self.w_ks(self.layer_norm_k(x))).transpose(1, 2)
        v = self._heads(self.w_vs(self.layer_norm_v(x))).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = self.rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        attn = torch.softmax((ac + bd) * (1.0 / math.sqrt(self.d_k)) + attn_bias, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(x.size(0), x.size(1), -1)
        return self.dropout(self.fc(out)) + x


class ConformerConvolution(nn.Module):
    def __init__(self, d_model: int, kernel_size: int, dropout_rate: float):
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(d_model)
        self.pointwise_conv1 = nn.Conv1d(d_model, d_model * 4, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(
            d_model * 2, d_model * 2, kernel_size, padding=(kernel_size - 1) // 2, groups=d_model * 2, bias=False
        )
        self.batch_norm = nn.LayerNorm(d_model * 2)  # the official name; it is a LayerNorm
        self.pointwise_conv2 = nn.Conv1d(d_model * 2, d_model, 1, bias=False)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: (N, T, d); keep: (N, 1, T) float 1 valid / 0 padded.

        The 1x1 convolutions run as channel-last matmuls (same weights, same sums):
        exported as MatMul they are what dynamic int8 quantization covers, and
        two of the three layout transposes disappear.
        """
        keep_t = keep.transpose(1, 2)  # (N, T, 1)
        out = F.glu(F.linear(self.pre_layer_norm(x) * keep_t, self.pointwise_conv1.weight.squeeze(-1)), dim=-1)
        out = self.depthwise_conv(out.transpose(1, 2)).transpose(1, 2)
        out = F.silu(self.batch_norm(out))
        out = self.dropout(F.linear(out, self.pointwise_conv2.weight.squeeze(-1))) * keep_t
        return out + x


class RelPosEmbConformerBlock(nn.Module):
    def __init__(self, d: AedDims):
        super().__init__()
        self.ffn1 = ConformerFeedForward(d.d_model, d.dropout_rate)
        self.mhsa = RelPosMultiHeadAttention(d.n_head, d.d_model, d.residual_dropout)
        self.conv = ConformerConvolution(d.d_model, d.kernel_size, d.dropout_rate)
        self.ffn2 = ConformerFeedForward(d.d_model, d.dropout_rate)
        self.layer_norm = nn.LayerNorm(d.d_model)

    def forward(self, x, pos_emb, attn_bias, keep):
        out = 0.5 * x + 0.5 * self.ffn1(x)  # macaron half step: ffn already adds its input
        out = self.mhsa(out, pos_emb, attn_bias)
        out = self.conv(out, keep)
        out = 0.5 * out + 0.5 * self.ffn2(out)
        return self.layer_norm(out)


class ConformerEncoder(nn.Module):
    def __init__(self, d: AedDims):
        super().__init__()
        self.input_preprocessor = Conv2dSubsampling(d.idim, d.d_model)
        self.positional_encoding = RelPositionalEncoding(d.d_model)
        self.dropout = nn.Dropout(d.residual_dropout)
        self.layer_stack = nn.ModuleList(RelPosEmbConformerBlock(d) for _ in range(d.n_layers_enc))

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, idim) float32, x_len: (N,) int64 -> enc (N, T', d), keep mask (N, 1, T') float32."""
        x = F.pad(x, (0, 0, 0, SUBSAMPLE_CONTEXT - 1))
        enc = self.dropout(self.input_preprocessor(x))
        t = enc.size(1)
        keep = (torch.arange(t, device=x.device).unsqueeze(0) < encoder_lengths(x_len).unsqueeze(1)).unsqueeze(1)
        attn_bias = torch.zeros_like(keep, dtype=enc.dtype).masked_fill(~keep, float("-inf")).unsqueeze(1)
        keep = keep.to(enc.dtype)
        pos_emb = self.dropout(self.positional_encoding(t))
        for layer in self.layer_stack:
            enc = layer(enc, pos_emb, attn_bias, keep)
        return enc, keep


class DecoderMultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.d_k = n_head, d_model // n_head
        self.w_qs = nn.Linear(d_model, d_model)
        self.w_ks = nn.Linear(d_model, d_model, bias=False)
        self.w_vs = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, d) -> (N, H, T, d_k)."""
        return x.reshape(x.size(0), x.size(1), self.n_head, self.d_k).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """q: (N, H, Tq, d_k), k/v: (N, H, Tk, d_k), bias additive broadcastable to (N, H, Tq, Tk)."""
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k) + bias, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2)
        return self.dropout(self.fc(out.reshape(out.size(0), out.size(1), -1)))

    def forward(self, q, kv, bias):
        return self.attend(self.heads(self.w_qs(q)), self.heads(self.w_ks(kv)), self.heads(self.w_vs(kv)), bias)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()  # exact erf
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.w_2(self.act(self.w_1(x))))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = DecoderMultiHeadAttention(d_model, n_head, dropout)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = DecoderMultiHeadAttention(d_model, n_head, dropout)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = PositionwiseFeedForward(d_model, d_model * 4, dropout)

    def forward(self, x, enc, self_bias, cross_bias):
        """Full-sequence (teacher-forced) layer; x: (N, U, d), enc: (N, T', d)."""
        h = self.self_attn_norm(x)
        x = x + self.self_attn(h, h, self_bias)
        x = x + self.cross_attn(self.cross_attn_norm(x), enc, cross_bias)
        return x + self.mlp(self.mlp_norm(x))


class TransformerDecoder(nn.Module):
    def __init__(self, d: AedDims):
        super().__init__()
        self.tgt_word_emb = nn.Embedding(d.odim, d.d_model, padding_idx=d.pad_id)
        self.positional_encoding = AbsPositionalEncoding(d.d_model, d.pe_maxlen)
        self.dropout = nn.Dropout(d.residual_dropout)
        self.layer_stack = nn.ModuleList(DecoderLayer(d.d_model, d.n_head, d.residual_dropout) for _ in range(d.n_layers_dec))
        self.tgt_word_prj = nn.Linear(d.d_model, d.odim, bias=False)
        self.layer_norm_out = nn.LayerNorm(d.d_model)
        self.tgt_word_prj.weight = self.tgt_word_emb.weight  # tied, as in the official model
        self.scale = d.d_model**0.5
        self.pad_id = d.pad_id

    def embed(self, ys: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """ys: (N, U) int64 -> (N, U, d): scaled token embedding plus unscaled absolute PE."""
        return self.dropout(self.tgt_word_emb(ys) * self.scale + self.positional_encoding(start, ys.size(1)))

    def forward(self, ys: torch.Tensor, enc: torch.Tensor, enc_keep: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. ys: (N, U) with sos first; enc_keep: (N, 1, T') -> (N, U, odim)."""
        u = ys.size(1)
        causal = torch.tril(torch.ones(u, u, dtype=torch.bool, device=ys.device))
        keep = causal.unsqueeze(0) & (ys != self.pad_id).unsqueeze(1)  # official: pad targets are never attended
        self_bias = torch.zeros(keep.shape, device=ys.device).masked_fill(~keep, float("-inf")).unsqueeze(1)
        cross_bias = torch.zeros_like(enc_keep).masked_fill(enc_keep == 0, float("-inf")).unsqueeze(1)
        x = self.embed(ys)
        for layer in self.layer_stack:
            x = layer(x, enc, self_bias, cross_bias)
        return self.tgt_word_prj(self.layer_norm_out(x))


class AbsPositionalEncoding(nn.Module):
    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid(torch.arange(max_len), d_model).unsqueeze(0))
        self.d_model = d_model
        self.in_graph = False  # export: compute the rows instead of storing the table

    def forward(self, start, length: int) -> torch.Tensor:
        """Rows start .. start+length-1: shape = (1, length, d)."""
        if self.in_graph:
            return sinusoid(torch.arange(length) + start, self.d_model).unsqueeze(0)
        return self.pe[:, start : start + length]



def exact_positional_tables(dims: AedDims) -> dict[str, torch.Tensor]:
    """The two positional tables FireRedAsrAed(dims) holds, by state-dict key, as exact float32 sinusoids,
    without building (and randomly initializing) the whole model."""
    return {"encoder.positional_encoding.pe": RelPositionalEncoding(dims.d_model).pe,
            "decoder.positional_encoding.pe": AbsPositionalEncoding(dims.d_model, dims.pe_maxlen).pe}

class CtcHead(nn.Module):
    """FireRedASR2's CTC branch (fireredasr2/models/module/ctc.py): Linear(d_model, odim), log-softmax."""

    def __init__(self, d_model: int, odim: int):
        super().__init__()
        self.ctc_lo = nn.Linear(d_model, odim)

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        """enc: shape = (N, T', d) -> log-probabilities shape = (N, T', odim), float32."""
        return F.log_softmax(self.ctc_lo(enc), dim=-1)


class FireRedAsrAed(nn.Module):
    """The AED model; `with_ctc` adds FireRedASR2's CTC head (`ctc.ctc_lo`), used only for timestamps."""

    def __init__(self, dims: AedDims, with_ctc: bool = False):
        super().__init__()
        self.dims = dims
        self.encoder = ConformerEncoder(dims)
        self.decoder = TransformerDecoder(dims)
        self.ctc = CtcHead(dims.d_model, dims.odim) if with_ctc else None

    def forward(self, x, x_len, ys):
        """Teacher-forced training forward: returns (logits (N, U, odim), enc (N, T', d), keep (N, 1, T'))."""
        enc, keep = self.encoder(x, x_len)
        return self.decoder(ys, enc, keep), enc, keep
