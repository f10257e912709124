"""Write a synthesized split to disk (audio + manifest.jsonl + corpus.json) and verify one by regeneration.

Layout of a split directory:
    audio/<split>-<index:06d>.<flac|ogg|wav>
    manifest.jsonl   one line per utterance, in index order (see `manifest_row`)
    corpus.json      the generation parameters: split, seed, count, format, espeak-ng version
The directory is written as `<out>.tmp/` and renamed into place only when complete.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from optimize.corpus import synth
from optimize.corpus.manifest import MANIFEST_NAME
from optimize.errors import OptimizeError

CORPUS_JSON = "corpus.json"
GENERATED_BY = {1: "afe3aa0"}  # earlier corpus versions -> a commit whose code generates (and verifies) them
CORPUS_VERSION = 2  # bump when a change to sentences.py or synth.py changes generated audio or text

# soundfile (format, subtype) per --format; Vorbis quality is set separately (see _write_audio).
FORMATS = {"flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "wav": ("WAV", "PCM_16")}
# soundfile compression_level for Vorbis (0 = best quality, 1 = smallest). 0.7 is ~48 kbit/s on this
# noisy 16 kHz speech: 15.5 min of eval audio in ~5.6 MB (FLAC: ~20 MB), inside the repo's ~6 MB budget.
VORBIS_QUALITY = 0.7


@dataclass(frozen=True)
class SplitConfig:
    """What to generate; saved as corpus.json so `verify` can regenerate it."""

    split: str  # train | dev | eval | calib
    seed: int  # second word of every utterance seed
    count: int  # number of utterances, indices 0..count-1
    format: str = "flac"  # audio container: flac | ogg | wav

    def __post_init__(self):
        if self.split not in synth.SPLIT_CODES:
            raise OptimizeError(f"unknown split {self.split!r}", f"use one of {', '.join(synth.SPLIT_CODES)}")
        if self.format not in FORMATS:
            raise OptimizeError(f"unknown audio format {self.format!r}", f"use one of {', '.join(FORMATS)}")
        if self.count < 1:
            raise OptimizeError(f"--count is {self.count}", "generate at least one utterance")


def manifest_row(rendered: synth.Rendered, audio: str) -> dict:
    """The manifest.jsonl object of one utterance; `audio` is relative to the manifest's directory."""
    plan = rendered.plan
    return {
        "audio": audio,
        "text": rendered.text,
        "lang": plan.lang,
        "duration": rendered.duration,
        "voice": plan.voice,
        "noise": plan.noise,
        "snr_db": plan.snr_db,
        "sha256": rendered.sha256,
        "id": plan.id,
        "condition": plan.condition,
        "rate": plan.rate,
        "pitch": plan.pitch,
        "sentences": rendered.sentences,
        "level_changes": plan.level_changes,
        "rt60": plan.rt60,
        "channel": plan.channel,
        "hum_hz": plan.hum_hz,
        "hum_db": plan.hum_db,
        "peak": plan.peak,
    }


def _audio_name(cfg: SplitConfig, index: int) -> str:
    return f"audio/{cfg.split}-{index:06d}.{cfg.format}"


def _write_audio(path: Path, pcm: np.ndarray, fmt: str) -> None:
    import soundfile

    container, subtype = FORMATS[fmt]
    extra = {"compression_level": VORBIS_QUALITY} if fmt == "ogg" else {}
    soundfile.write(str(path), pcm, synth.SAMPLE_RATE, format=container, subtype=subtype, **extra)


def _render_row(args: tuple[SplitConfig, int, Path | None]) -> str:
    """Synthesize one utterance, write its audio under `root` (unless None), return its manifest line."""
    cfg, index, root = args
    rendered = synth.synthesize(cfg.split, cfg.seed, index)
    name = _audio_name(cfg, index)
    if root is not None:
        _write_audio(root / name, rendered.pcm, cfg.format)
    return json.dumps(manifest_row(rendered, name), ensure_ascii=False)


def _rows(cfg: SplitConfig, root: Path | None, jobs: int, start: int = 0, stop: int | None = None
          ) -> Iterator[str]:
    """Manifest lines of indices start..stop-1, in order, rendered by `jobs` processes."""
    tasks = [(cfg, i, root) for i in range(start, cfg.count if stop is None else stop)]
    if jobs <= 1:
        yield from map(_render_row, tasks)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_render_row, tasks, chunksize=8)


def write_split(cfg: SplitConfig, out: Path, jobs: int = 1, force: bool = False,
                progress: Callable[[int, int], None] | None = None) -> Path:
    """Generate `cfg` into directory `out` atomically; `progress(done, total)` is called as it goes."""
    out = Path(out)
    if out.exists() and not force:
        raise OptimizeError(f"{out} already exists", "remove it, pass --force, or choose another --out")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an interrupted run, never a finished split
    (tmp / "audio").mkdir(parents=True)
    with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
        for done, line in enumerate(_rows(cfg, tmp, jobs), start=1):
            f.write(line + "\n")
            if progress:
                progress(done, cfg.count)
    info = {"corpus_version": CORPUS_VERSION, **cfg.__dict__, "espeak_ng": synth.espeak_version()}
    (tmp / CORPUS_JSON).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def read_config(directory: Path) -> tuple[SplitConfig, dict]:
    """The SplitConfig a split directory was generated with, and the whole corpus.json."""
    path = Path(directory) / CORPUS_JSON
    if not path.is_file():
        raise OptimizeError(f"{path} does not exist", "verify a directory written by `python -m optimize.corpus synth`")
    info = json.loads(path.read_text())
    return SplitConfig(info["split"], info["seed"], info["count"], info["format"]), info


def verify(directory: Path, jobs: int = 1, count: int | None = None) -> list[str]:
    """Regenerate a split (all of it, or its first `count` lines) in memory and compare manifests.

    Returns the differing lines as messages (empty list: identical). Raises OptimizeError when the
    espeak-ng build differs from the one recorded, since its audio is not expected to match then.
    """
    directory = Path(directory)
    cfg, info = read_config(directory)
    if info.get("corpus_version") != CORPUS_VERSION:
        older = GENERATED_BY.get(info.get("corpus_version"))
        raise OptimizeError(f"{directory} has corpus_version {info.get('corpus_version')}, this code writes {CORPUS_VERSION}",
                            f"verify it with the code of commit {older} (git worktree add /tmp/v{info['corpus_version']} {older})"
                            if older else "regenerate the split with the commands in its README")  # fmt: skip
    if info["espeak_ng"] != synth.espeak_version():
        raise OptimizeError(f"{directory} was made with {info['espeak_ng']!r}, this machine has "
                            f"{synth.espeak_version()!r}", "verify on a machine with the recorded espeak-ng")
    stored = (directory / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    stop = len(stored) if count is None else min(count, len(stored))
    problems = [] if len(stored) == cfg.count else [f"manifest has {len(stored)} lines, corpus.json says {cfg.count}"]
    for index, line in enumerate(_rows(cfg, None, jobs, 0, stop)):
        if line != stored[index]:
            problems.append(f"line {index + 1}: stored {stored[index]} != regenerated {line}")
    return problems
