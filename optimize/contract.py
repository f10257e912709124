"""The split-model contract of the published sherpa-onnx FireRedASR AED exports.

Every name here is used by position and by name in sherpa-onnx
(sherpa-onnx/csrc/offline-fire-red-asr-model.cc): encoder 2 inputs / 2 outputs,
decoder 6 inputs / 3 outputs, float32 at the boundary, int64 ids. Nothing else in
the package retypes these strings.
"""

from __future__ import annotations

import math
import re

from dataclasses import dataclass
from pathlib import Path

import onnx

from optimize import graph
from optimize.errors import OptimizeError

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
TOKENS_FILE = "tokens.txt"
# The two graphs of a pair by role; stages, checks and reports iterate this.
GRAPHS = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE}

# (name, onnx elem type) in the published order. 1 = FLOAT, 7 = INT64.
ENCODER_INPUTS = (("x", 1), ("x_len", 7))
ENCODER_OUTPUTS = (("n_layer_cross_k", 1), ("n_layer_cross_v", 1))
DECODER_INPUTS = (
    ("tokens", 7),
    ("in_n_layer_self_k_cache", 1),
    ("in_n_layer_self_v_cache", 1),
    ("n_layer_cross_k", 1),
    ("n_layer_cross_v", 1),
    ("offset", 7),
)
DECODER_OUTPUTS = (
    ("logits", 1),
    ("out_n_layer_self_k_cache", 1),
    ("out_n_layer_self_v_cache", 1),
)

# Our one extension: an additive cross-attention mask (0 keep, -inf drop), shape
# (N, 1, 1, T'), float32. It is a graph input backed by an all-zero (1, 1, 1, 1)
# initializer, so ORT lists it as an overridable initializer, not a required
# input: six-input callers (sherpa-onnx) never see it, batched callers pass it.
CROSS_MASK = "cross_attn_mask"

# Keys sherpa-onnx requires on the encoder (it exits if one is missing).
N_MELS = 80  # fbank bins of the encoder input x (N, T, 80); cmvn_mean / cmvn_inv_stddev hold one value per bin
REQUIRED_METADATA = (
    "num_decoder_layers",
    "num_head",
    "head_dim",
    "sos",
    "eos",
    "max_len",
    "cmvn_mean",
    "cmvn_inv_stddev",
)
# Keys we add; `version` bumps when the graph semantics change.
EXTRA_METADATA = ("model_type", "vocab_size", "version")
MODEL_TYPE = "fire-red-asr-aed"
# max_len stays 1024 as in the published v1: older sherpa-onnx allocates the
# self-attention cache with this length when the cache dim is dynamic.
MAX_LEN = 1024
# Version 1: the published v1 layout. Our dynamic-cache graphs keep it: the
# semantics (write K/V at `offset`, attend to [0, offset]) are unchanged.
CONTRACT_VERSION = "1"
# The published FireRedASR2 pairs (sherpa-onnx-fire-red-asr2-zh_en-2026-02-26) say "2": the
# model release, not a change of I/O. Same graphs and names; vocab 8667.
V2_VERSION = "2"
# The v2 encoder's metadata keys as published (the keep-list that copies them from the released
# file, published-onnx-contract.md §2.3); `optimize export` writes each of them for a v2 checkpoint.
V2_METADATA = (
    "model_type", "version", "model_author", "maintainer", "feat_dim", "cmvn_mean", "cmvn_inv_stddev",
    "num_decoder_layers", "num_head", "head_dim", "max_len", "sos", "eos", "url", "url-2", "comment",
)  # fmt: skip

# `optimize export --with-ctc` (FireRedASR2 only): the CTC head's log-softmax as a third encoder
# output, shape (N, T', V) float32, rows after a row's valid length are padding. It exists for
# token timestamps (CTC forced alignment). sherpa-onnx binds encoder outputs by position and
# reads only the first two, so the pair stays a drop-in.
CTC_OUTPUT = ("ctc_log_probs", 1)
# Optional encoder metadata of a pair with that output: the CTC weight the model decodes best with
# (DecodeConfig.ctc_weight, joint CTC/attention decoding), chosen on its dev set when it was
# published. The recognizer uses it unless told a weight; absent, decoding is attention only.
CTC_WEIGHT_KEY = "ctc_weight"


