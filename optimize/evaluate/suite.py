"""The checks run on every pair, in order, stopping at the first failure.

1. load:       the pair loads and runs at two input lengths (encoder + one decoder step);
2. contract:   I/O, metadata and the overridable cross_attn_mask equal the baseline's;
3. parity:     cross K/V, teacher-forced logits and greedy tokens against the stage's
               input and the fp32 baseline, on a few probes (evaluate/parity.py);
4. decode:     error rates of the eval set against its references and against the
               baseline's hypotheses, and the RTF of the same timed pass (evaluate/rtf.py);
               in evaluation mode parity_only only the RTF, over the probes;
5. ops:        op statistics and size on disk.
A failed check is recorded as "<check>: <reason>" and ends the evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from optimize import contract, graph
from optimize.errors import OptimizeError
from optimize.evaluate import parity, rtf
from optimize.evaluate.metrics import Metrics
from optimize.recipe import EvaluationConfig
from optimize.runtime.audio import encoder_length
from optimize.runtime.executor import RAY_TIMED, ExecutorError, quiet, spread
from optimize.runtime.features import SAMPLE_RATE
from optimize.runtime.search import DecodeConfig
from optimize.runtime.providers import ProviderOptions

# Ops the report counts besides the fused ones: what fp16 added, what int8 produced.
TRACKED_OPS = ("Cast", "MatMul", "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits", "ConvInteger")
SECONDS_PER_FRAME = 0.01  # fbank frame shift: synthetic probes count 10 ms of "audio" per frame

# What onnxruntime raises when a loaded graph fails at run time (e.g. a deleted
# rel-shift Reshape: "Attempting to broadcast an axis ... 38 by 75", ort-toolchain.md E2).
ORT_RUN_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException, ort_state.NotImplemented, ort_state.EPFail)

Progress = Callable[[str, int], ContextManager]  # (description, total) -> context with .update(n)


@dataclass(frozen=True)
class EvalSettings:
    provider: str  # execution provider the checks run on
    threads: int  # ORT intra-op threads
    decode: DecodeConfig  # search used for the error rate
    evaluation: EvaluationConfig
    options: ProviderOptions = ProviderOptions()  # the recipe's provider_options

    def timed(self) -> str:
        """What the RTF clock covers, in words."""
        search = "greedy" if self.decode.beam_size == 1 else f"beam {self.decode.beam_size}"
        w = self.decode.ctc_weight
        search += " (joint with CTC at the pair's recommended weight, if any)" if w is None else f" joint with CTC, weight {w:g}" if w else ""
        if self.evaluation.mode == "parity_only":
            return (f"encoder + {self.evaluation.probe_steps} forced greedy decoder steps per synthetic or eval probe, "
                    f"batch 1, {self.provider}, {self.threads} thread(s); audio seconds = frames x 10 ms")  # fmt: skip
        binding = " with IOBinding" if self.options.binds(self.provider) else ""
        where = f"; {RAY_TIMED}" if self.evaluation.executor == "ray" else ""
        return (f"encoder + {search} search from CMVN-normalized fbank, batch {self.decode.batch_size}, {self.provider}{binding}, "
                f"{self.threads} thread(s); excludes audio loading, fbank+CMVN and session creation{where}")  # fmt: skip


@dataclass(frozen=True)
class EvalData:
    """The eval set as features (computed once per run), plus the parity probes."""

    feats: tuple[np.ndarray, ...]  # each shape = (T, 80), float32, CMVN-normalized
    seconds: tuple[float, ...]  # audio duration per utterance
    refs: tuple[str, ...]  # reference transcripts
    langs: tuple[str, ...]  # "zh" | "en"
    probes: tuple[np.ndarray, ...]  # parity inputs, shape = (T, 80), float32
    digest: str  # sha256 of the manifest and audio bytes (or of the synthetic probes)
    names: tuple[str, ...] = ()  # audio path per utterance, to name one in an error
    ids: tuple[str, ...] = ()  # utterance ids (the manifest's `id`, else the audio file's stem)
    fields: tuple[dict, ...] = ()  # per utterance: every manifest key, `lang` and the `length` bucket


def load_data(model_dir: Path, data: Path | None, settings: EvalSettings, progress: Progress = quiet) -> EvalData:
    """Read the manifest and compute features with `model_dir`'s CMVN (metadata is kept by every stage)."""
    cfg = settings.evaluation
    if data is None:
        probes = tuple(parity.synthetic_probes(cfg.probes))
        return EvalData((), (), (), (), probes, hashlib.sha256(b"".join(p.tobytes() for p in probes)).hexdigest())
    from optimize.corpus.manifest import read_manifest
    from optimize.runtime.audio import load_audio
    from optimize.runtime.recognizer import FrontEnd

    utterances = read_manifest(data)
    if not utterances:
        raise OptimizeError(f"eval manifest {data} lists no utterance", "point --data at a non-empty manifest")
    front_end = FrontEnd.of(model_dir)  # the CMVN only: no sessions in the parent (GBs at AED-L size)
    h, feats, seconds = hashlib.sha256(), [], []
    with progress("features", len(utterances)) as bar:
        for u in utterances:
            h.update(f"{u.text}\0{u.lang}\0".encode() + Path(u.audio).read_bytes())
            try:
                samples = load_audio(u.audio)  # refuses NaN/Inf and audio over 60 s, naming the file
            except OptimizeError as e:
                raise OptimizeError(f"eval set {data}: {e.message}", f"{e.fix}, or drop it from the manifest") from e
            feats.append(front_end.features(samples))
            seconds.append(len(samples) / SAMPLE_RATE)  # what was decoded, not what the manifest says
            bar.update(1)
    # probes spread over the length range, so parity sees short and long inputs
    order = np.argsort([len(f) for f in feats])
    picks = sorted({int(order[i]) for i in spread(len(order), cfg.probes)})
    from optimize.evaluate.breakdown import length_bucket

    ids = tuple(str(u.extra.get("id") or Path(u.audio).stem) for u in utterances)
    fields = tuple({k: v for k, v in u.extra.items() if k not in ("id", "audio", "text", "sha256")} | {"lang": u.lang, "length": length_bucket(s)}
                   for u, s in zip(utterances, seconds))  # fmt: skip
    return EvalData(
        tuple(feats), tuple(seconds), tuple(u.text for u in utterances),
        tuple(u.lang for u in utterances), tuple(feats[i] for i in picks), h.hexdigest(), tuple(str(u.audio) for u in utterances), ids, fields,
    )  # fmt: skip


