"""Command line: the only module that prints or exits.

Each command imports its implementation lazily so that `optimize run` and
`optimize transcribe` never import torch. Only OptimizeError is caught: it is a
user error and prints as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from optimize.errors import OptimizeError

app = typer.Typer(pretty_exceptions_show_locals=False, no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """Export FireRedASR AED to split ONNX, optimize it for ONNX Runtime, and prove accuracy held."""


def _user_errors(fn):
    """Turn OptimizeError into `error: message (fix)` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OptimizeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)

    return wrapper


# ---- export (issue: export + recognizer) ------------------------------------------------


@app.command()
@_user_errors
def export(
    ckpt_dir: Path = typer.Argument(..., help="official checkpoint dir: model.pth.tar, cmvn.ark, dict.txt"),
    output: Path = typer.Option(..., "-o", "--output", help="directory for encoder.onnx, decoder.onnx, tokens.txt"),
    fixed_cache_len: Optional[int] = typer.Option(
        None, "--fixed-cache-len", help="export the published v1 layout with this fixed self-cache length (1024)"
    ),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17)"),
    with_ctc: bool = typer.Option(
        False, "--with-ctc", help="FireRedASR2: add the CTC head's log-probs as a third encoder output (for --timestamps)"
    ),
):
    """Export an official FireRedASR AED checkpoint (FireRedASR-AED-L or FireRedASR2-AED) to the split sherpa-onnx contract."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    cfg = ExportConfig()
    overrides = {k: v for k, v in {"fixed_cache_len": fixed_cache_len, "opset": opset, "with_ctc": with_ctc or None}.items() if v is not None}
    import dataclasses

    cfg = dataclasses.replace(cfg, **overrides)
    for path in export_checkpoint(ckpt_dir, output, cfg):
        typer.echo(f"wrote {path}")


# ---- transcribe (issue: ORT recognizer) --------------------------------------------------

# Where utterances are decoded (optimize.runtime.executor); shared by transcribe, run and eval.
_WORKERS_HELP = "executor ray: decoding workers of --threads CPUs each [default: as many as the cluster's CPUs hold]"
_ADDRESS_HELP = "executor ray: the cluster to join, HOST:PORT or ray://HOST:10001 [default: $RAY_ADDRESS, else a local cluster]"


@app.command()
@_user_errors
def transcribe(
    model_dir: Path = typer.Argument(..., help="directory holding encoder.onnx, decoder.onnx, tokens.txt"),
    audio: List[Path] = typer.Argument(..., help="wav/flac/ogg files; other sample rates are resampled to 16 kHz"),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="beam width, 1 = greedy (default: DecodeConfig.beam_size)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="utterances per encoder/decoder run (default: DecodeConfig.batch_size)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads, 0 = ORT's choice (default: Recognizer)"),
    provider: Optional[str] = typer.Option(None, "--provider", help="cpu or cuda (default: Recognizer)"),
    device_id: Optional[int] = typer.Option(None, "--device-id", help="CUDA device ordinal (default: ProviderOptions)"),
    io_binding: bool = typer.Option(False, "--io-binding", help="keep cross K/V and caches as OrtValues on the CPU provider too (always on cuda)"),
    executor: str = typer.Option("local", "--executor", help="local (this process) or ray (sharded over a Ray cluster's workers, 1 thread each unless --threads)"),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=_ADDRESS_HELP),
    timestamps: bool = typer.Option(
        False, "--timestamps", help="per-token start/end seconds by CTC forced alignment (a pair exported with --with-ctc); adds a JSON field"
    ),
):
    """Transcribe audio files with an ONNX pair; prints `path<TAB>text` per file.

    With --timestamps a third field follows: JSON [[token, start, end], ...] in seconds.
    """
    from optimize.runtime.recognizer import Recognizer
    from optimize.runtime.search import DecodeConfig
    from optimize.runtime.providers import ProviderOptions

    _quiet_onnxruntime()
    decode = _replace(DecodeConfig(), beam_size=beam_size, batch_size=batch_size)
    options = _replace(ProviderOptions(), device_id=device_id, io_binding=io_binding or None)
    if timestamps and (executor != "local" or workers is not None or ray_address is not None):
        raise OptimizeError("--timestamps with --executor ray", "use --executor local for timestamps")
    if executor != "local" or workers is not None or ray_address is not None:
        hyps = _transcribe_distributed(model_dir, audio, decode, provider, threads, options, executor, workers, ray_address)
    else:
        session = {k: v for k, v in {"threads": threads, "provider": provider}.items() if v is not None}
        recognizer = Recognizer(model_dir, decode=decode, options=options, timestamps=timestamps, **session)
        hyps = recognizer.transcribe(audio)
    for path, hyp in zip(audio, hyps):
        line = f"{path}\t{hyp.text}"
        if timestamps:
            import json

            symbols = recognizer.tokens.symbols
            line += "\t" + json.dumps([[symbols[t], s, e] for t, (s, e) in zip(hyp.tokens, hyp.times)], ensure_ascii=False)
        typer.echo(line)


def _transcribe_distributed(model_dir, audio, decode, provider, threads, options, executor, workers, ray_address) -> list:
    """transcribe --executor ray: shards on the cluster's workers, each with the same Recognizer settings."""
    from optimize.runtime import executor as ex

    if executor not in ex.EXECUTORS:
        raise OptimizeError(f"--executor {executor!r} is not known", f"use one of {', '.join(ex.EXECUTORS)}")
    if executor != "ray":
        raise OptimizeError(f"--workers/--ray-address with --executor {executor}", "add --executor ray")
    # one ORT thread per worker unless asked: a worker per CPU is how the executor scales
    decoder = ex.Decoder(Path(model_dir), decode, provider or "cpu", 1 if threads is None else threads, options)
    return ex.transcribe(decoder, audio, workers or 0, ray_address, progress=_bar)