@dataclass(frozen=True)
class ModelInfo:
    """What a model pair says about itself through its encoder metadata."""

    num_decoder_layers: int
    num_head: int
    head_dim: int
    sos: int
    eos: int
    max_len: int
    vocab_size: int
    cmvn_mean: tuple[float, ...]
    cmvn_inv_stddev: tuple[float, ...]
    fixed_cache_len: int | None  # 1024 for the v1 layout, None when dynamic
    ctc_weight: float = 0.0  # the model's recommended joint-decoding weight (CTC_WEIGHT_KEY), 0 without one

    @property
    def d_model(self) -> int:
        return self.num_head * self.head_dim


def parse_metadata(meta: dict[str, str], where: str) -> dict[str, object]:
    """Validate and convert encoder metadata_props; raise OptimizeError naming missing keys."""
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise OptimizeError(
            f"{where} lacks encoder metadata {', '.join(missing)}",
            "re-export with `optimize export`, which writes every key sherpa-onnx requires",
        )
    out: dict[str, object] = {}
    try:
        for key in ("num_decoder_layers", "num_head", "head_dim", "sos", "eos", "max_len"):
            out[key] = int(meta[key])
        for key in ("cmvn_mean", "cmvn_inv_stddev"):
            out[key] = tuple(float(v) for v in meta[key].split(","))
        if CTC_WEIGHT_KEY in meta:
            out["ctc_weight"] = float(meta[CTC_WEIGHT_KEY])
    except ValueError as e:
        raise OptimizeError(f"{where} has malformed metadata: {e}", "re-export the model") from e
    if not 0 <= out.get("ctc_weight", 0.0) <= 1:  # type: ignore[operator]
        raise OptimizeError(f"{where}: metadata {CTC_WEIGHT_KEY} is {out['ctc_weight']}, outside [0, 1]", f"set {CTC_WEIGHT_KEY} in [0, 1] or remove it")
    for key in ("cmvn_mean", "cmvn_inv_stddev"):
        values = out[key]
        if len(values) != N_MELS or not all(math.isfinite(v) for v in values):  # type: ignore[arg-type]
            raise OptimizeError(f"{where}: metadata {key} holds {len(values)} values (finite: {all(math.isfinite(v) for v in values)}), the front end needs {N_MELS} finite ones", "re-export the model with its cmvn.ark")  # type: ignore[arg-type]
    for key in ("num_decoder_layers", "num_head", "head_dim"):
        if out[key] < 1:  # type: ignore[operator]
            raise OptimizeError(f"{where}: metadata {key} is {out[key]}", "re-export the model")
    return out


def check_io(names_types: list[tuple[str, int]], expected: tuple, what: str, where: str) -> None:
    """Compare a graph's (name, elem_type) list with the contract, prefix-exact."""
    got = list(names_types)[: len(expected)]
    if got != list(expected) or len(names_types) < len(expected):
        raise OptimizeError(
            f"{where}: {what} are {names_types}, the contract needs {list(expected)}",
            "use a pair in the published FireRedASR contract (made by `optimize export`)",
        )


# sherpa-onnx packages name a pair by its variant: encoder.int8.onnx + decoder.int8.onnx (the int8
# packages), encoder.onnx + encoder.weights (v2 fp32); users keep siblings (int8, fp16) side by side.
_VARIANT = re.compile(r"encoder(?:\.([A-Za-z0-9_-]+))?\.onnx")
_PICK = "pass its encoder file as the model (e.g. {}): the decoder of the same variant and tokens.txt come with it"


def variants(model_dir: Path) -> dict[str, tuple[Path, Path]]:
    """The pairs in `model_dir` by variant: "" for encoder.onnx/decoder.onnx, "int8" for encoder.int8.onnx/decoder.int8.onnx, ..."""
    out = {}
    for enc in sorted(Path(model_dir).glob("encoder*.onnx")):
        m = _VARIANT.fullmatch(enc.name)
        dec = enc.with_name("decoder" + enc.name[len("encoder") :])
        if m and enc.is_file() and dec.is_file():
            out[m.group(1) or ""] = (enc, dec)
    return out