class Evaluator:
    """Runs the checks on pairs of one run; remembers probe runs and the baseline's hypotheses."""

    def __init__(self, data: EvalData, settings: EvalSettings, baseline_dir: Path | None, ray_address: str | None = None):
        self.data, self.settings, self.baseline_dir = data, settings, baseline_dir
        self.ray_address = ray_address  # the cluster executor ray joins (None: $RAY_ADDRESS, else a local one)
        self.baseline: Metrics | None = None  # the baseline's metrics, set by the caller once known
        self.probe_runs: dict[str, list[parity.ProbeRun]] = {}  # by resolved pair directory

    def evaluate(self, model_dir: Path, input_dir: Path | None = None, progress: Progress = quiet) -> Metrics:
        """All checks on `model_dir`; `failures` is empty when all ran."""
        model_dir = Path(model_dir)
        metrics = Metrics()
        checks = [
            ("load", lambda: self._load(model_dir)),
            ("contract", lambda: self._contract(model_dir)),
            ("parity", lambda: self._parity(model_dir, input_dir)),
            ("decode", lambda: self._decode(model_dir, progress)),
            ("ops", lambda: _ops(model_dir)),
        ]
        for name, check in checks:
            try:
                metrics = dataclasses.replace(metrics, **check())
            except ExecutorError:
                raise  # where it ran failed, not the pair: the caller stops without recording a result
            except OptimizeError as e:
                metrics.failures.append(f"{name}: {e}")
                break
            except ORT_RUN_ERRORS as e:
                reason = " ".join(str(e).split())[:400]
                metrics.failures.append(f"{name}: onnxruntime failed at run time: {reason} (the stage broke the graph; inspect it or drop the stage)")
                break
            metrics.checks.append(name)
        return metrics

    def _pair(self, model_dir: Path):
        from optimize.runtime.session import OrtPair

        return OrtPair(model_dir, self.settings.provider, self.settings.threads, self.settings.options)

    def _bound(self, pair):
        """The IOBinding path when the settings decode through it (always on CUDA), as the recognizer does; else None."""
        from optimize.runtime.binding import BoundPair

        return BoundPair(pair) if self.settings.options.binds(self.settings.provider) else None

    def _load(self, model_dir: Path) -> dict:
        pair = self._pair(model_dir)
        rng, out = np.random.default_rng(0), []
        for frames in self.settings.evaluation.smoke_frames:
            x = rng.standard_normal((1, frames, 80)).astype(np.float32)
            cross_k, cross_v = pair.encode(x, np.array([frames], dtype=np.int64))
            info = pair.info
            want = (info.num_decoder_layers, 1, encoder_length(frames), info.d_model)
            if cross_k.shape != want or cross_v.shape != want:
                raise OptimizeError(f"{frames} frames gave cross K/V {cross_k.shape}, expected {want}", "the stage broke the encoder's shapes")
            cache = pair.empty_cache(1, pair.fixed_cache_len or 4)
            logits, _, _ = pair.decoder_step(np.array([[info.sos]], dtype=np.int64), cache, cache, cross_k, cross_v, 0)
            if logits.shape != (1, 1, info.vocab_size) or not np.isfinite(logits).all():
                raise OptimizeError(f"first decoder step at {frames} frames gave logits {logits.shape} (finite: {np.isfinite(logits).all()})", "the stage broke the decoder")
            out.append(int(cross_k.shape[2]))
        return {"load": {"frames": list(self.settings.evaluation.smoke_frames), "encoder_frames": out}}

    def _contract(self, model_dir: Path) -> dict:
        if self.baseline_dir is None:
            return {}  # OrtPair checked names, types and metadata keys on load
        (*refs, ref_tokens), (*files, tokens) = contract.model_paths(self.baseline_dir), contract.model_paths(model_dir)
        for role, ref, f in zip(contract.GRAPHS, refs, files):
            contract.verify_contract(graph.load(ref, load_external=False), graph.load(f, load_external=False), f"{model_dir.name} ({role})")
        if tokens.read_bytes() != ref_tokens.read_bytes():
            raise OptimizeError(f"{tokens} differs from the baseline's", "copy tokens.txt unchanged")
        return {}

    def reference_runs(self, model_dir: Path) -> list[parity.ProbeRun]:
        """Probe runs of a pair, computed once per directory."""
        k = str(Path(model_dir).resolve())
        if k not in self.probe_runs:
            pair, cfg = self._pair(model_dir), self.settings.evaluation
            bound = self._bound(pair)
            self.probe_runs[k] = [parity.run_probe(pair, p, cfg.probe_steps, self._forced, bound) for p in self.data.probes]
        return self.probe_runs[k]

    @property
    def _forced(self) -> bool:
        return self.settings.evaluation.mode == "parity_only"

    def _parity(self, model_dir: Path, input_dir: Path | None) -> dict:
        if self.baseline_dir is None:
            return {}
        pair, steps = self._pair(model_dir), self.settings.evaluation.probe_steps
        out = {}
        for label, ref_dir in (("vs_baseline", self.baseline_dir), ("vs_input", input_dir)):
            if ref_dir is not None:
                result, runs = parity.compare(pair, list(self.data.probes), self.reference_runs(ref_dir), steps, self._forced, self._bound(pair))
                out[label] = dataclasses.asdict(result)
        self.probe_runs[str(model_dir.resolve())] = runs
        metrics: dict = {"parity": out}
        if self._forced:
            metrics["token_agreement"] = out["vs_baseline"]["greedy_identical"]
        return metrics

    def _decode(self, model_dir: Path, progress: Progress) -> dict:
        """Error rates and RTF from one timed pass over the eval set (probes in parity_only)."""
        if self._forced:
            return self._probe_rtf(model_dir, progress)
        from optimize.evaluate.breakdown import counts
        from optimize.evaluate.wer import score
        from optimize.runtime import executor

        s, d = self.settings, self.data
        order = sorted(range(len(d.feats)), key=lambda i: len(d.feats[i]))
        size = s.decode.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        work = executor.Work(
            tuple(tuple(d.feats[i] for i in b) for b in batches),
            tuple(tuple(d.names[i] if d.names else f"#{i}" for i in b) for b in batches),
            tuple(sum(d.seconds[i] for i in b) for b in batches),
        )
        decoder = executor.Decoder(model_dir, s.decode, s.provider, s.threads, s.options)
        ev = s.evaluation
        out = executor.decode(decoder, work, ev.warmup, s.timed(), ev.executor, ev.workers, self.ray_address, progress)
        hyps = [None] * len(d.feats)
        for b, res in zip(batches, out.hyps):
            for i, h in zip(b, res):
                hyps[i] = h
        texts = [h.text for h in hyps]
        rates = score(d.refs, texts, d.langs)
        metrics = {
            "error_rate": rates["mixed"].rate,
            "error_rates": {lang: r.rate for lang, r in rates.items()},
            "error_counts": counts(d.refs, texts),
            "hyps": [{"id": i, "tokens": list(h.tokens), "text": h.text} for i, h in zip(d.ids or [None] * len(hyps), hyps)],
            "rtf": dataclasses.asdict(out.rtf),
            "io_binding": out.io_binding,  # what decoded, as opposed to what was asked
            "throughput": out.throughput,  # audio seconds per wall second of the whole decode, where it ran
        }
        if self.baseline is not None:
            base = self.baseline.hyps
            metrics["token_agreement"] = sum(tuple(b["tokens"]) == h.tokens for b, h in zip(base, hyps)) / max(len(hyps), 1)
            metrics["error_rate_vs_baseline"] = score([b["text"] for b in base], texts, d.langs)["mixed"].rate
        return metrics

    def _probe_rtf(self, model_dir: Path, progress: Progress) -> dict:
        pair, cfg = self._pair(model_dir), self.settings.evaluation
        probes = list(self.data.probes)
        bound = self._bound(pair)
        fn = lambda p: parity.run_probe(pair, p, cfg.probe_steps, True, bound)  # noqa: E731
        with progress(f"time {model_dir.name}", len(probes)) as bar:
            _, timing = rtf.measure(fn, probes, [len(p) * SECONDS_PER_FRAME for p in probes], probes[: cfg.warmup], self.settings.timed(), bar.update)
        return {"error_rate": None, "rtf": dataclasses.asdict(timing)}


def _ops(model_dir: Path) -> dict:
    files = contract.model_files(model_dir)
    counts = {role: graph.op_counts(graph.load(f, load_external=False)) for role, f in files.items()}
    total = lambda ops: sum(c.get(op, 0) for c in counts.values() for op in ops)  # noqa: E731
    stats = {"fused": total(contract.FUSED_OPS), **{op: total((op,)) for op in TRACKED_OPS}, "nodes": sum(sum(c.values()) for c in counts.values())}
    size = sum(graph.size_bytes(f) for f in files.values())
    return {"ops": counts, "op_stats": stats, "size_mb": size / 1e6}
