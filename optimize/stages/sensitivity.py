"""Which MatMuls dynamic int8 moves the pair's decisions most: a per-MatMul score measured on audio.

One probe graph per graph of the pair: every candidate MatMul (a 2-D constant weight) computes
both its float output and a simulation of the int8 stage's arithmetic on it (DynamicQuantizeLinear
-> DequantizeLinear on its input, the weight rounded to symmetric int8 per output channel or per
tensor), and a boolean graph input per MatMul chooses which of the two flows on. One session per
graph then scores each MatMul alone: the calibration utterances run with only its flag set, and
the score is how far the two distributions joint decoding adds move from float:

    (1 - w) x KL(float || probed) of the decoder's next-token distribution, teacher-forced on the
              float pair's greedy tokens, mean over steps
    + w     x KL(float || probed) of the CTC posteriors, mean over encoder frames

with w the pair's recommended ctc_weight (0 without a CTC head). An encoder MatMul moves both
(its cross K/V go through the float decoder); a decoder MatMul the first. Scores add up to a
fair estimate for several MatMuls, since independent rounding errors add in the divergence to
first order; `divergence` measures any set of MatMuls together, to check that.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimize import contract, graph
from optimize.errors import OptimizeError

FLAG_PREFIX = "int8_probe_flag_"
MAX_STEPS = 256  # teacher-forced decoder steps per utterance at most



def check_config(budget_field: str, budget: float, samples_field: str, samples: int, example: float) -> None:
    """The checks every stage with a measured budget makes on it, with the stage's field names in the message."""
    if not 0 <= budget < 1:
        raise OptimizeError(f"{budget_field} is {budget}", f"use a share of the weights in [0, 1), e.g. {example:g}; 0 turns it off")
    if samples < 1:
        raise OptimizeError(f"{samples_field} is {samples}", "use 1 or more calibration utterances")


def note(record: dict, chosen: dict[str, list[str]], what: str, weights: str, quantized: str) -> str:
    """A stage's one-line account of `select`'s choice: `what` (with {n}, the MatMuls chosen), their share of `weights`,
    and the calibration divergence with every candidate `quantized` against the choice left out."""
    n = sum(len(v) for v in chosen.values())
    return (f"{what.format(n=n)} by measured sensitivity ({record.get('chosen_share_of_weights', 0):.1%} of {weights}; "
            f"calibration divergence {record.get('divergence_all_quantized', 0):.3g} all {quantized} -> {record.get('divergence_chosen_left_out', 0):.3g})")

@dataclass(frozen=True)
class Candidate:
    role: str  # "encoder" | "decoder"
    node: str  # MatMul node name
    weights: int  # elements of its constant weight: its share of the int8 work and bytes


def candidates(model: onnx.ModelProto, role: str, excluded: set[str]) -> list[Candidate]:
    """MatMuls with a 2-D float initializer as weight (what quantize_dynamic quantizes with MatMulConstBOnly)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if w is not None and len(w.dims) == 2 and w.data_type == TensorProto.FLOAT and n.name not in excluded:
            out.append(Candidate(role, n.name, int(np.prod(w.dims))))
    return out


@dataclass(frozen=True)
class Rounding:
    """The arithmetic a stage gives a MatMul, as the probe simulates it."""

    bits: int = 8  # 8: symmetric int8 per output channel or per tensor (int8); 4 or 8 with block_size: MatMulNBits blocks
    per_channel: bool = True  # bits 8 without block_size: one scale per output column, else per tensor
    reduce_range: bool = False  # 7-bit int8 weights (int8 without VNNI)
    block_size: int = 0  # > 0: symmetric blocks of this many weights along K (MatMulNBits), one scale each
    quantize_input: bool = True  # the input rounded to uint8 by DynamicQuantizeLinear (int8; MatMulNBits accuracy_level 4)

    def weight(self, w: np.ndarray) -> np.ndarray:
        if not self.block_size:
            return rounded_weight(w, self.per_channel, self.reduce_range)
        return rounded_blocks(w, self.bits, self.block_size)


def rounded_blocks(w: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """`w` (K, N) rounded to symmetric `bits`-bit blocks of `block_size` along K, as float (MatMulNBits, approximately)."""
    k, n = w.shape
    pad = -k % block_size
    b = np.pad(w, ((0, pad), (0, 0))).reshape(-1, block_size, n)
    qmax = float((1 << (bits - 1)) - 1)
    absmax = np.abs(b).max(axis=1, keepdims=True)
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    return (np.clip(np.round(b / scale), -qmax, qmax) * scale).reshape(-1, n)[:k].astype(np.float32)


def rounded_weight(w: np.ndarray, per_channel: bool, reduce_range: bool) -> np.ndarray:
    """`w` (K, N) after symmetric int8 rounding, one scale per output column or per tensor, as float."""
    qmax = 64.0 if reduce_range else 127.0  # onnxruntime.quantization's symmetric int8 ranges
    absmax = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    return (np.clip(np.round(w / scale), -qmax, qmax) * scale).astype(np.float32)


def probe_graph(model: onnx.ModelProto, cands: list[Candidate], rounding: Rounding) -> onnx.ModelProto:
    """A copy of `model` where each candidate's output is Where(flag_i, the stage's arithmetic simulated, float)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    g = probe.graph
    inits = {t.name: t for t in g.initializer}
    taken = {n for node in g.node for n in [*node.input, *node.output]} | set(inits)
    nodes = {n.name: n for n in g.node}
    added = []
    for i, c in enumerate(cands):
        node = nodes[c.node]
        x, w_name = node.input
        y = node.output[0]
        fname = lambda s: graph.fresh_name(f"{c.node}/int8_probe/{s}", taken)  # noqa: E731
        y_float, xq, xs, xz, xd, wq, yq = (fname(s) for s in ("float", "xq", "xs", "xz", "xd", "w", "int8"))
        node.output[0] = y_float
        w = numpy_helper.to_array(inits[w_name])
        g.initializer.append(numpy_helper.from_array(rounding.weight(w), wq))
        flag = FLAG_PREFIX + str(i)
        g.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
        if rounding.quantize_input:
            added += [
                helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=fname("quantize")),
                helper.make_node("DequantizeLinear", [xq, xs, xz], [xd], name=fname("dequantize")),
            ]
        added += [
            helper.make_node("MatMul", [xd if rounding.quantize_input else x, wq], [yq], name=fname("matmul")),
            helper.make_node("Where", [flag, yq, y_float], [y], name=fname("where")),
        ]
    g.node.extend(added)  # onnxruntime sorts the nodes topologically on load
    return probe


