"""Synthetic corpus: sentence generators, espeak-ng synthesis, split writing/verification, manifest reading."""

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from optimize.corpus import sentences, synth
from optimize.corpus.dataset import SplitConfig, read_config, verify, write_split
from optimize.corpus.manifest import Utterance, read_manifest
from optimize.errors import OptimizeError

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO / "calibration" / "eval"  # corpus_version 1: the recipes' eval set (commit afe3aa0 generates it)
CONDITIONS_DIR = REPO / "calibration" / "conditions"  # corpus_version 2: recording conditions (issue 15)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


# ---- sentences -----------------------------------------------------------------------------------


def test_numbers_in_words():
    assert sentences.spell_en(0) == "ZERO"
    assert sentences.spell_en(305) == "THREE HUNDRED FIVE"
    assert sentences.spell_en(2024) == "TWO THOUSAND TWENTY FOUR"
    assert sentences.ordinal_en(12) == "TWELFTH"
    assert sentences.ordinal_en(21) == "TWENTY FIRST"
    assert sentences.ordinal_en(30) == "THIRTIETH"
    assert sentences.spell_zh(10) == "十"
    assert sentences.spell_zh(15) == "十五"
    assert sentences.spell_zh(40) == "四十"
    assert sentences.spell_zh(105) == "一百零五"
    assert sentences.spell_zh(115) == "一百一十五"
    assert sentences.spell_zh(999) == "九百九十九"


def test_sentences_are_seeded_and_well_formed():
    first = [sentences.sentence(np.random.default_rng(3), lang) for lang in ("en", "zh")]
    assert first == [sentences.sentence(np.random.default_rng(3), lang) for lang in ("en", "zh")]
    rng = np.random.default_rng(0)
    english = [sentences.english(rng) for _ in range(500)]
    mandarin = [sentences.mandarin(rng) for _ in range(500)]
    assert all(re.fullmatch(r"[A-Z]+( [A-Z]+){2,11}", t) for t in english)
    assert all(re.fullmatch(r"[\u4e00-\u9fff]{4,16}", t) for t in mandarin)
    assert {w for t in english for w in t.split()} <= sentences.en_inventory()
    assert {c for t in mandarin for c in t} <= sentences.zh_inventory()
    assert len(set(english)) > 400 and len(set(mandarin)) > 350


def test_vocabulary_size():
    assert len(sentences.en_inventory()) >= 300
    assert len(sentences.zh_inventory()) >= 300


@needs_espeak
def test_espeak_reads_every_character_as_mandarin():
    chars = sorted(sentences.zh_inventory())
    out = subprocess.run(["espeak-ng", "-q", "-x", "-v", synth.ZH_VOICE, " ".join(chars)],
                         capture_output=True, text=True, check=True).stdout
    # One syllable per character, each with a Mandarin tone number; "(en)" would mean a switch to English.
    syllables = [s.strip() for s in out.split("_|") if s.strip()]
    assert "(en)" not in out
    assert len(syllables) == len(chars)
    assert all(re.search(r"[1-5]{2}", s) for s in syllables)


# ---- synthesis plans -----------------------------------------------------------------------------


def test_held_out_conditions_stay_out_of_training_splits():
    heldout_voices = set(synth.HELDOUT_EN_VOICES)
    heldout_variants = set(synth.HELDOUT_VARIANTS)
    assert not heldout_variants & set(synth.VARIANTS)
    for split in ("train", "dev", "calib"):
        for index in range(300):
            plan, _ = synth.plan_utterance(split, 1, index)
            base, _, variant = plan.voice.partition("+")
            assert plan.condition == "seen"
            assert base not in heldout_voices and variant not in heldout_variants
            assert plan.noise in synth.NOISES
    plans = [synth.plan_utterance("eval", 1, i)[0] for i in range(440)]
    unseen_voice = [p for p in plans if p.condition == "unseen_voice"]
    assert {p.voice.partition("+")[2] for p in unseen_voice} <= heldout_variants
    assert any(p.voice.startswith(synth.HELDOUT_EN_VOICES[0]) for p in unseen_voice)
    assert {p.noise for p in plans if p.condition == "unseen_noise"} == set(synth.HELDOUT_NOISES)
    assert {p.lang for p in plans} == {"zh", "en"}


