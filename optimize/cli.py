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
):
    """Export an official FireRedASR AED checkpoint to the split sherpa-onnx contract."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    cfg = ExportConfig()
    overrides = {k: v for k, v in {"fixed_cache_len": fixed_cache_len, "opset": opset}.items() if v is not None}
    import dataclasses

    cfg = dataclasses.replace(cfg, **overrides)
    for path in export_checkpoint(ckpt_dir, output, cfg):
        typer.echo(f"wrote {path}")


# ---- transcribe (issue: ORT recognizer) --------------------------------------------------


@app.command()
@_user_errors
def transcribe(
    model_dir: Path = typer.Argument(..., help="directory holding encoder.onnx, decoder.onnx, tokens.txt"),
    audio: List[Path] = typer.Argument(..., help="wav/flac/ogg files; other sample rates are resampled to 16 kHz"),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="beam width, 1 = greedy [default: DecodeConfig.beam_size]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="utterances per encoder/decoder run [default: DecodeConfig.batch_size]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads, 0 = ORT's choice [default: Recognizer]"),
    provider: Optional[str] = typer.Option(None, "--provider", help="cpu or cuda [default: Recognizer]"),
):
    """Transcribe audio files with an ONNX pair; prints `path<TAB>text` per file."""
    import dataclasses

    from optimize.runtime.recognizer import Recognizer
    from optimize.runtime.search import DecodeConfig

    decode = dataclasses.replace(
        DecodeConfig(), **{k: v for k, v in {"beam_size": beam_size, "batch_size": batch_size}.items() if v is not None}
    )
    session = {k: v for k, v in {"threads": threads, "provider": provider}.items() if v is not None}
    recognizer = Recognizer(model_dir, decode=decode, **session)
    for path, hyp in zip(audio, recognizer.transcribe(audio)):
        typer.echo(f"{path}\t{hyp.text}")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
