"""int8_static: static int8 for the encoder, activation ranges calibrated on audio (quantize_static).

Dynamic int8 (`int8`) measures each MatMul input's range at run time
(DynamicQuantizeLinear before every MatMul); static int8 fixes the ranges ahead of time
from calibration audio, so the encoder runs with no per-call range search. Weights are
int8 per output channel. The calibration audio goes through the pair's own front end
(fbank + the CMVN in the encoder metadata), so ranges are those of real inputs.

Encoder only: the decoder's inputs (cross K/V, caches, a position) would need a decode of
the calibration set to calibrate, and its per-step cost is in reading weights, which
`int4_weight_only` addresses. The decoder is copied unchanged.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from optimize import contract, graph
from optimize.host import cpu_flags
from optimize.errors import OptimizeError
from optimize.stages import TOOL_ERRORS, StageOutput, scratch_input, transform_pair
from optimize.stages.int8 import resolve_reduce_range

FORMATS = ("QDQ", "QOperator")
# MinMax only: onnxruntime's histogram calibrators (Entropy, Percentile) stack every
# utterance's activations into one array, which fails on utterances of different lengths
# ("inhomogeneous shape", measured with calibration/calib)
METHODS = ("MinMax",)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclass(frozen=True)
class Int8StaticConfig:
    # calibration audio: a directory of wav/flac/ogg files or an eval manifest
    calibration: Path = Path("calibration/calib/audio")
    # utterances used (the first, in name order); all 32 of calibration/calib: 99.2% identical to
    # fp32 on the embedded default, error rate +0.00 (BENCHMARKS.md 9.1; 32 beat 16 before 3c10925)
    samples: int = 32
    # QDQ (Q/DQ pairs ORT fuses at load) or QOperator (QLinearMatMul)
    quant_format: str = "QDQ"
    # how ranges come from the calibration activations
    calibrate_method: str = "MinMax"
    # one scale per output channel of each weight
    per_channel: bool = True
    # 7-bit weights avoid U8S8 saturation without VNNI; "auto" = on only without VNNI
    reduce_range: bool | str = "auto"
    # node-name patterns (fnmatch) left in float
    nodes_to_exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if self.quant_format not in FORMATS:
            raise OptimizeError(f"int8_static.quant_format is {self.quant_format!r}", f"use one of {', '.join(FORMATS)}")
        if self.calibrate_method not in METHODS:
            raise OptimizeError(f"int8_static.calibrate_method is {self.calibrate_method!r}", f"use one of {', '.join(METHODS)}")
        if self.samples < 1:
            raise OptimizeError(f"int8_static.samples is {self.samples}", "use 1 or more calibration utterances")
        if self.reduce_range not in (True, False, "auto"):
            raise OptimizeError(f"int8_static.reduce_range is {self.reduce_range!r}", "use true, false or auto (on only without VNNI)")


Config = Int8StaticConfig


def calibration_audio(source: Path, samples: int) -> list[Path]:
    """The first `samples` audio files of a directory (name order) or a manifest."""
    source = Path(source)
    if source.is_dir() and not any((source / n).is_file() for n in ("manifest.jsonl", "wav.scp")):
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    else:
        from optimize.corpus.manifest import read_manifest

        files = [u.audio for u in read_manifest(source)]
    if not files:
        raise OptimizeError(f"int8_static.calibration {source} holds no wav, flac or ogg file", "point it at calibration/calib/audio or a manifest")
    return files[:samples]


def calibration_features(encoder: Path, files: list[Path]) -> list[np.ndarray]:
    """Encoder inputs of `files`: each shape = (1, T, 80), float32, fbank + the encoder's CMVN."""
    from optimize.runtime.audio import load_audio
    from optimize.runtime.features import apply_cmvn, fbank

    meta = contract.parse_metadata(dict(graph.metadata(graph.load(encoder, load_external=False))), str(encoder))
    mean, inv_std = np.asarray(meta["cmvn_mean"]), np.asarray(meta["cmvn_inv_stddev"])
    return [apply_cmvn(fbank(load_audio(f)), mean, inv_std)[None].astype(np.float32) for f in files]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over precomputed features."""

    def __init__(self, feats: list[np.ndarray]):
        x, x_len = (name for name, _ in contract.ENCODER_INPUTS)
        self._feeds = iter([{x: f, x_len: np.array([f.shape[1]], dtype=np.int64)} for f in feats])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def _transform(cfg: Int8StaticConfig, feats: list[np.ndarray], reduce_range: bool, record: dict):
    def transform(src: Path, out: Path, role: str) -> list[str]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if role != "encoder":
            for f in graph.files_of(src):
                shutil.copyfile(f, out.parent / f.name)
            record[role] = {"excluded_nodes": "all (int8_static quantizes the encoder only)"}
            return [f"{role} kept as it was (int8_static is encoder-only)"]
        model = graph.load(src, load_external=False)
        excluded = [n.name for n in model.graph.node if any(fnmatch.fnmatch(n.name, p) for p in cfg.nodes_to_exclude)]
        # the MatMuls with constant weights, named: quantize_static's QDQ path ignores MatMulConstBOnly and would
        # quantize the attention score/context MatMuls too (activation x activation: slower and less exact)
        weights = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
        targets = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights and n.name not in excluded]
        if not targets:
            raise OptimizeError(f"int8_static: no MatMul with constant weights left to quantize in the {role}", "narrow int8_static.nodes_to_exclude")
        record[role] = {"excluded_nodes": excluded, "quantized_matmuls": len(targets)}
        try:
            with scratch_input(src, out.parent, role) as linked:
                quantize_static(
                    linked, out, _Reader(feats),  # by path: shape inference and calibration run on files, fine above 2 GB
                    quant_format=QuantFormat[cfg.quant_format],
                    op_types_to_quantize=["MatMul"],  # ConvInteger was slower than fp32 Conv on CPU (ort-toolchain.md E7)
                    per_channel=cfg.per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: the VNNI / AVX2 integer GEMM
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=targets,
                    nodes_to_exclude=excluded,
                    calibrate_method=CalibrationMethod[cfg.calibrate_method],
                    use_external_data_format=graph.needs_external_data(model),
                    extra_options={
                        "MatMulConstBOnly": True,  # attention score/context MatMuls stay float, as in `int8` (QOperator; QDQ: targets)
                        "DefaultTensorType": onnx.TensorProto.FLOAT,  # fused com.microsoft ops (ort-toolchain.md E6)
                        # QDQ: each MatMul's output stays float, so ORT runs MatMulIntegerToFloat on the static
                        # input ranges; with its output quantized too ORT runs QLinearMatMul + a DequantizeLinear
                        # of the output: AED-L encoder 0.68x dynamic int8's speed (BENCHMARKS.md 9.7)
                        "OpTypesToExcludeOutputQuantization": ["MatMul"],
                    },
                )  # fmt: skip
        except TOOL_ERRORS as e:  # the tool cannot handle this graph (stages.TOOL_ERRORS)
            raise OptimizeError(f"quantize_static failed on the {role}: {str(e).splitlines()[0][:300]}", "exclude the failing node with int8_static.nodes_to_exclude") from e
        return []

    return transform


def run(src: Path, dst: Path, cfg: Int8StaticConfig) -> StageOutput:
    """Quantize the encoder of `src` statically into `dst`; the decoder is copied."""
    src = Path(src)
    names = [n.name for n in graph.load(src / contract.ENCODER_FILE, load_external=False).graph.node]
    for p in cfg.nodes_to_exclude:
        if not fnmatch.filter(names, p):
            raise OptimizeError(f"int8_static.nodes_to_exclude pattern {p!r} matches no encoder node", "use node names as in the stage's input encoder")
    files = calibration_audio(cfg.calibration, cfg.samples)
    enc, _, _ = contract.model_paths(src)
    feats = calibration_features(enc, files)
    reduce_range = resolve_reduce_range(cfg.reduce_range, cpu_flags())
    record: dict = {}
    before, after, notes = transform_pair(src, dst, "int8_static", _transform(cfg, feats, reduce_range, record), cfg)
    quantized = {op: after["encoder"].get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear", "QLinearMatMul")}
    if not any(quantized.values()):
        notes += ("quantize_static quantized no node",)
    details = {"reduce_range": reduce_range, "calibration": {"files": len(files), "frames": sum(f.shape[1] for f in feats)},
               "quantized": quantized, **record}  # fmt: skip
    return StageOutput(before, after, notes, details)
