"""Recognizer on exported ONNX pairs: batching, cache layouts, published-layout fallbacks, CLI.

Token-level thresholds: identical token sequences between batch sizes and between
the dynamic and the fixed-1024 cache layouts. (Parity with the official PyTorch
model lives in test_decode_parity.py.)
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from optimize import contract
from optimize.cli import app
from optimize.errors import OptimizeError
from optimize.runtime.features import apply_cmvn, cmvn_from_stats, fbank
from optimize.runtime.recognizer import FrontEnd, Recognizer, cross_attention_mask
from optimize.runtime.search import DecodeConfig
from optimize.runtime.tokens import TokenTable

torch = pytest.importorskip("torch")

FRAMES = (60, 23, 150, 51, 37, 80, 44)  # deliberately unsorted: results must come back in input order
SHORT = 6  # steps; <= T' of the shortest input, so every batch composition runs the same number of steps


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(n, 80)).astype(np.float32) for n in FRAMES]


def _tokens(model_dir, feats, **cfg) -> list[tuple[int, ...]]:
    return [h.tokens for h in Recognizer(model_dir, DecodeConfig(**cfg), threads=1).recognize_features(feats)]


def test_pair_properties(pair, pair_v1, published_layout):
    dyn, v1, pub = (Recognizer(p).pair for p in (pair, pair_v1, published_layout))
    assert (dyn.fixed_cache_len, v1.fixed_cache_len, pub.fixed_cache_len) == (None, 1024, 1024)
    assert dyn.has_cross_mask and v1.has_cross_mask and not pub.has_cross_mask
    assert (dyn.max_decoder_rows, pub.max_decoder_rows, pub.max_encoder_rows) == (None, 1, 1)
    assert dyn.info.vocab_size == 60 and dyn.info.d_model == 64


def test_decoding_is_not_degenerate(pair, feats):
    """The equality tests below mean something only if tokens depend on the input."""
    beam = _tokens(pair, feats)
    greedy = _tokens(pair, feats, beam_size=1)
    assert len(set(beam)) >= 4 and len({len(h) for h in beam}) >= 3
    assert len({t for h in beam + greedy for t in h}) >= 4


# Greedy on this model repeats one token; a mild EOS boost makes where it stops depend on the input.
@pytest.mark.parametrize("cfg", [dict(beam_size=3, max_len=SHORT), dict(beam_size=1, eos_penalty=0.95, max_len=12)])
def test_batch_three_matches_batch_one(pair, feats, cfg):
    """An explicit max_len makes every batch composition run the same steps, as batch 1 does."""
    single = _tokens(pair, feats, **cfg)
    assert len(set(single)) >= 3
    assert _tokens(pair, feats, **cfg, batch_size=3) == single


def test_batch_three_default_max_len_matches_where_search_ended(pair, feats):
    """With max_len 0 a batch runs to its padded T'; rows that ended with EOS must agree."""
    enc_len = [((n + 6 - 3) // 2 + 1 - 3) // 2 + 1 for n in FRAMES]
    single = _tokens(pair, feats)
    batched = _tokens(pair, feats, batch_size=3)
    ended = [i for i, h in enumerate(single) if len(h) < enc_len[i]]
    assert len(ended) >= 3
    assert [batched[i] for i in ended] == [single[i] for i in ended]


def test_fixed_1024_cache_matches_dynamic(pair, pair_v1, feats):
    assert _tokens(pair_v1, feats) == _tokens(pair, feats)
    assert _tokens(pair_v1, feats, max_len=SHORT, batch_size=3) == _tokens(pair, feats, max_len=SHORT)


def test_published_layout_decodes_beam_rows_one_by_one(pair, published_layout, feats):
    assert _tokens(published_layout, feats[:3]) == _tokens(pair, feats[:3])


def test_batching_a_pair_without_cross_mask_is_refused(published_layout):
    with pytest.raises(OptimizeError) as e:
        Recognizer(published_layout, DecodeConfig(batch_size=2))
    assert contract.CROSS_MASK in e.value.message and "\n" not in str(e.value)


def test_features_use_the_metadata_cmvn(pair, varied_ckpt):
    from optimize.runtime.features import read_kaldi_cmvn

    samples = np.random.default_rng(1).normal(0, 3000, 8000).astype(np.float32)
    mean, inv_std = cmvn_from_stats(read_kaldi_cmvn(varied_ckpt / "cmvn.ark"))
    assert np.array_equal(Recognizer(pair).features(samples), apply_cmvn(fbank(samples), mean, inv_std))
    # the evaluation's front end reads the same CMVN from the metadata without opening a session
    assert np.array_equal(FrontEnd.of(pair).features(samples), apply_cmvn(fbank(samples), mean, inv_std))


def test_recognize_features_rejects_bad_shapes(pair):
    rec = Recognizer(pair)
    for bad in (np.zeros((0, 80), np.float32), np.zeros((10, 40), np.float32), np.zeros((20001, 80), np.float32)):
        with pytest.raises(OptimizeError, match="need"):
            rec.recognize_features([bad])


@pytest.mark.parametrize("cache", ["dynamic", "fixed"])
def test_ort_inference_reorder_matches_replaying_the_history(tiny_pair, tiny_pair_v1, cache):
    """Cache reordering (beam back-pointers) equals decoding each reordered history from scratch.

    Uses the stock random model, whose logits depend strongly on every fed token.
    Threshold: logits within 1e-5 of the largest magnitude.
    """
    from optimize.runtime.inference import OrtInference
    from optimize.runtime.session import OrtPair

    pair = OrtPair(tiny_pair if cache == "dynamic" else tiny_pair_v1, threads=1)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 40, 80)).astype(np.float32)
    cross_k, cross_v = pair.encode(x, np.array([40, 40]))
    history = rng.integers(5, 60, size=(4, 3))  # 2 utterances x beam 2, 3 steps
    parents = np.array([1, 1, 2, 3])  # utterance 0 keeps beam 1 twice; utterance 1 keeps both
    cache_len = pair.fixed_cache_len or 8

    def run(tokens, reorder):
        model = OrtInference(pair, cross_k, cross_v, None, cache_len)
        model.start(2)
        for t in range(3):
            model.step(tokens[:, t], t)
        if reorder:
            model.reorder(parents)
        return model.step(np.full(4, 7), 3)

    want = run(history[parents], reorder=False)
    scale = np.abs(want).max()
    assert np.abs(run(history, reorder=True) - want).max() <= 1e-5 * scale
    assert np.abs(run(history, reorder=False)[0] - want[0]).max() > 1e-3 * scale  # the reorder matters


