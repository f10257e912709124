"""Command line: the only module that prints or exits.

Each command imports its implementation lazily so that `optimize run` and
`optimize transcribe` never import torch. Only OptimizeError is caught: it is a
user error and prints as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from optimize import __version__
from optimize.errors import GateFailure, OptimizeError, environment_error
from optimize.overrides import replace_given as _replace

try:  # typer >= 0.26 carries its own copy of click
    from typer._click import exceptions as usage
except ImportError:  # older typer: click itself
    from click import exceptions as usage
from optimize.evaluate.bench import BenchConfig
from optimize.runtime.search import DecodeConfig
from optimize.runtime.vad import VadConfig

# rich_markup_mode=None: plain help, so "[default: 3]" is shown instead of eaten as a rich tag and
# flags are not labelled <bool>
INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT
INTERRUPT_FIX = "re-run the same command to resume: finished stages are cached"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs (children stopped, temp files removed)."""


def _terminate(signum, frame):
    raise _Terminated()


class _OneLineErrors(TyperGroup):
    """Usage mistakes (an unknown option, a bad value, a missing argument) print one line too."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except usage.NoArgsIsHelpError as e:
            e.show()
            code = 2
        except usage.UsageError as e:
            where = e.ctx.command_path if e.ctx else "optimize"
            typer.echo(f"error: {' '.join(e.format_message().split())} (see `{where} --help`)", err=True)
            code = 2
        except usage.ClickException as e:
            typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
            code = e.exit_code
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


app = typer.Typer(cls=_OneLineErrors, pretty_exceptions_show_locals=False, no_args_is_help=True, add_completion=False, rich_markup_mode=None)

QUIET, NORMAL, VERBOSE = 0, 1, 2
_verbosity = NORMAL  # set once per invocation by the root callback (-q / -v)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"optimize {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print only results and errors: no progress, notes or summary"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="also show onnxruntime warnings"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Export FireRedASR AED to split ONNX, optimize it for ONNX Runtime, and prove accuracy held.

    Exit status: 0 success, 1 a check or gate failed (the model regressed), 2 usage or input error.
    """
    global _verbosity
    if quiet and verbose:
        raise typer.BadParameter("-q and -v contradict each other; pass one")
    _verbosity = QUIET if quiet else VERBOSE if verbose else NORMAL