def test_training_plans_cover_the_recording_conditions():
    """Train draws every factor: 110-240 wpm, 1-20 s, rooms, telephone, hum, 5 dB SNR, levels, most variants."""
    plans = [synth.plan_utterance("train", 1, i)[0] for i in range(1500)]
    rates = [p.rate for p in plans]
    assert min(rates) <= 115 and max(rates) >= 235
    assert min(p.snr_db for p in plans if p.snr_db is not None) < 6
    assert {p.channel for p in plans} == set(synth.CHANNELS) and {p.noise for p in plans} == set(synth.NOISES)
    rt60 = [p.rt60 for p in plans if p.rt60 is not None]
    assert 0.2 < len(rt60) / len(plans) < 0.4 and min(rt60) < 0.3 and max(rt60) > 0.8
    assert {p.hum_hz for p in plans} == {None, 50, 60} and any(p.level_changes for p in plans)
    assert min(p.peak for p in plans) < 0.1 and max(p.peak for p in plans) > 0.8
    single = sum(p.target_s == 0 for p in plans) / len(plans)
    assert 0.2 < single < 0.4 and max(p.target_s for p in plans) > 18
    assert len({p.voice.partition("+")[2] for p in plans}) >= 0.9 * len(synth.VARIANTS)
    assert 0.45 < sum(p.lang == "zh" for p in plans) / len(plans) < 0.55


def test_eval_conditions_isolate_one_factor():
    plans = [synth.plan_utterance("eval", 3, i)[0] for i in range(11 * 30)]
    by = {c: [p for p in plans if p.condition == c] for c in synth.EVAL_CONDITIONS}
    assert all(len(v) == 30 for v in by.values())
    for condition, group in by.items():
        if condition == "combined":
            continue
        assert all((p.rt60 is not None) == (condition == "reverb") for p in group)
        assert all((p.channel == "telephone") == (condition == "telephone") and p.channel != "lowpass" for p in group)
        assert all((p.hum_hz is not None) == (condition == "hum") for p in group)
        assert all(p.level_changes == (condition == "level") for p in group)
        low = [p for p in group if p.snr_db is not None and p.snr_db < 15]
        assert bool(low) == (condition in ("low_snr", "unseen_noise")), condition
        if condition not in ("fast", "slow"):
            assert all(synth.BASE_RATE_WPM[0] <= p.rate <= synth.BASE_RATE_WPM[1] for p in group)
    assert all(p.rate >= 200 for p in by["fast"]) and all(p.rate <= 135 for p in by["slow"])
    assert all(p.noise != "none" and p.snr_db <= 8 for p in by["low_snr"])
    assert all(p.peak < 0.1 for p in by["level"])
    assert len({(p.rt60 is not None, p.channel, p.hum_hz is not None) for p in by["combined"]}) > 3


def test_unknown_split_is_an_error():
    with pytest.raises(OptimizeError, match="unknown split"):
        synth.plan_utterance("test", 1, 0)
    with pytest.raises(OptimizeError, match="unknown audio format"):
        SplitConfig("dev", 1, 3, "mp3")


def test_noise_is_seeded_with_unit_rms():
    for kind in ("white", "pink", "brown"):
        x = synth.noise(kind, 16000, seed=5)
        assert np.array_equal(x, synth.noise(kind, 16000, seed=5))
        assert abs(np.sqrt(np.mean(x**2)) - 1.0) < 1e-9
    # Share of the power below 500 Hz: 1/16 for white noise, most of it for pink, nearly all for brown.
    power = {k: np.abs(np.fft.rfft(synth.noise(k, 32000, 1))) ** 2 for k in ("white", "pink", "brown")}
    low = {k: p[:1000].sum() / p.sum() for k, p in power.items()}
    assert low["white"] < 0.1 and 0.5 < low["pink"] < 0.9 and low["brown"] > 0.95