def test_cross_attention_mask():
    mask = cross_attention_mask(np.array([9, 4, 16]), 4)
    assert mask.shape == (3, 1, 1, 4) and mask.dtype == np.float32
    assert (mask[:, 0, 0] == 0).sum(axis=1).tolist() == [3, 1, 4]
    assert np.isneginf(mask[1, 0, 0, 1:]).all()


def test_vocab_mismatch_is_an_error(pair, tmp_path):
    for name in (contract.ENCODER_FILE, contract.DECODER_FILE):
        shutil.copy(pair / name, tmp_path / name)
    (tmp_path / contract.TOKENS_FILE).write_text("".join(f"t{i} {i}\n" for i in range(10)), encoding="utf-8")
    with pytest.raises(OptimizeError, match="10 symbols"):
        Recognizer(tmp_path)


def test_detokenize_as_fireredasr(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("<blank> 0\n<unk> 1\n你 2\n好 3\n▁HELLO 4\n▁WORLD 5\n'S 6\n", encoding="utf-8")
    table = TokenTable.read(path)
    assert len(table) == 7
    assert table.detokenize([2, 3, 4, 5, 6]) == "你好 HELLO WORLD'S"
    assert table.detokenize([4, 2, 3]) == "HELLO你好"
    assert table.detokenize([]) == ""


@pytest.mark.parametrize("text, problem", [("a 0\nb 2\n", "gaps"), ("a 0\nb 0\n", "repeats"), ("a b c\n", "symbol id")])
def test_bad_tokens_file(tmp_path, text, problem):
    (tmp_path / "tokens.txt").write_text(text, encoding="utf-8")
    with pytest.raises(OptimizeError, match=problem):
        TokenTable.read(tmp_path / "tokens.txt")


def _write_wavs(tmp_path, seconds) -> list[str]:
    rng = np.random.default_rng(2)
    paths = []
    for i, s in enumerate(seconds):
        path = tmp_path / f"utt{i}.wav"
        sf.write(path, rng.normal(0, 3000, int(16000 * s)).astype(np.int16), 16000, subtype="PCM_16")
        paths.append(str(path))
    return paths


def test_cli_prints_path_tab_text_in_input_order(pair, tmp_path):
    wavs = _write_wavs(tmp_path, [1.2, 0.4, 0.8])
    result = CliRunner().invoke(app, ["transcribe", str(pair), *wavs, "--beam-size", "1", "--batch-size", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    want = Recognizer(pair, DecodeConfig(beam_size=1, batch_size=2)).transcribe(wavs)
    assert result.stdout.splitlines() == [f"{w}\t{h.text}" for w, h in zip(wavs, want)]


@pytest.mark.parametrize("kind", ["missing", "corrupt", "short"])
def test_cli_bad_audio_is_one_error_line(pair, tmp_path, kind):
    bad = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        bad.write_bytes(b"not audio at all")
    elif kind == "short":
        sf.write(bad, np.zeros(100, np.int16), 16000, subtype="PCM_16")
    result = CliRunner().invoke(app, ["transcribe", str(pair), *_write_wavs(tmp_path, [0.5]), str(bad)])
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]


def test_cli_bad_model_dir_and_provider(pair, tmp_path):
    wav = _write_wavs(tmp_path, [0.5])
    result = CliRunner().invoke(app, ["transcribe", str(tmp_path / "nope"), *wav])
    assert result.exit_code != 0 and result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["transcribe", str(pair), *wav, "--provider", "tpu"])
    assert result.exit_code != 0 and "unknown provider" in result.stderr
    result = CliRunner().invoke(app, ["transcribe", str(pair), *wav, "--device-id", "-1"])
    assert result.exit_code == 2 and "device_id=-1" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_io_binding_decodes_through_the_bound_path(pair, tmp_path, monkeypatch):
    from optimize.runtime import binding, recognizer

    made = []
    monkeypatch.setattr(recognizer, "BoundPair", lambda p: made.append(p) or binding.BoundPair(p))
    wavs = _write_wavs(tmp_path, [1.2, 0.4, 0.8])
    result = CliRunner().invoke(app, ["transcribe", str(pair), *wavs, "--batch-size", "2", "--io-binding"])
    assert result.exit_code == 0, result.output
    assert len(made) == 1  # the CLI's one Recognizer is bound
    want = Recognizer(pair, DecodeConfig(batch_size=2)).transcribe(wavs)  # unbound, beam 3
    assert result.stdout.splitlines() == [f"{w}\t{h.text}" for w, h in zip(wavs, want)]
