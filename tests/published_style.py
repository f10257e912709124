"""Published-style pairs made WITHOUT our exporter: the way sherpa-onnx's files were made.

The published FireRedASR graphs (sherpa-onnx `...-2025-02-16` v1, `...-2026-02-26` v2)
came from the legacy TorchScript `torch.onnx.export` of thin wrappers around the
official modules (published-onnx-contract.md section 11). This module rebuilds that
style from an official checkpoint with the official code (PyPI fireredasr==0.0.2), so
the tests and benchmarks can feed `optimize` what a user downloads:

- v1: opset 13, self-cache length fixed at 1024, batch 1 everywhere, encoder x (1, T, 80),
  int8/fp16 siblings derived from the fp32 graphs;
- v2: opset 17, dynamic self-cache length, encoder external data `encoder.weights`;
- the decoder in the public draft's style: per layer slice the cache to offset+1, write the
  new K/V last, attend with no mask, write the slice back;
- encoder metadata with the published keys (decoder metadata is never read by sherpa-onnx).

    python tests/published_style.py CKPT_DIR OUT_DIR --style v2 [--external-name .data] [--fp16|--int8]

Node-count anchor (checked once, not in CI): section 11 reports 3383 / 7730 nodes
(encoder / decoder, fp32, 16+16 layers) for this style; this module gives 3445 / 6267 (v2)
at 16+16 layers. The decoder's per-step shape machinery is smaller than the draft's (whose
exact indexing is not public); the weights, names and I/O are what matter for lifting.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from optimize.graph import needs_external_data
import torch.nn as nn

STYLES = {
    # opset, fixed self-cache length (None = dynamic), external data of the encoder
    "v1": (13, 1024, None),
    "v2": (17, None, ".weights"),
}


def official_model(ckpt_dir: Path):
    """The official FireRedAsrAed with the checkpoint's weights, eval mode."""
    from fireredasr.models.fireredasr_aed import FireRedAsrAed

    package = torch.load(Path(ckpt_dir) / "model.pth.tar", map_location="cpu", weights_only=False)
    model = FireRedAsrAed.from_args(package["args"])
    # a FireRedASR2-format checkpoint also holds the CTC head, which the v1 model has no place for
    model.load_state_dict({k: v.float() for k, v in package["model_state_dict"].items() if not k.startswith("ctc.")}, strict=True)
    return model.eval(), package["args"]