def test_room_channel_and_hum_filters():
    h = synth.room_impulse_response(0.6, seed=7)
    assert np.array_equal(h, synth.room_impulse_response(0.6, seed=7))
    assert len(h) == int(0.6 * 16000) and abs(np.sum(h**2) - 1.0) < 1e-9 and np.argmax(np.abs(h)) == 0
    energy = np.cumsum(h[::-1] ** 2)[::-1]  # Schroeder backward integral: -60 dB near RT60
    assert energy[int(0.3 * 16000)] / energy[1] < 10 ** (-2.0)
    white = synth.noise("white", 32000, 1)
    power = {c: np.abs(np.fft.rfft(synth.channel_filter(white, c))) ** 2 for c in synth.CHANNELS}
    hz = np.fft.rfftfreq(32000, 1 / 16000)
    share = lambda p, lo, hi: p[(hz >= lo) & (hz < hi)].sum() / p.sum()  # noqa: E731
    assert share(power["wide"], 4000, 8000) > 0.45
    assert share(power["telephone"], 3800, 8000) < 0.01 and share(power["telephone"], 0, 200) < 0.01
    assert share(power["lowpass"], 5000, 8000) < 0.01 and share(power["lowpass"], 0, 3000) > 0.7
    x = synth.hum(16000, 50, seed=3)
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.sqrt(np.mean(x**2)) - 1) < 1e-9 and np.argmax(spectrum) in (50, 150, 250)
    assert spectrum[[50 * k for k in range(2, 20, 2)]].max() < 1e-6 * spectrum.max()  # odd harmonics only


@needs_espeak
def test_synthesis_is_deterministic():
    a = synth.synthesize("eval", 11, 3)
    b = synth.synthesize("eval", 11, 3)
    assert a.pcm.dtype == np.int16 and a.pcm.ndim == 1
    assert np.array_equal(a.pcm, b.pcm) and a.text == b.text and a.sha256 == b.sha256
    assert 0.8 <= a.duration <= synth.MAX_SPEECH_S + 2 * synth.PAD_S[1]


@needs_espeak
def test_several_sentences_with_pauses_and_levels():
    """A planned multi-sentence utterance joins its sentences' texts and is as long as planned."""
    index = next(i for i in range(100) if synth.plan_utterance("train", 9, i)[0].target_s > 12
                 and synth.plan_utterance("train", 9, i)[0].level_changes)  # fmt: skip
    r = synth.synthesize("train", 9, index)
    assert r.sentences >= 3 and 12 <= r.duration <= synth.MAX_SPEECH_S + 2 * synth.PAD_S[1]
    sep = "" if r.plan.lang == "zh" else " "
    assert sep == "" or "  " not in r.text
    assert r.text.count(sep) >= r.sentences - 1 if sep else len(r.text) >= 4 * r.sentences
    pcm = r.pcm.astype(np.float64)
    assert np.abs(pcm).max() == pytest.approx(r.plan.peak * 32767, rel=0.02)


# ---- writing and verifying splits ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_split(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("corpus") / "dev"
    return write_split(SplitConfig("dev", 5, 6, "flac"), out, jobs=1)