# ---- run, eval (issue: the staged pipeline) ---------------------------------------------


def _log(message: str) -> None:
    typer.echo(message, err=True)


def _bar(desc: str, total: int):
    """The one progress reporter: tqdm on stderr, silent when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, disable=None)


def _quiet_onnxruntime() -> None:
    # ORT warns on every session that cross_attn_mask is an initializer listed as an
    # input (that is the contract: an overridable initializer), and logs run-time
    # failures that the checks already report in one line. Fatal messages still show.
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)


def _replace(obj, **overrides):
    """dataclasses.replace with only the options the user gave (CLI defaults are None)."""
    import dataclasses

    return dataclasses.replace(obj, **{k: v for k, v in overrides.items() if v is not None})


@app.command()
@_user_errors
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML, e.g. recipes/cpu_int8.yaml"),
    model: Optional[Path] = typer.Option(None, "--model", help="input pair directory [default: the recipe's model]"),
    data: Optional[Path] = typer.Option(None, "--data", help="eval manifest [default: the recipe's data]"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory [default: the recipe's output, runs/<recipe>]"),
    provider: Optional[str] = typer.Option(None, "--provider", help="run the checks on cpu or cuda instead of the recipe's provider (RTF then not representative)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads [default: the recipe's threads]"),
    force: bool = typer.Option(False, "--force", help="redo cached stages and evaluations"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local or ray: where each evaluation decodes the eval set [default: the recipe's evaluation.executor]"),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=_ADDRESS_HELP),
    in_process: bool = typer.Option(False, "--in-process", help="run stages and evaluations in this process (faster start, for debugging; no per-stage peak memory)"),
):
    """Run a recipe: baseline -> stages, checks and gates after each; publishes <output>/final on success."""
    from optimize import pipeline, report
    from optimize.recipe import load_recipe

    _quiet_onnxruntime()
    cfg = _replace(load_recipe(recipe), model=model, data=data, output=output, threads=threads)
    cfg = _replace(cfg, evaluation=_replace(cfg.evaluation, executor=executor, workers=workers))
    options = pipeline.Options(provider=provider, force=force, ray_address=ray_address, isolate=not in_process)
    result = pipeline.run(cfg, options, log=_log, progress=_bar)
    widths = [max(len(c), *(len(r[i]) for r in report.table_rows(result))) for i, c in enumerate(report.HEADERS)]
    for cells in [list(report.HEADERS), *report.table_rows(result)]:
        typer.echo("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    if not result["rtf_representative"]:
        typer.echo(f"RTF not representative: recipe targets {result['target_provider']}, ran on {result['provider']}")
    typer.echo(f"published {result['final']}; report {Path(cfg.output) / report.MARKDOWN}")


@app.command("eval")
@_user_errors
def eval_(
    model_dir: Path = typer.Argument(..., help="directory holding encoder.onnx, decoder.onnx, tokens.txt"),
    data: Optional[Path] = typer.Option(None, "--data", help="eval manifest [default: the recipe's data]"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write every metric to this JSON file"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="take provider, threads, decode and evaluation settings from this recipe"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="fp32 pair to compare against: parity, token agreement, deltas"),
    provider: Optional[str] = typer.Option(None, "--provider", help="cpu or cuda [default: the recipe's provider]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads [default: the recipe's threads]"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local or ray: where the eval set is decoded [default: the recipe's evaluation.executor]"),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=_ADDRESS_HELP),
):
    """Run the pipeline's evaluation on any pair: load, contract, parity, error rate, RTF, ops, size."""
    import json

    from optimize import pipeline
    from optimize.evaluate.suite import EvalSettings
    from optimize.recipe import default, load_recipe

    _quiet_onnxruntime()
    src = load_recipe(recipe) if recipe else None
    pick = lambda name: getattr(src, name) if src else default(name)  # noqa: E731
    evaluation = _replace(pick("evaluation"), executor=executor, workers=workers)
    settings = _replace(EvalSettings(pick("provider"), pick("threads"), pick("decode"), evaluation, pick("provider_options")), provider=provider, threads=threads)
    result = pipeline.evaluate_pair(model_dir, data or pick("data"), settings, reference, progress=_bar, ray_address=ray_address)
    m = result["metrics"]
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, default=str))
    if m["failures"]:
        raise OptimizeError(f"{model_dir} failed {m['failures'][0]}", "see the checks in `optimize eval --help`")
    rtf = m["rtf"]
    rates = ", ".join(f"{k} {v:.2f}%" for k, v in (m.get("error_rates") or {}).items()) or "n/a (parity_only)"
    typer.echo(f"error rate: {rates}")
    if m["token_agreement"] is not None:
        typer.echo(f"vs reference: token agreement {m['token_agreement']:.3f}, error rate delta {result.get('delta_error_rate')}, speedup {result['speedup']:.2f}x")
    typer.echo(f"RTF {rtf['rtf']:.4f} (p50 {rtf['p50']:.4f}, p90 {rtf['p90']:.4f}) over {rtf['items']} items: {rtf['timed']}")
    tp = m["throughput"]
    if tp:  # None in parity_only evaluations without eval data
        typer.echo(f"throughput {tp['audio_seconds_per_wall_second']:.1f} audio s per wall s ({tp['executor']}, {tp['workers']} worker(s), {tp['shards']} shard(s))")
    typer.echo(f"size {m['size_mb']:.2f} MB; ops {m['op_stats']}")