def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    if graph.needs_external_data(model):
        raise OptimizeError("the sensitivity budget is measured in memory, and this graph is over 1.8 GB", "set the stage's budget to 0 and list nodes in nodes_to_exclude")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = threads, 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _kl(ref_logp: np.ndarray, logp: np.ndarray) -> float:
    """Mean over rows of KL(exp(ref_logp) || exp(logp)); both log-probs, shape = (rows, V).

    Clipped at 0: a saturated softmax (random weights) leaves float32 rounding, which can sum below zero."""
    return max(0.0, float((np.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1).mean()))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class Prober:
    """The float pair and its probe graphs on calibration features; scores sets of candidates."""

    def __init__(self, src: Path, cands: list[Candidate], feats: list[np.ndarray], rounding: Rounding, threads: int = 1):
        enc_path, dec_path, _ = contract.model_paths(Path(src))
        self.cands = cands
        models = {"encoder": graph.load(enc_path), "decoder": graph.load(dec_path)}
        meta = contract.parse_metadata(dict(graph.metadata(models["encoder"])), str(enc_path))
        self.sos, self.eos = int(meta["sos"]), int(meta["eos"])
        outputs = {o.name for o in models["encoder"].graph.output}
        self.ctc_weight = float(meta.get("ctc_weight", 0.0)) if contract.CTC_OUTPUT[0] in outputs else 0.0
        self.sessions = {}
        self.flags: dict[str, list[str]] = {}
        for role, model in models.items():
            own = [c for c in cands if c.role == role]
            self.sessions[role] = _session(probe_graph(model, own, rounding), threads)
            self.flags[role] = [FLAG_PREFIX + str(i) for i in range(len(own))]
        self.index = {c: i for role in models for i, c in enumerate(c for c in cands if c.role == role)}
        self.enc_outputs = [n for n, _ in contract.ENCODER_OUTPUTS] + ([contract.CTC_OUTPUT[0]] if self.ctc_weight else [])
        dec_inputs = {i.name: i for i in self.sessions["decoder"].get_inputs()}
        self.cache_dims = [d if isinstance(d, int) else None for d in dec_inputs[contract.DECODER_INPUTS[1][0]].shape]
        self.feats = feats
        self.reference = [self._encode(f, set()) for f in feats]
        # the float pair's greedy tokens and per-step log-probs, the teacher-forced path of every probe
        self.paths, self.ref_logp = [], []
        for enc in self.reference:
            tokens, logp = self._decode(enc, set(), None)
            self.paths.append(tokens)
            self.ref_logp.append(logp)

    def _feed_flags(self, role: str, on: set[Candidate]) -> dict:
        on_idx = {self.index[c] for c in on if c.role == role}
        return {f: np.array(i in on_idx) for i, f in enumerate(self.flags[role])}

    def _encode(self, f: np.ndarray, on: set[Candidate]) -> list[np.ndarray]:
        (x, _), (x_len, _) = contract.ENCODER_INPUTS
        feed = {x: f, x_len: np.array([f.shape[1]], dtype=np.int64)} | self._feed_flags("encoder", on)
        return self.sessions["encoder"].run(self.enc_outputs, feed)

    def _decode(self, enc: list[np.ndarray], on: set[Candidate], path: list[int] | None, steps: int = 0) -> tuple[list[int], np.ndarray]:
        """Greedy (path None) or `steps` steps teacher-forced on `path`; returns the tokens fed after sos and the log-probs per step."""
        cross_k, cross_v = enc[0], enc[1]
        layers, _, frames, _ = cross_k.shape
        fixed = self.cache_dims[2]
        if path is None:
            steps = min(frames, MAX_STEPS, fixed or MAX_STEPS)
        length = fixed or steps + 1
        dims = [layers, 1, length, self.cache_dims[3], self.cache_dims[4]]
        k = np.zeros(dims, dtype=np.float32)
        v = np.zeros_like(k)
        names = [n for n, _ in contract.DECODER_INPUTS]
        outs = [n for n, _ in contract.DECODER_OUTPUTS]
        flags = self._feed_flags("decoder", on)
        token, tokens, logps = self.sos, [], []
        for t in range(steps):
            feed = dict(zip(names, [np.array([[token]], dtype=np.int64), k, v, cross_k, cross_v, np.array([t], dtype=np.int64)])) | flags
            logits, k, v = self.sessions["decoder"].run(outs, feed)
            logps.append(_log_softmax(logits[:, -1].astype(np.float32)))
            if path is None:
                token = int(logits[0, -1].argmax())
                if token == self.eos:
                    break
                tokens.append(token)
            elif t < len(path):
                token = path[t]
        return tokens if path is None else list(path), np.concatenate(logps)

    def divergence(self, on: set[Candidate]) -> float:
        """The score of running the MatMuls in `on` as int8 together (the rest float), on every utterance."""
        enc_on = any(c.role == "encoder" for c in on)
        attn = ctc = 0.0
        steps = frames = 0
        for f, ref, path, ref_logp in zip(self.feats, self.reference, self.paths, self.ref_logp):
            enc = self._encode(f, on) if enc_on else ref
            _, logp = self._decode(enc, on, path, len(ref_logp))
            attn += _kl(ref_logp, logp) * len(logp)
            steps += len(logp)
            if self.ctc_weight:
                valid = (f.shape[1] + 3) // 4  # encoder frames, the official mask rule
                ctc += _kl(ref[2][0, :valid], enc[2][0, :valid]) * valid
                frames += valid
        w = self.ctc_weight
        return (1 - w) * attn / max(steps, 1) + (w * ctc / max(frames, 1) if w else 0.0)


