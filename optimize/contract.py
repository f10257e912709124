"""The split-model contract of the published sherpa-onnx FireRedASR AED exports.

Every name here is used by position and by name in sherpa-onnx
(sherpa-onnx/csrc/offline-fire-red-asr-model.cc): encoder 2 inputs / 2 outputs,
decoder 6 inputs / 3 outputs, float32 at the boundary, int64 ids. Nothing else in
the package retypes these strings.
"""

from __future__ import annotations

import math

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
    except ValueError as e:
        raise OptimizeError(f"{where} has malformed metadata: {e}", "re-export the model") from e
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


def model_paths(model_dir: Path) -> tuple[Path, Path, Path]:
    """The three files of a pair; raise OptimizeError if one is missing."""
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise OptimizeError(f"model {model_dir} is a file, not a directory", "pass the directory holding encoder.onnx, decoder.onnx, tokens.txt")
    if not model_dir.is_dir():
        raise OptimizeError(f"model directory {model_dir} does not exist", "pass a directory holding encoder.onnx, decoder.onnx, tokens.txt")
    paths = tuple(model_dir / f for f in (ENCODER_FILE, DECODER_FILE, TOKENS_FILE))
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise OptimizeError(f"{model_dir} lacks {', '.join(missing)}", "export the pair with `optimize export CKPT_DIR -o DIR`")
    return paths  # type: ignore[return-value]


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
