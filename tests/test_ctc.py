"""Token timestamps by CTC forced alignment (optimize/runtime/ctc.py) against the official FireRedASR2 code.

The pair is the trained embedded default in FireRedASR2 format with a random CTC head,
exported --with-ctc: the alignment is arbitrary but deterministic, and must be the
official one, frame for frame and time for time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from official_v2 import official_aed_module, official_asr_v2, official_model_v2  # noqa: E402
from stage_helpers import cli  # noqa: E402

from optimize.corpus.manifest import read_manifest  # noqa: E402
from optimize.runtime import ctc  # noqa: E402
from optimize.runtime.audio import load_audio  # noqa: E402
from optimize.runtime.recognizer import Recognizer  # noqa: E402
from optimize.runtime.search import DecodeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """6 eval utterances as 16-bit wav files, so both front ends read the same integer samples."""
    out = tmp_path_factory.mktemp("wavs")
    paths = []
    for u in read_manifest(ROOT / "calibration" / "eval")[:6]:
        path = out / (u.audio.stem + ".wav")
        sf.write(path, np.round(load_audio(u.audio)).astype(np.int16), 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def test_forced_align_matches_torchaudio_kernel():
    """Against the transcription of torchaudio's kernel (official_v2._forced_align), incl. repeats and refusals."""
    from official_v2 import _forced_align

    official_aed_module()
    from fireredasr2.models.module.ctc import CTC

    rng = np.random.default_rng(0)
    for trial in range(40):
        t_len, vocab = int(rng.integers(2, 30)), 9
        scale = 3.0 if trial % 3 else 0.0  # every third trial: uniform log-probs, all ties
        log_probs = torch.log_softmax(torch.from_numpy(rng.standard_normal((t_len, vocab)).astype(np.float32) * scale), dim=-1)
        n = int(rng.integers(1, t_len + 1))
        tokens = tuple(int(t) for t in rng.integers(1, 3 if trial % 2 else vocab, n))  # odd trials: many repeats
        ours = ctc.forced_align(log_probs.numpy(), tokens)
        try:
            ref = _forced_align(log_probs.unsqueeze(0), torch.tensor([tokens]))[0][0].tolist()
        except RuntimeError:
            assert ours is None, trial
            continue
        assert ours.tolist() == ref, trial
        starts, ends = CTC.ctc_alignment_to_timestamp(ref, 4)  # the official times of that alignment
        assert ctc.token_times(ours) == tuple(zip(starts, ends))



def test_forced_align_long_hypotheses():
    """64+ tokens (129+ states, past an int8 back-pointer's range): a 20 s utterance's length, against the kernel."""
    from official_v2 import _forced_align

    rng = np.random.default_rng(1)
    for n, t_len in ((64, 140), (150, 500)):
        log_probs = torch.log_softmax(torch.from_numpy(rng.standard_normal((t_len, 40)).astype(np.float32) * 3.0), dim=-1)
        tokens = tuple(int(t) for t in rng.integers(1, 40, n))
        ours = ctc.forced_align(log_probs.numpy(), tokens)
        assert ours is not None
        assert ours.tolist() == _forced_align(log_probs.unsqueeze(0), torch.tensor([tokens]))[0][0].tolist()

def test_times_match_official_transcribe(default_ckpt_v2, default_pair_v2, wavs):
    """Model level: FireRedAsrAed.transcribe(return_timestamp=True), beam 3, batches of 1, 2 and 3."""
    off = official_model_v2(default_ckpt_v2)
    rec = Recognizer(default_pair_v2, DecodeConfig(batch_size=3), timestamps=True)
    feats = [rec.features(load_audio(p)) for p in wavs]
    aligned = 0
    for a, b in ((0, 1), (1, 3), (3, 6)):
        batch = feats[a:b]
        x = torch.zeros(len(batch), max(len(f) for f in batch), 80)
        for i, f in enumerate(batch):
            x[i, : len(f)] = torch.from_numpy(f)
        with torch.no_grad():
            ref = off.transcribe(x, torch.tensor([len(f) for f in batch]), 3, 1, 0, 1.25, 0.6, 1.0, return_timestamp=True)
        ours = rec.recognize_features(batch)
        for hyp, (r,) in zip(ours, ref):
            assert hyp.tokens == tuple(r["yseq"].tolist())
            want = None if r["timestamp"] is None else tuple(zip(*r["timestamp"]))
            assert hyp.times == want
            aligned += want is not None and len(want) == len(hyp.tokens)
    assert aligned == len(wavs)  # every utterance aligned (the official code gives None on any failure)


def test_audio_times_match_official_asr(default_ckpt_v2, default_pair_v2, wavs):
    """User level: FireRedAsr2.transcribe (its own fbank, the 60 ms shift, clipping), per token."""
    asr = official_asr_v2(default_ckpt_v2, return_timestamp=True)
    asr.tokenizer.merge_spm_timestamp = lambda ts: ts  # compare per token; the official output merges English pieces into words
    ref = asr.transcribe([p.stem for p in wavs], [str(p) for p in wavs])
    rec = Recognizer(default_pair_v2, timestamps=True)
    ours = rec.transcribe(wavs)
    for hyp, r in zip(ours, ref):
        assert hyp.text.lower() == r["text"]
        got = [[rec.tokens.symbols[t].lower(), s, e] for t, (s, e) in zip(hyp.tokens, hyp.times)]
        assert got == [[tok, pytest.approx(s, abs=1e-9), pytest.approx(e, abs=1e-9)] for tok, s, e in r["timestamp"]]
    # without an alignment both spread the tokens evenly over the audio
    for n, dur in ((5, 1.661), (1, 0.3), (0, 2.0)):
        want = [(s, e) for _, s, e in asr._get_and_fix_timestamp({"timestamp": None}, list(range(5, 5 + n)), dur)]
        got = list(ctc.audio_times(None, n, dur))
        assert len(got) == len(want)
        assert [t for pair in got for t in pair] == pytest.approx([t for pair in want for t in pair])  # pytest 9: approx takes no nested tuples


def test_cli_timestamps(default_pair_v2, wavs, tiny_pair):
    result = cli("transcribe", default_pair_v2, wavs[0], wavs[1], "--timestamps", "--beam-size", "1")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        path, text, times = line.split("\t")
        times = json.loads(times)
        assert times and all(0 <= s <= e for _, s, e in times)
        assert [s for _, s, _ in times] == sorted(s for _, s, _ in times)
    result = cli("transcribe", tiny_pair, wavs[0], "--timestamps")
    assert result.exit_code == 2 and "no ctc_log_probs output" in result.stderr and "--with-ctc" in result.stderr
