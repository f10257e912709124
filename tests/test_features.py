"""Front end: audio loading, fbank and CMVN against fireredasr/data/asr_feat.py.

Threshold: bit-identical features (same kaldi-native-fbank, same float64 CMVN).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from optimize.errors import OptimizeError
from optimize.runtime.audio import MAX_FRAMES, MAX_SAMPLES, MIN_SAMPLES, encoder_length, load_audio
from optimize.runtime.features import apply_cmvn, cmvn_from_stats, cmvn_stats, fbank, read_kaldi_cmvn, write_kaldi_cmvn


def _asr_feat():
    pytest.importorskip("kaldiio")
    return pytest.importorskip("fireredasr.data.asr_feat")


def _pcm(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    wave = 8000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 2000, n)
    return np.clip(wave, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("n", [400, 559, 560, 16000, 23457])
def test_fbank_matches_official(n):
    official = _asr_feat().KaldifeatFbank(num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0)
    pcm = _pcm(n)
    ours = fbank(pcm.astype(np.float32))
    assert ours.shape == (1 + (n - 400) // 160, 80) and ours.dtype == np.float32
    assert np.array_equal(ours, official((16000, pcm)).astype(np.float32))


def test_wav_file_features_match_official(tmp_path):
    asr_feat = _asr_feat()
    import kaldiio

    path = tmp_path / "a.wav"
    sf.write(path, _pcm(12345), 16000, subtype="PCM_16")
    rate, pcm = kaldiio.load_mat(str(path))  # how fireredasr reads audio
    official = asr_feat.KaldifeatFbank(dither=0.0)((rate, pcm))
    assert np.array_equal(fbank(load_audio(path)), official.astype(np.float32))


def test_cmvn_matches_official(tmp_path):
    asr_feat = _asr_feat()
    feats = fbank(_pcm(48000).astype(np.float32))
    path = tmp_path / "cmvn.ark"
    write_kaldi_cmvn(path, cmvn_stats([feats, feats[:50] * 0.9]))
    mean, inv_std = cmvn_from_stats(read_kaldi_cmvn(path))
    official = asr_feat.CMVN(str(path))
    assert np.array_equal(mean, official.means) and np.array_equal(inv_std, official.inverse_std_variences)
    assert np.array_equal(apply_cmvn(feats, mean, inv_std), official(feats).astype(np.float32))


def test_load_audio_scales_pcm_to_int16(tmp_path):
    pcm = _pcm(8000)
    sf.write(tmp_path / "16.wav", pcm, 16000, subtype="PCM_16")
    sf.write(tmp_path / "24.flac", pcm.astype(np.int32) << 16, 16000, subtype="PCM_24")  # int32 input is full-scale
    sf.write(tmp_path / "f.wav", pcm / 32768.0, 16000, subtype="FLOAT")
    for name in ("16.wav", "24.flac", "f.wav"):
        got = load_audio(tmp_path / name)
        assert got.dtype == np.float32 and np.array_equal(got, pcm.astype(np.float32)), name


def test_load_audio_downmixes_and_resamples(tmp_path):
    left, right = _pcm(16000, 1), _pcm(16000, 2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    want = (left.astype(np.float64) + right) / 2
    assert np.allclose(load_audio(tmp_path / "st.wav"), want, atol=1e-3)

    t = np.arange(8000) / 8000
    tone = (10000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    sf.write(tmp_path / "8k.wav", tone, 8000, subtype="PCM_16")
    got = load_audio(tmp_path / "8k.wav")
    assert len(got) == 16000
    ref = 10000 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    assert np.max(np.abs(got[200:-200] - ref[200:-200])) < 100  # away from the filter's edge effects


def test_encoder_limit_is_exact():
    assert encoder_length(MAX_FRAMES) == 5000 and encoder_length(MAX_FRAMES + 1) == 5001
    assert 1 + (MAX_SAMPLES - 400) // 160 == MAX_FRAMES
    assert 199 < MAX_SAMPLES / 16000 < 201


def _one_line_error(path) -> OptimizeError:
    with pytest.raises(OptimizeError) as e:
        load_audio(path)
    assert "\n" not in str(e.value) and e.value.fix
    return e.value


def test_audio_errors_are_one_line(tmp_path):
    assert "does not exist" in _one_line_error(tmp_path / "missing.wav").message

    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file at all")
    assert "cannot read" in _one_line_error(tmp_path / "junk.wav").message

    sf.write(tmp_path / "short.wav", _pcm(MIN_SAMPLES - 1), 16000, subtype="PCM_16")
    assert "fewer than one" in _one_line_error(tmp_path / "short.wav").message
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000, subtype="PCM_16")
    assert "0 samples" in _one_line_error(tmp_path / "empty.wav").message


def test_audio_too_long_is_rejected_at_the_exact_limit(tmp_path):
    """The encoder's own limit (about 200 s), for callers that lift the 60 s one to segment long audio."""
    sf.write(tmp_path / "max.wav", np.zeros(MAX_SAMPLES, np.int16), 16000, subtype="PCM_16")
    assert len(load_audio(tmp_path / "max.wav", max_seconds=None)) == MAX_SAMPLES
    assert "longer than 60 s" in _one_line_error(tmp_path / "max.wav").message  # FireRedASR's limit by default
    sf.write(tmp_path / "long.wav", np.zeros(MAX_SAMPLES + 1, np.int16), 16000, subtype="PCM_16")
    with pytest.raises(OptimizeError, match="positional"):
        load_audio(tmp_path / "long.wav", max_seconds=None)
