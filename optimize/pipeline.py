"""The stage runner: baseline -> each recipe stage -> final, stage-agnostic.

For every stage: cache lookup -> `run` in a child process (peak memory measured per
stage, and the parent never imports what a stage imports) -> checks (evaluate/suite.py)
-> gates -> a report row; the report is rewritten after every stage. The first failure
stops the run with an OptimizeError; the failing stage's directory stays for
inspection and `final/` is written only when every stage passed.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

from optimize import atomic, cache, contract, report, rundir
from optimize.child import run_in_child
from optimize.contract import model_paths
from optimize.errors import GateFailure, OptimizeError
from optimize.evaluate import breakdown
from optimize.evaluate.memory import max_rss_bytes
from optimize.evaluate.metrics import SPEEDUP_BASIS, Comparison, Metrics, compare
from optimize.evaluate.suite import EvalSettings, Evaluator, Progress, load_data, quiet
from optimize.recipe import Recipe, Stage, to_dict
from optimize.runtime.executor import ExecutorError, cluster
from optimize.runtime.providers import check_provider
from optimize.stages import QUANTIZING, STAGE_DEPENDS, STAGES, check_plan, pair_kind

BASELINE = "baseline"
# Our modules whose code decides what a stage writes / what an evaluation measures.
STAGE_CODE = ("optimize.stages", "optimize.graph")
EVAL_CODE = ("optimize.evaluate.suite", "optimize.evaluate.metrics", "optimize.evaluate.parity", "optimize.evaluate.rtf", "optimize.evaluate.wer",
             "optimize.runtime.providers", "optimize.runtime.session", "optimize.runtime.search", "optimize.runtime.inference", "optimize.runtime.binding", "optimize.runtime.recognizer",
             "optimize.runtime.executor")  # fmt: skip
FINAL = report.FINAL
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Options:
    """How to run a recipe, as opposed to what it is."""

    provider: str | None = None  # run the checks on this provider instead of the recipe's (RTF then not representative)
    force: bool = False  # redo cached stages and evaluations
    ray_address: str | None = None  # the Ray cluster evaluation.executor ray joins (None: $RAY_ADDRESS, else a local one)
    # each stage and each evaluation in a fresh process: its own peak RSS, and the memory of
    # multi-GB sessions leaves with it; False runs them in this process (the tests, a debugger),
    # with the same outputs and cache keys but no per-stage peak memory
    isolate: bool = True
    by: tuple[str, ...] = ("lang", "length")  # manifest fields the report breaks error rates down by


def _check_provider(recipe: Recipe, provider: str) -> None:
    """Fail before any stage when the provider cannot run here: unknown, no CUDA EP, or one that does not start."""
    try:
        check_provider(provider, recipe.provider_options)
    except OptimizeError as e:
        if provider != "cuda":
            raise
        raise OptimizeError(f"recipe {recipe.name} targets cuda but {e.message}", f"{e.fix} to run the same checks on the CPU (RTF not representative)") from e


def _stage_child(module: str, src: str, dst: str, cfg: object, isolated: bool = True) -> dict:
    """Body of the per-stage child process (or the stage in this one); OptimizeError comes back as data (it does not pickle its fix)."""
    import importlib
    import logging

    import onnxruntime

    # the tools log known, harmless warnings (ORT's "symbolic shape inference disabled",
    # the quantizer's pre-processing hint); failures still raise
    logging.getLogger().setLevel(logging.ERROR)
    onnxruntime.set_default_logger_severity(3)
    start = time.perf_counter()
    try:
        out = importlib.import_module(module).run(Path(src), Path(dst), cfg)
    except OptimizeError as e:
        return {"error": [e.message, e.fix]}
    peak = max_rss_bytes() / 2**20 if isolated else None  # in this process the high-water mark is not the stage's
    return {"output": out.to_json(), "seconds": time.perf_counter() - start, "peak_rss_mb": peak}


def _transform(stage: Stage, src: Path, dst: Path, isolate: bool) -> dict:
    """Run one stage, in a fresh process when `isolate`, and return what it reported."""
    if not isolate:
        result = _stage_child(STAGES[stage.name], str(src), str(dst), stage.config, isolated=False)
    else:
        # a fresh interpreter (own address space: VmHWM; no inherited imports) that dies with this one
        result = run_in_child(f"stage {stage.name}", _stage_child, STAGES[stage.name], str(src), str(dst), stage.config)
    if "error" in result:
        raise OptimizeError(*result["error"])
    return result


def _evaluate_child(evaluator: Evaluator, stage_dir: str, input_dir: str | None, progress: Progress) -> tuple[Metrics, dict, float]:
    """Body of the evaluation child: the metrics, the evaluator's probe runs (reused by later stages), peak RSS."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    known = set(evaluator.probe_runs)
    metrics = evaluator.evaluate(Path(stage_dir), None if input_dir is None else Path(input_dir), progress)
    new_runs = {k: v for k, v in evaluator.probe_runs.items() if k not in known}
    return metrics, new_runs, max_rss_bytes() / 2**20


