"""Read evaluation/training manifests: our `manifest.jsonl`, or a Kaldi-style `wav.scp` + `text` directory.

A `manifest.jsonl` holds one JSON object per line with at least `audio` (a path relative to the
manifest's directory, or absolute), `text`, `lang` ("zh" | "en") and `duration` (seconds). Any other
keys (voice, noise, snr_db, sha256, ...) are kept in `Utterance.extra`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from optimize.errors import OptimizeError

MANIFEST_NAME = "manifest.jsonl"
REQUIRED_KEYS = ("audio", "text", "lang", "duration")
LANGS = ("zh", "en")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")  # the ranges FireRedASR's tokenizer splits on


@dataclass(frozen=True)
class Utterance:
    """One audio file and its reference transcript."""

    audio: Path  # absolute path of the audio file
    text: str  # reference transcript (English upper-case, as FireRedASR emits it)
    lang: str  # "zh" or "en"
    duration: float  # seconds
    extra: dict = field(default_factory=dict, compare=False)  # every other manifest key, e.g. sha256


def infer_lang(text: str) -> str:
    """"zh" when the text holds any CJK character, else "en"."""
    return "zh" if _CJK.search(text) else "en"


def read_manifest(path: Path | str) -> list[Utterance]:
    """Read a `manifest.jsonl`, a directory holding one, or a Kaldi directory (`wav.scp` + `text`)."""
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return _read_jsonl(path / MANIFEST_NAME)
        if (path / "wav.scp").is_file() and (path / "text").is_file():
            return _read_kaldi(path)
        raise OptimizeError(f"{path} holds neither {MANIFEST_NAME} nor wav.scp + text",
                            f"point at a {MANIFEST_NAME} file or a Kaldi data directory")
    if not path.is_file():
        raise OptimizeError(f"manifest {path} does not exist", "check the path")
    return _read_jsonl(path)


def _lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; OptimizeError naming the first bad byte otherwise."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise OptimizeError(f"{path} is not UTF-8 (byte {e.start}: {e.object[e.start:e.start + 4]!r})", "re-save it as UTF-8") from e


def _read_jsonl(path: Path) -> list[Utterance]:
    utterances = []
    for number, line in enumerate(_lines(path), start=1):
        if line.strip():
            utterances.append(_parse_line(line, path, number))
    if not utterances:
        raise OptimizeError(f"manifest {path} is empty", "add one JSON object per line")
    return utterances


def _parse_line(line: str, path: Path, number: int) -> Utterance:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise OptimizeError(f"{where}: not valid JSON ({e.msg})", "write one JSON object per line") from e
    if not isinstance(row, dict):
        raise OptimizeError(f"{where}: expected a JSON object, got {type(row).__name__}",
                            "write one JSON object per line")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise OptimizeError(f"{where}: missing key(s) {', '.join(missing)}",
                            f"every line needs {', '.join(REQUIRED_KEYS)}")
    if not isinstance(row["text"], str):  # null would be scored as the string "None"
        raise OptimizeError(f"{where}: text is {json.dumps(row['text'])}", 'give the reference transcript as a string ("" for silence)')
    if row["lang"] not in LANGS:
        raise OptimizeError(f"{where}: lang is {row['lang']!r}", f"use one of {', '.join(LANGS)}")
    if not isinstance(row["duration"], (int, float)) or isinstance(row["duration"], bool) or not 0 <= row["duration"] < float("inf"):
        raise OptimizeError(f"{where}: duration is {row['duration']!r}", "give the duration in seconds")
    if not isinstance(row["audio"], str) or not row["audio"]:
        raise OptimizeError(f"{where}: audio is {json.dumps(row['audio'])}", "give the audio file's path as a string")
    audio = (path.parent / row["audio"]).resolve()
    if not audio.is_file():
        raise OptimizeError(f"{where}: audio file {audio} does not exist",
                            "audio paths are relative to the manifest's directory")
    extra = {k: v for k, v in row.items() if k not in REQUIRED_KEYS}
    return Utterance(audio, str(row["text"]), row["lang"], float(row["duration"]), extra)


def _read_table(path: Path) -> dict[str, str]:
    """Kaldi `key rest-of-line` table, in file order."""
    table = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if key in table:
            raise OptimizeError(f"{path}:{number}: duplicate utterance id {key!r}", "make ids unique")
        table[key] = value.strip()
    return table


def _read_kaldi(directory: Path) -> list[Utterance]:
    import soundfile  # local: only the Kaldi path needs headers read

    wavs, texts = _read_table(directory / "wav.scp"), _read_table(directory / "text")
    missing = [k for k in wavs if k not in texts]
    if missing:
        raise OptimizeError(f"{directory}/text lacks {len(missing)} id(s) of wav.scp, e.g. {missing[0]!r}",
                            "give every wav.scp id a transcript")
    utterances = []
    for key, wav in wavs.items():
        if wav.endswith("|"):
            raise OptimizeError(f"{directory}/wav.scp: {key} is a pipe command",
                                "convert the audio to files first; only plain paths are read")
        audio = (directory / wav).resolve()
        if not audio.is_file():
            raise OptimizeError(f"{directory}/wav.scp: {key}: {audio} does not exist", "check the path")
        text = texts[key]
        duration = round(soundfile.info(str(audio)).duration, 3)
        utterances.append(Utterance(audio, text, infer_lang(text), duration, {"id": key}))
    if not utterances:
        raise OptimizeError(f"{directory}/wav.scp is empty", "list one `id path` per line")
    return utterances