def _user_errors(fn):
    """Print OptimizeError as `error: message (fix)`; exit 1 for a failed check or gate, else 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GateFailure as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1)
        except OptimizeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        except OSError as e:
            error = environment_error(e)
            if error is None:
                raise  # not a fault a user can fix: a bug, keep the traceback
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt as e:
            typer.echo(f"error: {'terminated' if isinstance(e, _Terminated) else 'interrupted'} ({INTERRUPT_FIX})", err=True)
            raise typer.Exit(INTERRUPTED)

    return wrapper


# ---- export (issue: export + recognizer) ------------------------------------------------


@app.command()
@_user_errors
def export(
    ckpt_dir: Path = typer.Argument(..., help="official checkpoint dir: model.pth.tar, cmvn.ark, dict.txt", metavar="CKPT_DIR"),
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


FORMATS = ("text", "tsv", "json", "jsonl")
_DECODE, _VAD = DecodeConfig(), VadConfig()
_BENCH = {f.name: f.default for f in dataclasses.fields(BenchConfig)}  # not an instance: validating one imports the audio stack
CHUNK = 64  # inputs decoded (and printed) together: bounds memory on long lists


@app.command()
@_user_errors
def transcribe(
    model_dir: Path = typer.Argument(..., help="directory holding encoder.onnx, decoder.onnx, tokens.txt (or one published variant: encoder.int8.onnx, ...), or the encoder file of the variant to use", metavar="MODEL_DIR"),
    inputs: List[str] = typer.Argument(..., help="audio files, directories, manifest.jsonl, wav.scp, or - (paths on stdin)", metavar="INPUT"),
    output_format: str = typer.Option("tsv", "-f", "--format", help=f"{'|'.join(FORMATS)}: text per line; id<TAB>text; one JSON document; one JSON object per line (ids, tokens, scores, segment times, durations)"),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help=f"beam width, 1 = greedy [default: {_DECODE.beam_size}]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"utterances or segments per encoder/decoder run [default: {_DECODE.batch_size}]"),
    ctc_weight: Optional[float] = typer.Option(None, "--ctc-weight", help=f"joint CTC/attention decoding: weight of the CTC prefix score in [0, 1], 0 = attention only as FireRedASR (a pair exported --with-ctc) [default: the model's, its encoder metadata ctc_weight, else 0]"),
    vad_above: Optional[float] = typer.Option(None, "--vad-above", help=f"cut recordings longer than this many seconds into speech segments with Silero VAD; 0 = cut every input [default: {_VAD.above:g}]"),
    max_segment: Optional[float] = typer.Option(None, "--max-segment", help=f"longest VAD segment in seconds, at most 60 [default: {_VAD.max_segment:g}]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads, 0 = ORT's choice [default: 0]"),
    provider: Optional[str] = typer.Option(None, "--provider", help="cpu or cuda [default: cpu]"),
    device_id: Optional[int] = typer.Option(None, "--device-id", help="CUDA device ordinal [default: 0]"),
    io_binding: bool = typer.Option(False, "--io-binding", help="keep cross K/V and caches as OrtValues on the CPU provider too (always on cuda)"),
    executor: str = typer.Option("local", "--executor", help="local (this process) or ray (sharded over a Ray cluster's workers, 1 thread each unless --threads)"),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=_ADDRESS_HELP),
    timestamps: bool = typer.Option(
        False, "--timestamps", help="per-token start/end seconds by CTC forced alignment (a pair exported with --with-ctc); adds a JSON field"
    ),
):
    """Transcribe audio with an ONNX pair; a summary (audio seconds, wall time, RTF) goes to stderr.

    Recordings longer than --vad-above seconds are cut by Silero VAD into segments of at most
    --max-segment seconds, decoded as batches, each with its start and end time (json, jsonl).
    With --timestamps each segment gets token times from the recording's start, and a tsv line a
    third field: JSON [[token, start, end], ...] in seconds.
    """
    import time

    from optimize.runtime import inputs as audio_inputs
    from optimize.runtime.providers import ProviderOptions
    from optimize.runtime.recognizer import Recognizer

    if output_format not in FORMATS:
        raise OptimizeError(f"--format {output_format!r}", f"use one of {', '.join(FORMATS)}")
    _quiet_onnxruntime()
    items = audio_inputs.resolve(inputs, sys.stdin if "-" in inputs else None)
    decode = _replace(DecodeConfig(), beam_size=beam_size, batch_size=batch_size, ctc_weight=ctc_weight)
    vad = _replace(VadConfig(), above=vad_above, max_segment=max_segment)
    options = _replace(ProviderOptions(), device_id=device_id, io_binding=io_binding or None)
    if timestamps and (executor != "local" or workers is not None or ray_address is not None):
        raise OptimizeError("--timestamps with --executor ray", "use --executor local for timestamps")
    started, audio_s, results = time.perf_counter(), 0.0, []
    if executor != "local" or workers is not None or ray_address is not None:
        paths = [i.audio for i in items]
        _refuse_long(paths, vad.above)
        hyps = _transcribe_distributed(model_dir, paths, decode, provider, threads, options, executor, workers, ray_address)
        transcripts = [_whole(p, h) for p, h in zip(paths, hyps)]
        for item, transcript in zip(items, transcripts):
            audio_s += transcript.duration
            results.append(_emit(_transcript_record(item, transcript, None), output_format))
    else:
        session = {k: v for k, v in {"threads": threads, "provider": provider}.items() if v is not None}
        recognizer = Recognizer(model_dir, decode=decode, options=options, timestamps=timestamps, **session)
        with _bar("transcribe", len(items)) as bar:
            for k in range(0, len(items), CHUNK):
                chunk = items[k : k + CHUNK]
                for item, transcript in zip(chunk, recognizer.transcribe_long([i.audio for i in chunk], vad=vad)):
                    audio_s += transcript.duration
                    results.append(_emit(_transcript_record(item, transcript, recognizer.tokens.symbols), output_format))
                bar.update(len(chunk))
    wall = time.perf_counter() - started
    if output_format == "json":
        import json

        typer.echo(json.dumps({"model": str(model_dir), "results": results, "audio_seconds": round(audio_s, 3), "wall_seconds": round(wall, 3)}, ensure_ascii=False, indent=1))
    _log(f"{len(items)} input(s), {audio_s:.1f} s of audio in {wall:.2f} s: RTF {wall / max(audio_s, 1e-9):.4f} (reading, VAD, features and decoding; model load excluded)")


def _whole(path, hyp):
    """A file decoded whole (the distributed path) as a one-segment Transcript."""
    import soundfile as sf

    from optimize.runtime.recognizer import Segment, Transcript

    duration = sf.info(str(path)).duration
    return Transcript(duration, (Segment(0.0, duration, hyp),))


def _refuse_long(paths, above: float) -> None:
    """--executor ray decodes whole files: one longer than the VAD's limit is refused before any worker starts."""
    import soundfile as sf

    for path in paths:
        try:
            seconds = sf.info(str(path)).duration
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
            continue  # unreadable: the worker reports it as for any input
        if seconds > above:
            raise OptimizeError(
                f"{path} lasts {seconds:.1f} s, longer than {above:g} s, and --executor ray decodes whole files (no VAD segmentation)",
                "use --executor local (the default), which cuts long recordings into VAD segments and decodes them as a batch",
            )


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