def model_paths(model: Path) -> tuple[Path, Path, Path]:
    """encoder, decoder and tokens.txt of a pair; raise OptimizeError if one is missing or the choice is ambiguous.

    `model` is a directory holding encoder.onnx + decoder.onnx, or exactly one published variant
    (encoder.int8.onnx + decoder.int8.onnx, ...), or the encoder file of the variant to use."""
    model = Path(model)
    if model.is_file():
        m = _VARIANT.fullmatch(model.name)
        if not m:
            raise OptimizeError(f"model {model} is a file, not a directory or the encoder*.onnx of a pair",
                                "pass the directory holding encoder.onnx, decoder.onnx, tokens.txt (or a published encoder.int8.onnx)")  # fmt: skip
        pair = variants(model.parent).get(m.group(1) or "")
        if pair is None:
            dec = model.with_name("decoder" + model.name[len("encoder") :])
            raise OptimizeError(f"{model.parent} lacks {dec.name}, the decoder of {model.name}", "keep the published pair's files together in one directory")
        return _with_tokens(model.parent, *pair)
    if not model.is_dir():
        raise OptimizeError(f"model directory {model} does not exist", "pass a directory holding encoder.onnx, decoder.onnx, tokens.txt")
    found = variants(model)
    if "" in found:
        return _with_tokens(model, *found[""])
    if len(found) == 1:
        return _with_tokens(model, *next(iter(found.values())))
    if found:
        names = ", ".join(enc.name for enc, _ in found.values())
        raise OptimizeError(f"{model} holds several pairs ({names}) and no encoder.onnx", _PICK.format(next(iter(found.values()))[0]))
    missing = [f for f in (ENCODER_FILE, DECODER_FILE, TOKENS_FILE) if not (model / f).is_file()]
    raise OptimizeError(f"{model} lacks {', '.join(missing)}", "export the pair with `optimize export CKPT_DIR -o DIR`, or pass a published sherpa-onnx model directory")


def _with_tokens(model_dir: Path, enc: Path, dec: Path) -> tuple[Path, Path, Path]:
    tokens = model_dir / TOKENS_FILE
    if not tokens.is_file():
        raise OptimizeError(f"{model_dir} lacks {TOKENS_FILE}", f"keep the published {TOKENS_FILE} next to {enc.name}")
    return enc, dec, tokens


def model_files(model: Path) -> dict[str, Path]:
    """model_paths by role: {"encoder": ..., "decoder": ...}."""
    enc, dec, _ = model_paths(model)
    return {"encoder": enc, "decoder": dec}


# Op types the report counts as "fused" (ORT contrib ops produced by fusion).
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "LayerNormalization",
    "SkipLayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "QuickGelu",
    "BiasAdd",
    "EmbedLayerNormalization",
    "RotaryEmbedding",
)


def verify_contract(reference: onnx.ModelProto, model: onnx.ModelProto, where: str) -> None:
    """Raise OptimizeError unless `model` keeps `reference`'s I/O, metadata and overridable initializers."""
    got, want = graph.io_signature(model), graph.io_signature(reference)
    # an input the reference lacks is allowed only as an overridable initializer: callers
    # of the reference (six decoder inputs) never see it (reexport adds cross_attn_mask)
    added = set(graph.overridable_initializers(model)) - {name for name, _ in want[0]}
    got = ([io for io in got[0] if io[0] not in added], got[1])
    if got != want:
        raise OptimizeError(
            f"{where} changed the graph I/O from {want} to {got}",
            "the stage must keep names, order and float32/int64 types at the boundary",
        )
    if graph.metadata(model) != graph.metadata(reference):
        raise OptimizeError(f"{where} changed metadata_props", "the stage must keep the encoder metadata byte-for-byte")
    lost = set(graph.overridable_initializers(reference)) - set(graph.overridable_initializers(model))
    if lost:
        raise OptimizeError(
            f"{where} turned overridable initializer(s) {sorted(lost)} into required inputs or constants",
            "keep inputs backed by an initializer (cross_attn_mask) overridable",
        )