@app.command()
@_user_errors
def bench(
    pairs: list[Path] = typer.Argument(..., help="pair directories to time side by side in this run"),
    frames: Optional[int] = typer.Option(None, "--frames", help="input length in 10 ms fbank frames [default: BenchConfig]"),
    steps: Optional[int] = typer.Option(None, "--steps", help="decoder steps per run, eos suppressed [default: BenchConfig]"),
    batch: Optional[int] = typer.Option(None, "--batch", help="utterances per run [default: BenchConfig]"),
    beam: Optional[int] = typer.Option(None, "--beam", help="decoder rows per utterance [default: BenchConfig]"),
    provider: Optional[str] = typer.Option(None, "--provider", help="cpu or cuda [default: BenchConfig]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads [default: BenchConfig]"),
    io_binding: bool = typer.Option(False, "--io-binding", help="decode through IOBinding on the CPU provider too (CUDA always does)"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="timed runs, medians reported [default: BenchConfig]"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the results, the settings and the CPU model here"),
):
    """Time each pair's encoder and decoder steps at one shape through the recognizer's own decode path."""
    import dataclasses
    import json
    import platform

    from optimize.evaluate.bench import BenchConfig, bench as run_bench

    _quiet_onnxruntime()
    cfg = _replace(BenchConfig(), frames=frames, steps=steps, batch=batch, beam=beam, provider=provider, threads=threads,
                   io_binding=io_binding or None, repeats=repeats)  # fmt: skip
    results = [run_bench(p, cfg) for p in pairs]
    typer.echo(f"{'pair':>40}  {'encoder ms':>10}  {'ms/step':>8}  {'total ms':>9}  {'RTF':>7}  rows  steps  io_binding")
    for r in results:
        typer.echo(f"{r.pair:>40}  {r.encoder_ms:10.2f}  {r.decoder_ms_per_step:8.3f}  {r.total_ms:9.2f}  {r.rtf:7.4f}  {r.rows:>4}  {r.steps:>5}  {r.io_binding}")
    if json_path:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
        record = {"settings": dataclasses.asdict(cfg), "cpu": cpu, "results": [dataclasses.asdict(r) for r in results]}
        json_path.write_text(json.dumps(record, indent=2))


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