def _emit(record: dict, output_format: str) -> dict:
    """Print one input's result now, unless the format is one JSON document (printed at the end)."""
    if output_format != "json":
        typer.echo(_format_line(record, output_format))
    return record


def _transcript_record(item, transcript, symbols) -> dict:
    """One input's result as JSON-able data; token symbols when the table is at hand, and token times
    (seconds from the start of the recording) when timestamps were asked."""

    def hyp(h) -> dict:
        out = {"text": h.text, "tokens": None if symbols is None else [symbols[t] for t in h.tokens], "token_ids": list(h.tokens), "score": h.score}
        if h.times is not None:
            out["timestamps"] = [[s, e] for s, e in h.times]
        return out

    segs = transcript.segments
    return {
        "id": item.id, "audio": str(item.audio), "duration": round(transcript.duration, 3), "text": transcript.text,
        "segments": [{"start": round(s.start, 3), "end": round(s.end, 3)} | hyp(s.hypothesis) for s in segs],
    }  # fmt: skip


def _format_line(record: dict, output_format: str) -> str:
    """One line of text, tsv (id, text and, with timestamps, JSON [[token, start, end], ...]) or jsonl."""
    import json

    if output_format == "jsonl":
        return json.dumps(record, ensure_ascii=False)
    if output_format == "tsv":
        times = [[tok, s, e] for seg in record["segments"] if "timestamps" in seg for tok, (s, e) in zip(seg["tokens"], seg["timestamps"])]
        extra = "\t" + json.dumps(times, ensure_ascii=False) if any("timestamps" in seg for seg in record["segments"]) else ""
        return f"{record['id']}\t{record['text']}{extra}"
    return record["text"]


# ---- run, eval (issue: the staged pipeline) ---------------------------------------------


def _log(message: str) -> None:
    """Notes and summaries on stderr; -q silences them."""
    if _verbosity > QUIET:
        typer.echo(message, err=True)