def _evaluate_in_child(evaluator: Evaluator, stage_dir: Path, input_dir: Path | None, progress: Progress) -> Metrics:
    """Evaluate in a fresh process, like the stages: the sessions' memory (several GB per
    pair at AED-L size, kept by the allocator after the sessions close) leaves with it, so
    the parent stays small while the next stage runs. Its peak RSS joins the metrics."""
    # send only the probe runs this evaluation compares against (cross K/V: ~160 MB per pair at AED-L)
    refs = {str(Path(d).resolve()) for d in (evaluator.baseline_dir, input_dir) if d is not None}
    child = copy.copy(evaluator)  # shallow: the eval data is shared, not copied
    child.probe_runs = {k: v for k, v in evaluator.probe_runs.items() if k in refs}
    where = None if input_dir is None else str(input_dir)
    metrics, runs, peak_mb = run_in_child(f"evaluation of {stage_dir.name}", _evaluate_child, child, str(stage_dir), where, progress)
    evaluator.probe_runs.update(runs)
    return dataclasses.replace(metrics, eval_peak_rss_mb=peak_mb)


def _import_baseline(src: Path, dst: Path) -> dict:
    """Copy the input pair into the run directory: every later stage reads only the run's copies."""
    enc, dec, _ = model_paths(src)  # a published variant (encoder.int8.onnx, ...) is stored as encoder.onnx, decoder.onnx
    atomic.copy_files(cache.pair_files(src), dst, {enc.name: contract.ENCODER_FILE, dec.name: contract.DECODER_FILE})
    return {"output": {"notes": [f"the {pair_kind(dst)} input pair, unchanged"]}, "seconds": 0.0, "peak_rss_mb": None}


def stage_code(name: str) -> str:
    """Digest of the code a stage's output depends on: the runner, the stage module and what it builds on."""
    return cache.code_digest(*STAGE_CODE, *([STAGES[name]] if name in STAGES else []), *STAGE_DEPENDS.get(name, ()))


def _produce(stage: Stage, src: Path, dst: Path, options: Options, log: Log) -> dict:
    """The stage's record: from the cache when its key matches, else by running it."""
    inputs = cache.digests(src)
    config = dataclasses.asdict(stage.config) if dataclasses.is_dataclass(stage.config) else {}
    code = stage_code(stage.name)
    key = cache.key(stage.name, inputs, {"config": config, "code": code})
    record = None if options.force else cache.finished(dst, key)
    if record:
        log(f"{dst.name}: cached")
        return record | {"cached": True}
    log(f"{dst.name}: running")
    shutil.rmtree(dst, ignore_errors=True)
    try:
        done = _import_baseline(src, dst) if stage.name == BASELINE else _transform(stage, src, dst, options.isolate)
    except BaseException:  # an error, Ctrl-C: a killed child could not remove its half-written output
        shutil.rmtree(atomic.temp_path(dst), ignore_errors=True)
        raise
    record = {"stage": stage.name, "key": key, "config": config, "versions": cache.tool_versions(), "host": cache.host(),
              "inputs": inputs, "outputs": cache.digests(dst), **done}  # fmt: skip
    cache.write_record(dst, record)
    return record | {"cached": False}


