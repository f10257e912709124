"""Drop-in: sherpa-onnx's FireRedASR runtime loads our pairs and decodes as our greedy search does.

Uses the committed embedded default and its eval audio, exported in both layouts (dynamic
self-cache and the published v1 fixed-1024 cache), and re-exported by stage reexport from a
published-style v1 pair of the same checkpoint. sherpa-onnx stops after 8 tokens per
second of audio; where it hits that cap its text must be a prefix of ours, else identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest

sherpa_onnx = pytest.importorskip("sherpa_onnx")
pytest.importorskip("torch")

from optimize.corpus.manifest import read_manifest  # noqa: E402
from optimize.export.exporter import ExportConfig, export_checkpoint  # noqa: E402
from optimize.runtime.audio import load_audio  # noqa: E402
from optimize.runtime.recognizer import Recognizer  # noqa: E402
from optimize.runtime.search import DecodeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "artifacts" / "firered-aed-tiny"
GREEDY = DecodeConfig(beam_size=1, softmax_smoothing=1.0, length_penalty=0.0, ctc_weight=0.0)  # attention only, as sherpa-onnx


@pytest.fixture(scope="module", params=["published", "dynamic", "fixed1024", "v2-with-ctc", "reexported-v1"])
def pair(request, tmp_path_factory):
    if request.param == "published":
        return DEFAULT
    if request.param == "v2-with-ctc":  # FireRedASR2 format, third encoder output ctc_log_probs
        return request.getfixturevalue("default_pair_v2")
    if request.param == "reexported-v1":  # a published-style v1 pair made by the official modules, through stage reexport
        pytest.importorskip("fireredasr.models.fireredasr_aed")
        import published_style

        from optimize.stages import reexport

        src = published_style.make_published(DEFAULT / "checkpoint", tmp_path_factory.mktemp("v1") / "pair", "v1")
        out = tmp_path_factory.mktemp("reexported") / "pair"
        reexport.run(src, out, reexport.Config())
        return out
    out = tmp_path_factory.mktemp(request.param)
    cfg = ExportConfig(fixed_cache_len=1024 if request.param == "fixed1024" else None)
    export_checkpoint(DEFAULT / "checkpoint", out, cfg)
    return out


def test_sherpa_matches_our_greedy(pair):
    utts = [u for u in read_manifest(ROOT / "calibration" / "eval") if u.duration < 8][:24]  # every condition, 1-8 s
    rec = sherpa_onnx.OfflineRecognizer.from_fire_red_asr(
        encoder=str(pair / "encoder.onnx"), decoder=str(pair / "decoder.onnx"), tokens=str(pair / "tokens.txt"),
        num_threads=1, decoding_method="greedy_search",
    )  # fmt: skip
    ours = Recognizer(pair, GREEDY)
    identical = 0
    for u in utts:
        samples = load_audio(u.audio)
        stream = rec.create_stream()
        stream.accept_waveform(16000, samples / 32768.0)
        rec.decode_stream(stream)
        theirs = stream.result.text.strip()
        mine = ours.recognize_features([ours.features(samples)])[0].text
        if theirs == mine:
            identical += 1
        else:  # only sherpa's own length cap may cut it short
            assert len(stream.result.tokens) >= int(u.duration * 8) - 1 and mine.startswith(theirs), (u.audio.name, theirs, mine)
    assert identical >= len(utts) - 3