def _bar(desc: str, total: int):
    """The one progress reporter: tqdm on stderr, silent when stderr is not a terminal or with -q."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, disable=None if _verbosity > QUIET else True)


def _quiet_onnxruntime() -> None:
    # ORT warns on every session that cross_attn_mask is an initializer listed as an
    # input (that is the contract: an overridable initializer), and logs run-time
    # failures that the checks already report in one line. Fatal messages still show; -v shows warnings.
    import onnxruntime

    onnxruntime.set_default_logger_severity(2 if _verbosity == VERBOSE else 4)


@app.command()
@_user_errors
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML, e.g. recipes/cpu_int8.yaml; its relative paths are relative to the recipe file", metavar="RECIPE"),
    model: Optional[Path] = typer.Option(None, "--model", help="input pair directory, or the encoder file of a published variant (DIR/encoder.fp16.onnx) [default: the recipe's model]"),
    data: Optional[Path] = typer.Option(None, "--data", help="eval manifest [default: the recipe's data]"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory [default: the recipe's output, else runs/<recipe name>]"),
    provider: Optional[str] = typer.Option(None, "--provider", help="run the checks on cpu or cuda instead of the recipe's provider (RTF then not representative)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads [default: the recipe's threads]"),
    force: bool = typer.Option(False, "--force", help="redo cached stages and evaluations"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local or ray: where each evaluation decodes the eval set [default: the recipe's evaluation.executor]"),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=_ADDRESS_HELP),
    in_process: bool = typer.Option(False, "--in-process", help="run stages and evaluations in this process (faster start, for debugging; no per-stage peak memory)"),
    by: Optional[str] = typer.Option(None, "--by", help="manifest fields report.md breaks error rates down by, e.g. lang,condition,noise (`length` buckets durations) [default: lang,length]"),
):
    """Run a recipe: baseline -> stages, checks and gates after each; publishes <output>/final on success.

    Exit status 1 when a stage fails a check or gate (the report says which), 2 for bad input.
    """
    from optimize import api, report

    _quiet_onnxruntime()
    result = api.run(recipe, model=model, data=data, output=output, threads=threads, provider=provider, force=force, by=_fields(by), log=_log,
                     progress=_bar, executor=executor, workers=workers, ray_address=ray_address, isolate=not in_process)  # fmt: skip
    typer.echo(_table(report.TERMINAL, report.table_rows(result, report.TERMINAL)))
    if not result["rtf_representative"]:
        typer.echo(f"RTF not representative: recipe targets {result['target_provider']}, ran on {result['provider']}")
    changed = [f"{r.name} {len(r.changed)}" for r in result["stages"] if r.changed is not None]
    if changed:
        typer.echo(f"utterances changed against the baseline: {', '.join(changed)} (listed in report.md)")
    typer.echo(f"published {result['final']}; report {Path(result['run_dir']) / report.MARKDOWN}")


WIDTH = 100  # terminal tables fit this many columns


def _table(headers, rows) -> str:
    """A plain-text table (rich, no colour) at most WIDTH columns wide."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True)
    for h in headers:
        table.add_column(h, overflow="fold")  # fold a long value onto a second line rather than cut it
    for row in rows:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=WIDTH, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines() if line.strip())


def _fields(by: Optional[str]) -> Optional[tuple[str, ...]]:
    return None if by is None else tuple(f.strip() for f in by.split(",") if f.strip())