def choose(scores: dict[Candidate, float], budget: float) -> list[Candidate]:
    """Most score per weight first (the greedy answer to "least divergence left for this many weights"),
    while their weights fit in `budget` x all candidates' weights; ties keep graph order."""
    total = sum(c.weights for c in scores)
    kept, used = [], 0
    for c in sorted(scores, key=lambda c: -scores[c] / c.weights):
        if scores[c] > 0 and used + c.weights <= budget * total:
            kept.append(c)
            used += c.weights
    return kept


def measure(src: Path, cands: list[Candidate], rounding: Rounding, calibration: Path, samples: int, budget: float) -> tuple[set[Candidate], dict]:
    """Score every candidate alone on `samples` utterances of `calibration`, choose within `budget`; the chosen and the record of why."""
    from optimize.stages.int8_static import calibration_audio, calibration_features

    files = calibration_audio(calibration, samples)
    feats = calibration_features(Path(src) / contract.ENCODER_FILE, files)
    prober = Prober(src, cands, feats, rounding)
    scores = {c: prober.divergence({c}) for c in cands}
    chosen = set(choose(scores, budget))
    total_score, total_weights = sum(scores.values()) or 1.0, sum(c.weights for c in cands)
    ranked = sorted(cands, key=lambda c: -scores[c] / c.weights)
    record = {
        "budget": budget,
        "calibration": {"source": str(calibration), "files": len(files), "frames": sum(f.shape[1] for f in feats)},
        "score": (f"(1 - w) KL of the decoder's next-token distribution (teacher-forced on the float greedy tokens) + w KL of the CTC "
                  f"posteriors, w = ctc_weight {prober.ctc_weight:g}; one MatMul quantized at a time"),
        "divergence_all_quantized": prober.divergence(set(cands)),
        "divergence_chosen_left_out": prober.divergence(set(cands) - chosen),
        "chosen_share_of_weights": sum(c.weights for c in chosen) / total_weights,
        "order": "score per weight, highest first",
        "nodes": [{"graph": c.role, "node": c.node, "score": scores[c], "share_of_scores": scores[c] / total_score,
                   "share_of_weights": c.weights / total_weights, "chosen": c in chosen} for c in ranked],
    }  # fmt: skip
    return chosen, record


def select(src: Path, graphs: tuple[str, ...], patterns: tuple[str, ...], rounding: Rounding, calibration: Path, samples: int,
           budget: float) -> tuple[dict[str, list[str]], dict]:  # fmt: skip
    """The MatMuls of `graphs` (those matching no nodes_to_exclude `patterns`) chosen by `measure`, per graph, and the record of why."""
    from optimize.stages import GRAPHS

    cands = []
    for role in graphs:
        model = graph.load(Path(src) / GRAPHS[role])
        excluded = {n.name for n in model.graph.node if any(fnmatch.fnmatch(n.name, p) for p in patterns)}
        cands += candidates(model, role, excluded)
    if not cands:
        return {}, {"budget": budget, "nodes": []}
    chosen, record = measure(src, cands, rounding, calibration, samples, budget)
    return {role: [c.node for c in cands if c in chosen and c.role == role] for role in graphs}, record