def _evaluate(evaluator: Evaluator, record: dict, stage_dir: Path, input_dir: Path | None, settings: dict, options: Options, progress: Progress) -> Metrics:
    """Metrics of a stage's pair, from the record when its evaluation key matches."""
    def outputs(d: Path | None) -> dict | None:
        return cache.read_record(d)["outputs"] if d else None

    refs = {"input": outputs(input_dir), "baseline": outputs(evaluator.baseline_dir)}
    key = cache.key("evaluation", record["outputs"], settings | {"references": refs, "code": cache.code_digest(*EVAL_CODE)})
    cached = record.get("evaluation", {})
    if not options.force and cached.get("key") == key:
        return Metrics.from_json(cached["metrics"])
    try:
        if options.isolate:
            metrics = _evaluate_in_child(evaluator, stage_dir, input_dir, progress)
        else:
            metrics = evaluator.evaluate(stage_dir, input_dir, progress)
    except ExecutorError as e:  # the cluster's problem, not the pair's: no failed row, nothing cached
        raise ExecutorError(f"evaluating {stage_dir.name}: {e.message}", f"{e.fix}; nothing was published") from e
    cache.write_record(stage_dir, {k: v for k, v in record.items() if k != "cached"} | {"evaluation": {"key": key, "metrics": metrics.to_json()}})
    return metrics


def _judge(metrics: Metrics, baseline: Metrics | None, recipe: Recipe, provider: str, representative: bool) -> tuple[Comparison | None, list[str]]:
    """The stage against the baseline (None when a check failed), and the failures (checks first)."""
    failures = list(metrics.failures)
    if baseline is None:
        return Comparison(0.0, 1.0, SPEEDUP_BASIS[provider]), failures  # the baseline against itself
    if failures:
        return None, failures
    g, judged = recipe.gates, compare(metrics, baseline, provider)
    delta, agreement = judged.delta_error_rate, metrics.token_agreement
    if delta is not None and delta > g.max_error_rate_increase:
        failures.append(f"gate: error rate {metrics.error_rate:.2f}% is {delta:+.2f} points over the baseline, max_error_rate_increase is {g.max_error_rate_increase}")
    if agreement is not None and agreement < g.min_token_agreement:
        failures.append(f"gate: token agreement {agreement:.3f} with the baseline is below min_token_agreement {g.min_token_agreement}")
    cosine = ((metrics.parity or {}).get("vs_baseline") or {}).get("teacher_forced_cosine")
    if cosine is not None and cosine < g.min_logits_cosine:
        failures.append(f"gate: teacher-forced logits cosine {cosine:.5f} with the baseline is below min_logits_cosine {g.min_logits_cosine}")
    if representative and judged.speedup < g.min_speedup:
        failures.append(f"gate: speedup {judged.speedup:.2f}x over the baseline ({judged.basis}) is below min_speedup {g.min_speedup}")
    return judged, failures


# Stages that quantize their input: a pair that is already quantized must not enter them.
QUANTIZING_STAGES = QUANTIZING


def _check_tokens(model: Path) -> None:
    """A tokens.txt that does not fit the decoder's vocabulary is bad input: refused before the run writes anything."""
    from optimize import graph
    from optimize.runtime.tokens import TokenTable

    try:
        _, dec, tokens = model_paths(model)
        dims = graph.load(dec, load_external=False).graph.output[0].type.tensor_type.shape.dim  # logits (N, 1, V)
        vocab = dims[2].dim_value if len(dims) == 3 else 0
        n = len(TokenTable.read(tokens))
    except OptimizeError:
        return  # missing or unreadable: the baseline stage names it
    if vocab and n != vocab:
        raise OptimizeError(f"{tokens} has {n} symbols, the decoder's vocabulary is {vocab}", "use the tokens.txt that came with these graphs")