def test_write_split_layout(small_split):
    rows = [json.loads(line) for line in (small_split / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and not small_split.with_name("dev.tmp").exists()
    for row in rows:
        assert {"audio", "text", "lang", "duration", "voice", "noise", "snr_db", "sha256"} <= set(row)
        pcm, rate = soundfile.read(small_split / row["audio"], dtype="int16")
        assert rate == 16000 and round(len(pcm) / 16000, 3) == row["duration"]
        assert hashlib.sha256(pcm.astype("<i2").tobytes()).hexdigest() == row["sha256"]  # FLAC is lossless
    assert read_config(small_split)[0] == SplitConfig("dev", 5, 6, "flac")


def test_write_split_refuses_to_overwrite(small_split):
    with pytest.raises(OptimizeError, match="already exists"):
        write_split(SplitConfig("dev", 5, 6, "flac"), small_split)


def test_verify_detects_changes(small_split, tmp_path):
    assert verify(small_split) == []
    copy = tmp_path / "dev"
    shutil.copytree(small_split, copy)
    lines = (copy / "manifest.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"sha256": "', '"sha256": "0')
    (copy / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    problems = verify(copy)
    assert len(problems) == 1 and problems[0].startswith("line 3:")


def test_verify_names_the_commit_of_an_older_corpus_version(small_split, tmp_path):
    copy = tmp_path / "dev"
    shutil.copytree(small_split, copy)
    info = json.loads((copy / "corpus.json").read_text()) | {"corpus_version": 1}
    (copy / "corpus.json").write_text(json.dumps(info))
    with pytest.raises(OptimizeError, match="corpus_version 1, this code writes 2") as e:
        verify(copy)
    assert "afe3aa0" in e.value.fix


def test_ogg_split_is_readable(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = write_split(SplitConfig("calib", 5, 2, "ogg"), tmp_path / "calib")
    for utt in read_manifest(out):
        pcm, rate = soundfile.read(utt.audio, dtype="int16")
        assert rate == 16000 and abs(len(pcm) / rate - utt.duration) < 1e-3


@pytest.mark.parametrize("name", ["eval", "calib"])
def test_committed_conditions_sets_regenerate(name):
    """The first utterances of the committed corpus_version-2 sets regenerate bit-exactly from their seed."""
    directory = CONDITIONS_DIR / name
    if not (directory / "corpus.json").is_file():
        pytest.skip(f"{directory} is not generated yet")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    recorded = json.loads((directory / "corpus.json").read_text())["espeak_ng"]
    if recorded != synth.espeak_version():
        pytest.skip(f"{directory} was made with {recorded}, this machine has {synth.espeak_version()}")
    assert verify(directory, count=3) == []


def test_committed_sets_are_large_enough():
    if not (CONDITIONS_DIR / "eval" / "manifest.jsonl").is_file():
        pytest.skip("calibration/conditions is not generated yet")
    utts = read_manifest(CONDITIONS_DIR / "eval")
    assert len(utts) >= 200 and sum(u.duration for u in utts) >= 25 * 60
    assert {u.extra["condition"] for u in utts} == set(synth.EVAL_CONDITIONS)
    durations = [u.duration for u in utts]
    assert min(durations) < 3 and max(durations) > 17 and sum(d >= 12 for d in durations) >= 40
    assert len(read_manifest(CONDITIONS_DIR / "calib")) >= 32
    old = read_manifest(EVAL_DIR)  # the recipes' set, corpus_version 1
    assert len(old) >= 300 and sum(u.duration for u in old) >= 15 * 60
    assert {u.extra["condition"] for u in old} == {"seen", "unseen_voice", "unseen_noise"}
    assert len(read_manifest(REPO / "calibration" / "calib")) >= 32


# ---- manifest reading ----------------------------------------------------------------------------


def _wav(path: Path, seconds: float = 0.5) -> Path:
    soundfile.write(path, np.zeros(int(16000 * seconds), dtype=np.int16), 16000)
    return path


def _row(audio="a.wav", **overrides) -> str:
    row = {"audio": audio, "text": "HELLO", "lang": "en", "duration": 0.5, "sha256": "x"} | overrides
    return json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False)


def test_read_jsonl_file_and_directory(tmp_path):
    _wav(tmp_path / "a.wav")
    (tmp_path / "manifest.jsonl").write_text(_row() + "\n\n" + _row(text="你好", lang="zh") + "\n")
    utts = read_manifest(tmp_path / "manifest.jsonl")
    assert read_manifest(tmp_path) == utts
    assert utts[0] == Utterance((tmp_path / "a.wav").resolve(), "HELLO", "en", 0.5)
    assert utts[0].audio.is_absolute() and utts[0].extra == {"sha256": "x"}
    assert utts[1].lang == "zh"


def test_read_kaldi_directory(tmp_path):
    _wav(tmp_path / "a.wav", 0.5)
    _wav(tmp_path / "b.wav", 1.25)
    (tmp_path / "wav.scp").write_text(f"u1 a.wav\nu2 {tmp_path / 'b.wav'}\n")
    (tmp_path / "text").write_text("u1 HELLO THERE\nu2 明天 见\n")
    utts = read_manifest(tmp_path)
    assert [(u.text, u.lang, u.duration, u.extra["id"]) for u in utts] == [
        ("HELLO THERE", "en", 0.5, "u1"), ("明天 见", "zh", 1.25, "u2")]


@pytest.mark.parametrize(
    "content, message",
    [
        (_row() + "\n{oops\n", r"manifest.jsonl:2: not valid JSON"),
        ("[1, 2]\n", r"manifest.jsonl:1: expected a JSON object"),
        (_row(text=None, duration=None) + "\n", r"manifest.jsonl:1: missing key\(s\) text, duration"),
        (_row(lang="fr") + "\n", r"manifest.jsonl:1: lang is 'fr'"),
        (_row(duration="long") + "\n", r"manifest.jsonl:1: duration is 'long'"),
        (_row(audio="missing.wav") + "\n", r"manifest.jsonl:1: audio file .*missing.wav does not exist"),
        ("\n", r"is empty"),
    ],
)
def test_bad_manifest_lines(tmp_path, content, message):
    _wav(tmp_path / "a.wav")
    (tmp_path / "manifest.jsonl").write_text(content)
    with pytest.raises(OptimizeError, match=message) as info:
        read_manifest(tmp_path / "manifest.jsonl")
    assert info.value.fix and "\n" not in str(info.value)


def test_bad_paths_and_kaldi_directories(tmp_path):
    with pytest.raises(OptimizeError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(OptimizeError, match="neither manifest.jsonl nor wav.scp"):
        read_manifest(tmp_path)
    _wav(tmp_path / "a.wav")
    (tmp_path / "wav.scp").write_text("u1 a.wav\nu2 a.wav\n")
    (tmp_path / "text").write_text("u1 HELLO\n")
    with pytest.raises(OptimizeError, match="lacks 1 id"):
        read_manifest(tmp_path)
    (tmp_path / "wav.scp").write_text("u1 sox a.flac -t wav - |\n")
    with pytest.raises(OptimizeError, match="pipe command"):
        read_manifest(tmp_path)
    (tmp_path / "wav.scp").write_text("u1 gone.wav\n")
    with pytest.raises(OptimizeError, match="gone.wav does not exist"):
        read_manifest(tmp_path)


def test_readme_commands_match_the_committed_sets():
    """calibration/README.md states the exact commands; their arguments must be what corpus.json records."""
    readme = (REPO / "calibration" / "README.md").read_text()
    commands = re.findall(r"^python -m optimize\.corpus synth (.*)$", readme, flags=re.M)
    checked = 0
    for command in commands:
        args = dict(re.findall(r"--(\w+) (\S+)", command))
        corpus_json = REPO / args["out"] / "corpus.json"
        if args["out"].startswith("calibration/") and corpus_json.is_file():
            info = json.loads(corpus_json.read_text())
            assert (info["split"], info["count"], info["seed"], info["format"]) == (
                args["split"], int(args["count"]), int(args["seed"]), args.get("format", "flac"))
            checked += 1
    if checked == 0:
        pytest.skip("calibration sets are not generated yet")
    assert checked == 4  # eval and calib of corpus_version 1 (recipes) and 2 (conditions)
