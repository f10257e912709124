"""What `optimize transcribe` reads: audio files, directories, manifests, wav.scp, or a list on stdin.

Each argument is one of
- `-`: one audio path per line on standard input (blank lines and `#` comments skipped);
- a `manifest.jsonl` (or any `.jsonl`): its `audio` entries, ids from `id` (else the file stem);
- a Kaldi `wav.scp` (or any `.scp`): `<id> <path>` per line (piped commands are refused);
- a directory: its manifest.jsonl or wav.scp if it holds one, else every audio file below it, sorted;
- an audio file (.wav, .flac, .ogg, ...): id = the path as given.
Relative paths inside a manifest or wav.scp are relative to that file's directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

from optimize.errors import OptimizeError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")  # what libsndfile reads


@dataclass(frozen=True)
class AudioInput:
    id: str  # utterance id (manifest/wav.scp) or the path as given
    audio: Path


def resolve(args: Iterable[str], stdin: TextIO | None = None) -> list[AudioInput]:
    """Expand the arguments into audio inputs, in order."""
    out: list[AudioInput] = []
    for arg in args:
        if arg == "-":
            if stdin is None:
                raise OptimizeError("`-` was given but there is no standard input", "pipe a list of audio paths, one per line")
            lines = [line.strip() for line in stdin]
            out += [AudioInput(p, Path(p)) for p in lines if p and not p.startswith("#")]
        else:
            out += _expand(Path(arg), arg)
    if not out:
        raise OptimizeError("no audio to transcribe", "pass audio files, a directory, a manifest.jsonl, a wav.scp or `-`")
    return out


def _expand(path: Path, given: str) -> list[AudioInput]:
    if path.is_dir():
        if (path / "manifest.jsonl").is_file():
            return _manifest(path / "manifest.jsonl")
        if (path / "wav.scp").is_file():
            return _wav_scp(path / "wav.scp")
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not found:
            raise OptimizeError(f"directory {path} holds no audio file ({', '.join(AUDIO_SUFFIXES)})", "point at audio files or a manifest")
        return [AudioInput(str(p), p) for p in found]
    if not path.is_file():
        raise OptimizeError(f"input {given} does not exist", "check the path")
    if path.suffix == ".jsonl":
        return _manifest(path)
    if path.suffix == ".scp":
        return _wav_scp(path)
    return [AudioInput(given, path)]


def _manifest(path: Path) -> list[AudioInput]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = Path(row["audio"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise OptimizeError(f"{path}:{number}: not a JSON object with an `audio` key", "write one {\"audio\": ...} object per line") from e
        audio = audio if audio.is_absolute() else path.parent / audio
        out.append(AudioInput(str(row.get("id") or audio.stem), audio))
    return out


def _wav_scp(path: Path) -> list[AudioInput]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2 or parts[1].rstrip().endswith("|"):
            raise OptimizeError(f"{path}:{number}: expected `<id> <audio path>`", "write plain paths (piped commands are not run)")
        audio = Path(parts[1].strip())
        out.append(AudioInput(parts[0], audio if audio.is_absolute() else path.parent / audio))
    return out