class PublishedEncoder(nn.Module):
    """x (1, T, 80), x_len (1,) -> n_layer_cross_k, n_layer_cross_v (L, 1, T', D): official encoder + cross projections."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder

    def forward(self, x, x_len):
        enc, _, _ = self.encoder(x, x_len)
        k = torch.stack([layer.cross_attn.w_ks(enc) for layer in self.decoder.layer_stack])
        v = torch.stack([layer.cross_attn.w_vs(enc) for layer in self.decoder.layer_stack])
        return k, v


class PublishedDecoder(nn.Module):
    """One step in the draft's style; every tensor has batch 1.

    tokens (1, 1) i64; caches (L, 1, S, H, Dh); cross K/V (L, 1, T', D); offset (1,) i64.
    The official modules are called through their hierarchy (decoder -> layer_stack.i ->
    self_attn -> w_qs), with step forwards bound to the instances, so the node names keep
    module paths such as /decoder/layer_stack.0/self_attn/w_qs/MatMul, as in the released files.
    """

    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder
        self.decoder.forward = types.MethodType(_decoder_step, self.decoder)
        for layer in self.decoder.layer_stack:
            layer.forward = types.MethodType(_layer_step, layer)
            layer.self_attn.forward = types.MethodType(_self_attn_step, layer.self_attn)
            layer.cross_attn.forward = types.MethodType(_cross_attn_step, layer.cross_attn)

    def forward(self, tokens, k_cache, v_cache, cross_k, cross_v, offset):
        return self.decoder(tokens, k_cache, v_cache, cross_k, cross_v, offset)


def _decoder_step(dec, tokens, k_cache, v_cache, cross_k, cross_v, offset):
    x = dec.tgt_word_emb(tokens) * dec.scale + dec.positional_encoding.pe[:, offset]
    for i, layer in enumerate(dec.layer_stack):
        x = layer(x, k_cache, v_cache, cross_k[i], cross_v[i], offset, i)
    return dec.tgt_word_prj(dec.layer_norm_out(x)), k_cache, v_cache


def _layer_step(layer, x, k_cache, v_cache, cross_k, cross_v, offset, i):
    x = x + layer.self_attn(layer.self_attn_norm(x), k_cache, v_cache, offset, i)
    x = x + layer.cross_attn(layer.cross_attn_norm(x), cross_k, cross_v)
    return x + layer.mlp(layer.mlp_norm(x))


def _self_attn_step(attn, x, k_cache, v_cache, offset, i):
    h, d = attn.n_head, attn.d_k
    bs = x.size(0)
    q = attn.w_qs(x).view(bs, -1, h, d).transpose(1, 2)
    k_i = k_cache[i, :, : offset[0] + 1]  # (1, offset+1, H, Dh)
    v_i = v_cache[i, :, : offset[0] + 1]
    k_i[:, -1:] = attn.w_ks(x).view(bs, -1, h, d)  # the new K/V written last
    v_i[:, -1:] = attn.w_vs(x).view(bs, -1, h, d)
    out = attn.attention(q, k_i.transpose(1, 2), v_i.transpose(1, 2), mask=None)
    k_cache[i, :, : offset[0] + 1] = k_i  # the slice written back
    v_cache[i, :, : offset[0] + 1] = v_i
    return attn.fc(out.transpose(1, 2).contiguous().view(x.size(0), -1, attn.d_model))


def _cross_attn_step(attn, x, cross_k, cross_v):
    h, d = attn.n_head, attn.d_k
    bs = x.size(0)
    q = attn.w_qs(x).view(bs, -1, h, d).transpose(1, 2)
    out = attn.attention(q, cross_k.view(bs, -1, h, d).transpose(1, 2), cross_v.view(bs, -1, h, d).transpose(1, 2), mask=None)
    return attn.fc(out.transpose(1, 2).contiguous().view(x.size(0), -1, attn.d_model))


def _read_cmvn(ckpt_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """mean, inv_stddev from the Kaldi stats, as FireRedASR's asr_feat.py computes them."""
    import kaldiio

    stats = kaldiio.load_mat(str(Path(ckpt_dir) / "cmvn.ark"))
    count = stats[0, -1]
    mean = stats[0, :-1] / count
    var = np.maximum(stats[1, :-1] / count - mean * mean, 1e-20)
    return mean, 1.0 / np.sqrt(var)


def published_metadata(ckpt_dir: Path, args, style: str) -> dict[str, str]:
    """The keys the released encoders carry (section 2.3 of the contract notes)."""
    mean, inv_std = _read_cmvn(ckpt_dir)
    meta = {
        "model_type": "fire-red-asr-aed",
        "version": "1" if style == "v1" else "2",
        "model_author": "FireRedTeam",
        "maintainer": "k2-fsa",
        "comment": "This is FireRedASR-AED-L" if style == "v1" else "This is FireRedASR2-AED",
        "url": "https://github.com/FireRedTeam/FireRedASR",
        "url-2": "https://huggingface.co/FireRedTeam/FireRedASR-AED-L",
        ("n_mels" if style == "v1" else "feat_dim"): str(args.idim),
        "num_decoder_layers": str(args.n_layers_dec),
        "num_head": str(args.n_head),
        "head_dim": str(args.d_model // args.n_head),
        "sos": str(args.sos_id),
        "eos": str(args.eos_id),
        "max_len": "1024",
        "cmvn_mean": ",".join(str(v) for v in mean.tolist()),
        "cmvn_inv_stddev": ",".join(str(v) for v in inv_std.tolist()),
    }
    return meta


def _save(model: onnx.ModelProto, path: Path, external: str | None) -> None:
    if external:
        for f in (path.with_name(path.name + external), path.with_name(path.stem + external)):
            f.unlink(missing_ok=True)
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.stem + external, size_threshold=1024)  # fmt: skip
    else:
        onnx.save_model(model, str(path))


def _export(module, args, path: Path, names_in, names_out, axes, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)  # fmt: skip


def make_published(ckpt_dir: Path, out_dir: Path, style: str = "v2", external: str | None = "default") -> Path:
    """Write encoder.onnx, decoder.onnx, tokens.txt of `style` into out_dir (fp32)."""
    opset, fixed, default_external = STYLES[style]
    external = default_external if external == "default" else external
    model, args = official_model(ckpt_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc, dec = PublishedEncoder(model).eval(), PublishedDecoder(model).eval()
    t = 161
    x, x_len = torch.randn(1, t, args.idim), torch.tensor([t])
    with torch.no_grad():
        k, v = enc(x, x_len)
    s = fixed or 8
    cache = torch.zeros(args.n_layers_dec, 1, s, args.n_head, args.d_model // args.n_head)
    dec_args = (torch.tensor([[args.sos_id]]), cache, cache.clone(), k, v, torch.tensor([3]))
    cross_axes = {2: "T"}
    enc_axes = {"x": {1: "T"}, "n_layer_cross_k": cross_axes, "n_layer_cross_v": cross_axes}
    cache_axes = {} if fixed else {2: "n_ctx"}
    dec_axes = {"n_layer_cross_k": cross_axes, "n_layer_cross_v": cross_axes,
                "in_n_layer_self_k_cache": cache_axes, "in_n_layer_self_v_cache": cache_axes,
                "out_n_layer_self_k_cache": cache_axes, "out_n_layer_self_v_cache": cache_axes}  # fmt: skip
    raw = Path(tempfile.mkdtemp(dir=out_dir, prefix=".raw-"))  # torch writes a > 2 GB graph as one file per tensor
    try:
        _export(enc, (x, x_len), raw / "encoder.onnx", ["x", "x_len"], ["n_layer_cross_k", "n_layer_cross_v"], enc_axes, opset)
        _export(dec, dec_args, raw / "decoder.onnx", ["tokens", "in_n_layer_self_k_cache", "in_n_layer_self_v_cache", "n_layer_cross_k",
                                                       "n_layer_cross_v", "offset"], ["logits", "out_n_layer_self_k_cache", "out_n_layer_self_v_cache"],
                {k: v for k, v in dec_axes.items() if v}, opset)  # fmt: skip
        del model, enc, dec, k, v, dec_args
        gc.collect()
        encoder = onnx.load(str(raw / "encoder.onnx"))
        for key, value in published_metadata(ckpt_dir, args, style).items():
            encoder.metadata_props.add(key=key, value=value)
        _save(encoder, out_dir / "encoder.onnx", external)
        del encoder
        gc.collect()
        decoder = onnx.load(str(raw / "decoder.onnx"))
        _save(decoder, out_dir / "decoder.onnx", external if needs_external_data(decoder) else None)
    finally:
        shutil.rmtree(raw)
    tokens = (Path(ckpt_dir) / "dict.txt").read_text(encoding="utf-8").splitlines()
    (out_dir / "tokens.txt").write_text("".join(line + "\n" for line in tokens), encoding="utf-8")
    return out_dir


def to_fp16(src: Path, dst: Path, variant: str = "") -> Path:
    """The fp16 sibling: ORT's float16 conversion, default block list, float32 I/O (keep_io_types); recipe unpublished.
    `variant` ".fp16" names the graphs encoder.fp16.onnx, decoder.fp16.onnx."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("encoder", "decoder"):
        model = onnx.load(str(src / f"{name}.onnx"))
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        onnx.save_model(half, str(dst / f"{name}{variant}.onnx"))
    (dst / "tokens.txt").write_bytes((src / "tokens.txt").read_bytes())
    return dst


def to_int8(src: Path, dst: Path) -> Path:
    """The released int8 recipe: quantize_dynamic on MatMul, QInt8 (sherpa-onnx's scripts), under the released
    names encoder.int8.onnx, decoder.int8.onnx."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("encoder", "decoder"):
        quantize_dynamic(str(src / f"{name}.onnx"), str(dst / f"{name}.int8.onnx"), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8)  # fmt: skip
    (dst / "tokens.txt").write_bytes((src / "tokens.txt").read_bytes())
    return dst


def node_counts(out_dir: Path) -> tuple[int, int]:
    return tuple(len(onnx.load(str(Path(out_dir) / f), load_external_data=False).graph.node) for f in ("encoder.onnx", "decoder.onnx"))  # type: ignore[return-value]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--style", choices=sorted(STYLES), default="v2")
    p.add_argument("--external-name", default="default", help="suffix of the encoder's external data (.weights, .data); 'none' for one file")
    p.add_argument("--fp16", action="store_true", help="also write the fp16 sibling into OUT_DIR-fp16")
    a = p.parse_args()
    external = None if a.external_name == "none" else a.external_name
    out = make_published(a.ckpt_dir, a.out_dir, a.style, external)
    print(out, "nodes (encoder, decoder):", node_counts(out))
    if a.fp16:
        half = to_fp16(out, out.with_name(out.name + "-fp16"))
        print(half, "nodes:", node_counts(half))


if __name__ == "__main__":
    main()