def _input_stages(recipe: Recipe, log: Log) -> list[Stage]:
    """Stages the input pair needs before the recipe's own: `reexport` for a published sherpa-onnx pair.

    A pair not made by `optimize export` (no overridable cross_attn_mask) keeps the published
    graphs' fixed cache, per-step machinery and batch 1, which the recipe's stages cannot
    undo (issue 12: 2.7x slower, 3.4x larger); re-exporting its weights gives our pair.
    An already quantized pair is refused here, before any stage runs.
    """
    from optimize.contract import model_paths
    from optimize.stages import config_class, reexport

    _check_tokens(Path(recipe.model))
    try:
        quantized = reexport.quantized(Path(recipe.model))
        published = reexport.needed(Path(recipe.model))
    except OptimizeError:
        return []  # a missing or unreadable pair: the baseline stage reports it in its report row
    quantizing = [s.name for s in recipe.stages if s.name in QUANTIZING_STAGES]
    if quantized and (quantizing or published):
        ops = "; ".join(f"{role}: " + ", ".join(f"{n} {op}" for op, n in sorted(q.items())) for role, q in quantized.items())
        why = f"recipe {recipe.name} would quantize it again (stage {quantizing[0]})" if quantizing else "its weights cannot be lifted exactly"
        raise OptimizeError(
            f"{recipe.model} is already quantized ({ops}) and {why}",
            "start from the published fp32 or fp16 files or from the official checkpoint; `optimize eval` and `optimize transcribe` run this pair as it is",
        )
    if not published or (recipe.stages and recipe.stages[0].name == "reexport"):
        return []
    log(f"note: {recipe.model} was not made by `optimize export` (published sherpa-onnx style); stage reexport runs first (needs torch)")
    return [Stage("reexport", config_class("reexport")())]


def run(recipe: Recipe, options: Options = Options(), log: Log = lambda s: None, progress: Progress = quiet) -> dict:
    """Run `recipe`; returns the report. Raises GateFailure on the first stage that fails a check or
    gate, OptimizeError when a stage cannot be produced."""
    provider = options.provider or recipe.provider
    _check_provider(recipe, provider)
    run_dir = Path(recipe.output)
    rundir.check_paths(Path(recipe.model), run_dir)
    model_paths(recipe.model)  # a missing or misnamed input is a one-line error before anything is created
    before = _input_stages(recipe, log)  # refuses an unsuitable input before anything is written
    representative = provider == recipe.provider
    if not representative:
        log(f"note: recipe {recipe.name} targets {recipe.provider}; running on {provider}, so RTF is not representative and min_speedup is not judged")
    settings = EvalSettings(provider, recipe.threads, recipe.decode, recipe.evaluation, recipe.provider_options)
    header = report.header(recipe, to_dict(recipe), provider, representative, settings.timed(), SPEEDUP_BASIS[provider])
    ev = recipe.evaluation
    with rundir.locked(run_dir):
        report.write(run_dir, header, [], None)  # an earlier run's report must not speak for this one
        with cluster(ev.executor, ev.workers, recipe.threads, options.ray_address) as address:  # joined once, before any stage
            return _run_stages(recipe, options, settings, header, address, log, progress, before)


def _run_stages(recipe: Recipe, options: Options, settings: EvalSettings, header: dict, address: str | None, log: Log, progress: Progress,
                before: list[Stage]) -> dict:
    """Baseline, then each stage: produce, evaluate, judge, report; publish final when all passed."""
    run_dir, provider, representative = Path(recipe.output), settings.provider, header["rtf_representative"]
    chain = [Stage(BASELINE, None), *before, *recipe.stages]
    src, rows, evaluator = Path(recipe.model), [], None
    for index, stage in enumerate(chain):
        stage_dir = run_dir / f"{index}-{stage.name}"
        try:
            record = _produce(stage, src, stage_dir, options, log)
        except OptimizeError as e:
            rows.append(report.Row(stage.name, str(stage_dir), passed=False, failures=[f"stage: {e}"]))
            report.write(run_dir, header, rows, None)
            raise OptimizeError(f"stage {stage.name} failed: {e.message}", f"{e.fix}; nothing was published") from e
        if index == 0:  # what the input graphs are decides which stages apply: refuse before any runs
            check_plan(stage_dir, [(s.name, s.config) for s in chain[1:]])
        if evaluator is None:
            evaluator = Evaluator(load_data(stage_dir, recipe.data, settings, progress), settings, stage_dir, address)
            breakdown.check_fields(evaluator.data.fields, options.by if evaluator.data.refs else ())
        eval_settings = dataclasses.asdict(settings) | {"data": evaluator.data.digest}
        metrics = _evaluate(evaluator, record, stage_dir, None if index == 0 else src, eval_settings, options, progress)
        if index == 0:
            metrics = dataclasses.replace(metrics, token_agreement=1.0)  # the baseline agrees with itself
            evaluator.baseline = metrics if metrics.passed else None
        judged, failures = _judge(metrics, evaluator.baseline if index else None, recipe, provider, representative)
        row = report.Row.of(stage.name, stage_dir, record, metrics, judged, failures)
        rows.append(dataclasses.replace(row, **_analysis(evaluator, metrics, options.by)))
        report.write(run_dir, header, rows, None)
        if failures:
            error = GateFailure if index else OptimizeError  # a baseline that fails its checks is bad input
            raise error(f"stage {stage.name} failed {failures[0]}", f"the artifact stays in {stage_dir} for inspection; nothing was published")
        log(f"{stage_dir.name}: passed")
        src = stage_dir
    final = atomic.copy_files(cache.pair_files(src), run_dir / FINAL)
    return report.write(run_dir, header, rows, final)


