"""`optimize export`: an official checkpoint to encoder.onnx + decoder.onnx + tokens.txt.

The graphs follow the published sherpa-onnx contract (optimize/contract.py). Two
wrappers around our model: the encoder returns every decoder layer's cross-attention
K/V, and the decoder runs one token with an explicit per-layer self K/V cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from optimize import contract, graph
from optimize.errors import OptimizeError
from optimize.export.checkpoint import Checkpoint, load_checkpoint
from optimize.export.model import FireRedAsrAed
from optimize.runtime.features import cmvn_from_stats



# Opsets this exporter is known to produce a working pair with (tested 13..21 with torch 2.13's
# TorchScript exporter, whose declared maximum is 20); below 13 the graphs change op semantics.
OPSETS = range(13, 21)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17  # Slice/Range with dynamic T need >= 11; 17 has LayerNormalization
    fixed_cache_len: int | None = None  # None: dynamic self-cache length; 1024: the published v1 layout
    trial_frames: int = 137  # frames of the trial input used for tracing and the shape asserts
    with_ctc: bool = False  # FireRedASR2: add the CTC log-probs as a third encoder output (contract.CTC_OUTPUT)
    ctc_weight: float | None = None  # with_ctc: the joint-decoding weight to recommend (metadata contract.CTC_WEIGHT_KEY)

    def __post_init__(self):
        if self.opset not in OPSETS:
            raise OptimizeError(f"opset {self.opset} is outside the supported range", f"use an opset from {OPSETS.start} to {OPSETS.stop - 1} (default 17)")
        if self.fixed_cache_len is not None and self.fixed_cache_len < 2:
            raise OptimizeError(f"--fixed-cache-len {self.fixed_cache_len} is too small", "use 1024 for the published v1 layout")
        if self.ctc_weight is not None and not (self.with_ctc and 0 <= self.ctc_weight <= 1):
            raise OptimizeError(f"a recommended ctc_weight of {self.ctc_weight} (with_ctc {self.with_ctc})", "recommend a weight in [0, 1], only for a pair exported with its CTC head")


class EncoderGraph(nn.Module):
    """x (N, T, idim) f32, x_len (N,) i64 -> n_layer_cross_k, n_layer_cross_v (L, N, T', D) f32.

    With `with_ctc` a third output: the CTC log-probs, shape = (N, T', V), float32.
    """

    def __init__(self, model: FireRedAsrAed, with_ctc: bool = False):
        super().__init__()
        self.encoder = model.encoder
        self.cross = nn.ModuleList(layer.cross_attn for layer in model.decoder.layer_stack)
        self.ctc = model.ctc if with_ctc else None

    def forward(self, x: torch.Tensor, x_len: torch.Tensor):
        enc, _ = self.encoder(x, x_len)
        k = torch.stack([attn.w_ks(enc) for attn in self.cross])
        v = torch.stack([attn.w_vs(enc) for attn in self.cross])
        if self.ctc is None:
            return k, v
        return k, v, self.ctc(enc)


class DecoderStepGraph(nn.Module):
    """One decoding step with explicit caches (the published v1 semantics).

    tokens (N, 1) i64; in caches (L, N, S, H, Dh) f32; cross K/V (L, N, T', D) f32;
    offset (1,) i64; cross_attn_mask (N, 1, 1, T') f32 additive.
    The step writes its K/V at `offset` and attends to positions [0, offset].
    Returns logits (N, 1, V) and the updated caches, same shapes as the inputs.
    """

    def __init__(self, model: FireRedAsrAed):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, tokens, k_cache, v_cache, cross_k, cross_v, offset, cross_attn_mask):
        dec = self.decoder
        s = k_cache.size(2)
        write = (torch.arange(s) == offset).view(1, 1, s, 1, 1)
        # Self-attention reads positions [0, offset): slice them once for all layers (a Gather
        # per layer of the full cache becomes a Split that copies all of it) and append the
        # new K/V, so no -inf bias and no work on positions after offset, whatever S is.
        past_k, past_v = k_cache[:, :, : offset[0]], v_cache[:, :, : offset[0]]
        x = dec.embed(tokens, offset)
        new_k, new_v = [], []
        for i, layer in enumerate(dec.layer_stack):
            attn = layer.self_attn
            h = layer.self_attn_norm(x)
            n = h.size(0)
            new_k.append(attn.w_ks(h).view(n, 1, attn.n_head, attn.d_k))
            new_v.append(attn.w_vs(h).view(n, 1, attn.n_head, attn.d_k))
            k_i = torch.cat([past_k[i], new_k[-1]], dim=1)  # (N, offset + 1, H, Dh)
            v_i = torch.cat([past_v[i], new_v[-1]], dim=1)
            q = attn.heads(attn.w_qs(h))
            x = x + attn.attend(q, k_i.transpose(1, 2), v_i.transpose(1, 2), 0.0)
            cross = layer.cross_attn
            q = cross.heads(cross.w_qs(layer.cross_attn_norm(x)))
            x = x + cross.attend(q, cross.heads(cross_k[i]), cross.heads(cross_v[i]), cross_attn_mask)
            x = x + layer.mlp(layer.mlp_norm(x))
        logits = dec.tgt_word_prj(dec.layer_norm_out(x))
        # one Where per cache writes every layer's new K/V at offset (was: a Where per layer, then a stack)
        return logits, torch.where(write, torch.stack(new_k), k_cache), torch.where(write, torch.stack(new_v), v_cache)


# The v1 encoder's metadata_props in the order the published v1 pairs have them, plus ours
# (vocab_size, n_mels); v2 follows contract.V2_METADATA, plus our vocab_size.
V1_METADATA = (
    "model_type", "version", "model_author", "comment", "url", "num_decoder_layers", "num_head", "head_dim",
    "sos", "eos", "max_len", "vocab_size", "n_mels", "cmvn_mean", "cmvn_inv_stddev",
)  # fmt: skip


def metadata(ckpt: Checkpoint, fixed_cache_len: int | None) -> dict[str, str]:
    """Encoder metadata_props: every key sherpa-onnx requires, plus ours; v2 as the published v2 pairs.

    v2's `maintainer` names who made this export (the published files say k2-fsa, who made those).
    """
    mean, inv_std = cmvn_from_stats(ckpt.cmvn_stats)
    d = ckpt.dims
    values = {
        "model_type": contract.MODEL_TYPE,
        "model_author": "FireRedTeam",
        "num_decoder_layers": str(d.n_layers_dec),
        "num_head": str(d.n_head),
        "head_dim": str(d.head_dim),
        "sos": str(d.sos_id),
        "eos": str(d.eos_id),
        "max_len": str(fixed_cache_len or contract.MAX_LEN),
        "vocab_size": str(d.odim),
        "cmvn_mean": ",".join(repr(float(v)) for v in mean),
        "cmvn_inv_stddev": ",".join(repr(float(v)) for v in inv_std),
    }
    if ckpt.version == 2:
        values |= {
            "version": contract.V2_VERSION,
            "maintainer": "optimize",
            "feat_dim": str(d.idim),
            "url": "https://github.com/FireRedTeam/FireRedASR2S",
            "url-2": "https://huggingface.co/FireRedTeam/FireRedASR2-AED",
            "comment": "This is FireRedASR2-AED, exported by optimize",
        }
        return {k: values[k] for k in (*contract.V2_METADATA, "vocab_size")}
    values |= {
        "version": contract.CONTRACT_VERSION,
        "comment": "exported by optimize",
        "url": "https://github.com/FireRedTeam/FireRedASR",
        "n_mels": str(d.idim),
    }
    return {k: values[k] for k in V1_METADATA}


def _trial_inputs(ckpt: Checkpoint, cfg: ExportConfig):
    d = ckpt.dims
    torch.manual_seed(0)
    x = torch.randn(2, cfg.trial_frames, d.idim)
    x_len = torch.tensor([cfg.trial_frames, cfg.trial_frames - 40])
    t_out = ((cfg.trial_frames + 6 - 3) // 2 + 1 - 3) // 2 + 1
    s = cfg.fixed_cache_len or 7
    dec_args = (
        torch.full((2, 1), d.sos_id, dtype=torch.int64),
        torch.zeros(d.n_layers_dec, 2, s, d.n_head, d.head_dim),
        torch.zeros(d.n_layers_dec, 2, s, d.n_head, d.head_dim),
        torch.randn(d.n_layers_dec, 2, t_out, d.d_model),
        torch.randn(d.n_layers_dec, 2, t_out, d.d_model),
        torch.tensor([2], dtype=torch.int64),
        torch.zeros(2, 1, 1, t_out),
    )
    return (x, x_len), dec_args, t_out


def _assert_shapes(ckpt: Checkpoint, enc: EncoderGraph, dec: DecoderStepGraph, enc_args, dec_args, t_out) -> None:
    """Trial forward with the shapes the contract promises; a mismatch is an OptimizeError carrying the shape.

    Real checks, not `assert`s: they must hold under `python -O` too.
    """
    d = ckpt.dims
    with torch.no_grad():
        k, v, *ctc = enc(*enc_args)
        logits, kc, vc = dec(*dec_args)
    want_kv = (d.n_layers_dec, 2, t_out, d.d_model)
    checks = [("cross K", k.shape, want_kv), ("cross V", v.shape, want_kv), ("logits", logits.shape, (2, 1, d.odim)),
              ("self K cache", kc.shape, dec_args[1].shape), ("self V cache", vc.shape, dec_args[2].shape)]  # fmt: skip
    if ctc:
        checks.append(("CTC log-probs", ctc[0].shape, (2, t_out, d.odim)))
    for what, got, want in checks:
        if tuple(got) != tuple(want):
            raise OptimizeError(
                f"trial forward: {what} shape {tuple(got)}, the contract needs {tuple(want)}",
                "the checkpoint's args disagree with its weights; if they agree, report this export bug with the args",
            )


def _dynamic_axes(fixed_cache_len: int | None) -> tuple[dict, dict]:
    cache = {1: "N", 2: "S"} if fixed_cache_len is None else {1: "N"}
    enc = {"x": {0: "N", 1: "T"}, "x_len": {0: "N"}, "n_layer_cross_k": {1: "N", 2: "T_enc"}, "n_layer_cross_v": {1: "N", 2: "T_enc"},
           contract.CTC_OUTPUT[0]: {0: "N", 1: "T_enc"}}  # fmt: skip
    dec = {
        "tokens": {0: "N"},
        "in_n_layer_self_k_cache": cache,
        "in_n_layer_self_v_cache": cache,
        "n_layer_cross_k": {1: "N", 2: "T_enc"},
        "n_layer_cross_v": {1: "N", 2: "T_enc"},
        "offset": {},
        contract.CROSS_MASK: {0: "N", 3: "T_enc"},
        "logits": {0: "N"},
        "out_n_layer_self_k_cache": cache,
        "out_n_layer_self_v_cache": cache,
    }
    return enc, dec


def _torch_export(module: nn.Module, args: tuple, path: Path, names_in, names_out, axes, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on Python-int shape arithmetic are expected
        torch.onnx.export(
            module, args, str(path), input_names=list(names_in), output_names=list(names_out),
            dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True,
        )  # fmt: skip


def _make_mask_overridable(model: onnx.ModelProto) -> None:
    """Back `cross_attn_mask` by an all-zero (1,1,1,1) initializer: six-input callers need not pass it."""
    names = [i.name for i in model.graph.input]
    if contract.CROSS_MASK not in names:
        return  # the mask was folded away: nothing reads it (cannot happen with our decoder)
    zeros = numpy_helper.from_array(np.zeros((1, 1, 1, 1), dtype=np.float32), contract.CROSS_MASK)
    model.graph.initializer.append(zeros)
    # keep it last among the inputs so positional callers see exactly the contract's six
    mask_input = model.graph.input[names.index(contract.CROSS_MASK)]
    model.graph.input.remove(mask_input)
    model.graph.input.append(mask_input)


def _finish_graph(raw: Path, final: Path, meta: dict[str, str] | None, decoder: bool) -> None:
    model = onnx.load(str(raw), load_external_data=True)
    if decoder:
        _make_mask_overridable(model)
    if meta:
        model.metadata_props.clear()
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
    graph.save(model, final)  # external data by size (graph.PROTO_LIMIT_BYTES), as every stage saves


def write_tokens(tokens: tuple[str, ...], path: Path) -> None:
    """tokens.txt as sherpa-onnx reads it: `symbol id` per line."""
    path.write_text("".join(f"{t if t.strip() else '<space>'} {i}\n" for i, t in enumerate(tokens)), encoding="utf-8")


def _publish(tmp_dir: Path, out_dir: Path) -> list[Path]:
    """Move finished files into out_dir (each an atomic rename); other files there stay."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in sorted(tmp_dir.iterdir()):
        os.replace(f, out_dir / f.name)
        written.append(out_dir / f.name)
    stale = out_dir / (contract.ENCODER_FILE + ".data")
    if stale.exists() and stale not in written:
        stale.unlink()  # a previous, larger export's data must not shadow this one
    return written


def export_checkpoint(ckpt_dir: Path, out_dir: Path, cfg: ExportConfig = ExportConfig()) -> list[Path]:
    """Export `ckpt_dir` to `out_dir`; returns the written paths. Nothing is written on failure."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise OptimizeError(f"output {out_dir} is a file, not a directory", "pass a directory path with -o/--output")
    ckpt = load_checkpoint(Path(ckpt_dir))
    if cfg.with_ctc and ckpt.model.ctc is None:
        raise OptimizeError(
            f"{ckpt_dir} has no CTC head (no ctc.ctc_lo keys: a FireRedASR v1 checkpoint)",
            "export it without --with-ctc; only FireRedASR2-AED checkpoints carry the CTC head",
        )
    model = ckpt.model
    model.encoder.positional_encoding.in_graph = True
    model.decoder.positional_encoding.in_graph = True
    enc, dec = EncoderGraph(model, cfg.with_ctc).eval(), DecoderStepGraph(model).eval()
    enc_args, dec_args, t_out = _trial_inputs(ckpt, cfg)
    _assert_shapes(ckpt, enc, dec, enc_args, dec_args, t_out)
    enc_axes, dec_axes = _dynamic_axes(cfg.fixed_cache_len)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        raw, final = Path(tmp) / "raw", Path(tmp) / "final"
        raw.mkdir(), final.mkdir()
        enc_outputs = contract.ENCODER_OUTPUTS + ((contract.CTC_OUTPUT,) if cfg.with_ctc else ())
        enc_names = [n for n, _ in contract.ENCODER_INPUTS], [n for n, _ in enc_outputs]
        dec_names = [n for n, _ in contract.DECODER_INPUTS] + [contract.CROSS_MASK], [n for n, _ in contract.DECODER_OUTPUTS]
        _torch_export(enc, enc_args, raw / contract.ENCODER_FILE, *enc_names, enc_axes, cfg.opset)
        meta = metadata(ckpt, cfg.fixed_cache_len) | ({} if cfg.ctc_weight is None else {contract.CTC_WEIGHT_KEY: repr(float(cfg.ctc_weight))})
        _finish_graph(raw / contract.ENCODER_FILE, final / contract.ENCODER_FILE, meta, decoder=False)
        shutil.rmtree(raw), raw.mkdir()  # free the encoder's raw copy before the decoder
        _torch_export(dec, dec_args, raw / contract.DECODER_FILE, *dec_names, dec_axes, cfg.opset)
        _finish_graph(raw / contract.DECODER_FILE, final / contract.DECODER_FILE, None, decoder=True)
        write_tokens(ckpt.tokens, final / contract.TOKENS_FILE)
        return _publish(final, out_dir)