@app.command("eval")
@_user_errors
def eval_(
    model_dir: Path = typer.Argument(..., help="directory holding encoder.onnx, decoder.onnx, tokens.txt (or one published variant: encoder.int8.onnx, ...), or the encoder file of the variant to use", metavar="MODEL_DIR"),
    data: Optional[Path] = typer.Option(None, "--data", help="eval manifest [default: the recipe's data, else calibration/eval]"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write every metric to this JSON file"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="take provider, threads, decode and evaluation settings from this recipe"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="fp32 pair to compare against: parity, token agreement, deltas"),
    provider: Optional[str] = typer.Option(None, "--provider", help="cpu or cuda [default: the recipe's provider, else cpu]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads [default: the recipe's threads, else 1]"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local or ray: where the eval set is decoded [default: the recipe's evaluation.executor]"),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=_ADDRESS_HELP),
    by: Optional[str] = typer.Option(None, "--by", help="print error rates by these manifest fields, e.g. lang,condition (`length` buckets durations)"),
):
    """Run the pipeline's evaluation on any pair: load, contract, parity, error rate, RTF, ops, size.

    Exit status 1 when a check fails, 2 for bad input.
    """
    import json

    from optimize import api

    _quiet_onnxruntime()
    if json_path and (json_path.is_dir() or not json_path.parent.is_dir()):
        raise OptimizeError(f"--json {json_path} cannot be written: {'it is a directory' if json_path.is_dir() else 'its directory does not exist'}", "pass a file path in an existing directory, e.g. --json eval.json")
    result = api.evaluate_pair(model_dir, data, recipe, reference, provider, threads, check=False, by=_fields(by) or (), progress=_bar,
                               executor=executor, workers=workers, ray_address=ray_address)  # fmt: skip
    m = result["metrics"]
    if json_path:
        _atomic_text(json_path, json.dumps(result, indent=2, default=str, ensure_ascii=False))
    if m["failures"]:
        raise GateFailure(f"{model_dir} failed {m['failures'][0]}", "see the checks in `optimize eval --help`")
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
    if result.get("breakdown"):
        rows = [[b["field"], b["value"], str(b["utts"]), *(f"{b['rates'].get(k, float('nan')):.2f}" for k in ("zh", "en", "mixed")),
                 f"{b['substitutions']}/{b['deletions']}/{b['insertions']}"] for b in result["breakdown"]]  # fmt: skip
        typer.echo(_table(("field", "value", "utts", "zh CER %", "en WER %", "mixed %", "S/D/I"), rows).replace("nan", "-"))
    if result.get("changed") is not None:
        typer.echo(f"{len(result['changed'])} utterance(s) changed against the reference (ids and texts in --json)")


def _atomic_text(path: Path, text: str) -> None:
    from optimize import atomic

    atomic.write_bytes(path, text.encode("utf-8"))  # no partial or 0-byte file on a full disk


@app.command()
@_user_errors
def bench(
    pairs: list[Path] = typer.Argument(..., help="pair directories to time side by side in this run"),
    frames: Optional[int] = typer.Option(None, "--frames", help=f"input length in 10 ms fbank frames [default: {_BENCH['frames']}]"),
    steps: Optional[int] = typer.Option(None, "--steps", help=f"decoder steps per run, eos suppressed [default: {_BENCH['steps']}]"),
    batch: Optional[int] = typer.Option(None, "--batch", help=f"utterances per run [default: {_BENCH['batch']}]"),
    beam: Optional[int] = typer.Option(None, "--beam", help=f"decoder rows per utterance [default: {_BENCH['beam']}]"),
    provider: Optional[str] = typer.Option(None, "--provider", help=f"cpu or cuda [default: {_BENCH['provider']}]"),
    threads: Optional[int] = typer.Option(None, "--threads", help=f"ORT intra-op threads [default: {_BENCH['threads']}]"),
    io_binding: bool = typer.Option(False, "--io-binding", help="decode through IOBinding on the CPU provider too (CUDA always does)"),
    spinning: Optional[bool] = typer.Option(None, "--spinning/--no-spinning", help="ORT intra-op spinning [default: the runtime's, auto: on only when each thread finds an idle core]"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help=f"timed runs, medians reported [default: {_BENCH['repeats']}]"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the results, the settings and the CPU model here"),
):
    """Time each pair's encoder and decoder steps at one shape through the recognizer's own encode and search."""
    import json

    from optimize import host
    from optimize.evaluate.bench import bench as run_bench

    _quiet_onnxruntime()
    cfg = _replace(BenchConfig(), frames=frames, steps=steps, batch=batch, beam=beam, provider=provider, threads=threads,
                   io_binding=io_binding or None, spinning=spinning, repeats=repeats)  # fmt: skip
    results = [run_bench(p, cfg) for p in pairs]
    typer.echo(f"{'pair':>40}  {'encoder ms':>10}  {'ms/step':>8}  {'total ms':>9}  {'RTF':>7}  rows  steps  io_binding")
    for r in results:
        typer.echo(f"{r.pair:>40}  {r.encoder_ms:10.2f}  {r.decoder_ms_per_step:8.3f}  {r.total_ms:9.2f}  {r.rtf:7.4f}  {r.rows:>4}  {r.steps:>5}  {r.io_binding}")
    if json_path:
        record = {"settings": dataclasses.asdict(cfg), "cpu": host.cpu_summary(), "results": [dataclasses.asdict(r) for r in results]}
        _atomic_text(json_path, json.dumps(record, indent=2))


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