def _analysis(evaluator: Evaluator, metrics: Metrics, by: tuple[str, ...]) -> dict:
    """Error rates by manifest field and the utterances changed against the baseline (none in parity_only)."""
    d, hyps = evaluator.data, metrics.hyps
    if not hyps or not d.refs:
        return {}
    texts = [h["text"] for h in hyps]
    out = {"breakdown": breakdown.breakdown(d.refs, texts, d.langs, d.fields, by)}
    if evaluator.baseline is not None and evaluator.baseline.hyps is not hyps:
        out["changed"] = breakdown.changed(d.ids, d.refs, [h["text"] for h in evaluator.baseline.hyps], texts)
    return out


def evaluate_pair(model_dir: Path, data: Path | None, settings: EvalSettings, reference: Path | None = None, progress: Progress = quiet,
                  ray_address: str | None = None, by: tuple[str, ...] = ()) -> dict:  # fmt: skip
    """`optimize eval`: the checks on any pair; parity, agreement and deltas need a `reference` pair;
    `by` adds error rates by those manifest fields ("breakdown") and, with a reference, the changed utterances."""
    from optimize.runtime.providers import check_threads

    check_threads(settings.threads)  # bad input, not a failed check: refused before anything loads
    check_provider(settings.provider, settings.options)
    for pair in (model_dir, reference):
        if pair is not None:
            model_paths(pair), cache.pair_files(Path(pair))  # missing files, external data included
    ev = settings.evaluation
    with cluster(ev.executor, ev.workers, settings.threads, ray_address) as address:  # joined once for pair and reference
        return _evaluate_pair(model_dir, data, settings, reference, progress, address, by)


def _evaluate_pair(model_dir: Path, data: Path | None, settings: EvalSettings, reference: Path | None, progress: Progress, address: str | None,
                   by: tuple[str, ...] = ()) -> dict:  # fmt: skip
    evaluator = Evaluator(load_data(Path(reference or model_dir), data, settings, progress), settings, reference, address)
    breakdown.check_fields(evaluator.data.fields, by if evaluator.data.refs else ())
    out: dict = {"model": str(model_dir), "data": None if data is None else str(data), "provider": settings.provider,
                 "threads": settings.threads, "rtf_timed": settings.timed(), "reference": None if reference is None else str(reference)}  # fmt: skip
    if reference is not None:
        evaluator.baseline = evaluator.evaluate(Path(reference), None, progress)
        if not evaluator.baseline.passed:
            raise OptimizeError(f"reference {reference} failed {evaluator.baseline.failures[0]}", "pass a working fp32 pair as --reference")
        out["reference_metrics"] = evaluator.baseline.to_json()
    metrics = evaluator.evaluate(Path(model_dir), None, progress)
    out["metrics"] = metrics.to_json()
    if reference is not None and metrics.passed:
        judged = compare(metrics, evaluator.baseline, settings.provider)
        out["delta_error_rate"], out["speedup"] = judged.delta_error_rate, judged.speedup
    if metrics.passed:
        out |= _analysis(evaluator, metrics, by) if by or reference is not None else {}
    return out
