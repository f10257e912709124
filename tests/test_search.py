"""optimize.runtime.search against fireredasr's TransformerDecoder.batch_beam_search.

The official decoder is driven through the Inference protocol by an adapter that
feeds the full prefix each step with its layer-output caches, exactly as
batch_beam_search does, so any token difference is the search's. Threshold:
identical token sequences for every utterance.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import reshape_decoder

from optimize.errors import OptimizeError
from optimize.runtime.search import DecodeConfig, beam_search, greedy_search, search, topk

torch = pytest.importorskip("torch")
pytest.importorskip("fireredasr.models.fireredasr_aed")

SOS, EOS = 3, 4
LENGTHS = (37, 60, 23, 51, 80, 44)  # fbank frames; T' from 6 to 20


class OfficialDecoder:
    """The Inference protocol over the official decoder, computing what batch_beam_search computes."""

    def __init__(self, decoder, enc_out, enc_mask):
        self.dec, self.enc_out, self.enc_mask = decoder, enc_out, enc_mask

    def start(self, beam: int) -> None:
        n, ti, h = self.enc_out.shape
        self.enc = self.enc_out.unsqueeze(1).repeat(1, beam, 1, 1).view(n * beam, ti, h)
        self.mask = self.enc_mask.unsqueeze(1).repeat(1, beam, 1, 1).view(n * beam, -1, ti)
        self.ys = None
        self.caches = [None] * len(self.dec.layer_stack)

    @torch.no_grad()
    def step(self, tokens: np.ndarray, offset: int) -> np.ndarray:
        new = torch.from_numpy(tokens).view(-1, 1)
        self.ys = new if self.ys is None else torch.cat([self.ys, new], dim=1)
        assert self.ys.shape[1] == offset + 1
        dec = self.dec
        tgt_mask = dec.ignored_target_position_is_0(self.ys, dec.pad_id)
        h = dec.dropout(dec.tgt_word_emb(self.ys) * dec.scale + dec.positional_encoding(self.ys))
        for i, layer in enumerate(dec.layer_stack):
            h = layer.forward(h, self.enc, tgt_mask, self.mask, cache=self.caches[i])
            self.caches[i] = h
        return dec.tgt_word_prj(dec.layer_norm_out(h)[:, -1]).numpy()

    def reorder(self, rows: np.ndarray) -> None:
        idx = torch.from_numpy(rows)
        self.ys = self.ys[idx]
        self.caches = [c[idx] for c in self.caches]


def official_model(eos_bias: float):
    """Random FireRedAsrAed (the brief's small dims), reshaped so that decoding is not degenerate.

    With stock init the scaled, tied embedding dominates the residual and the
    decoder copies its input forever. Shrinking the embedding, strengthening
    cross attention, and adding `eos_bias` to the EOS logit (through the final
    LayerNorm bias) gives audio-dependent tokens and EOS at varied steps.
    """
    from fireredasr.models.fireredasr_aed import FireRedAsrAed

    torch.manual_seed(0)
    args = argparse.Namespace(
        idim=80, n_layers_enc=2, n_layers_dec=2, n_head=4, d_model=64, residual_dropout=0.1, dropout_rate=0.1,
        kernel_size=5, pe_maxlen=5000, sos_id=SOS, eos_id=EOS, pad_id=2, odim=50,
    )
    model = FireRedAsrAed(args).eval()
    reshape_decoder(model.decoder, EOS, eos_bias)
    return model


def encoded(model, lengths):
    torch.manual_seed(1)
    x = torch.randn(len(lengths), max(lengths), 80)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    x_len = torch.tensor(lengths)
    with torch.no_grad():
        enc_out, _, enc_mask = model.encoder(x, x_len)
    return x, x_len, enc_out, enc_mask


def official_tokens(model, x, x_len, cfg: DecodeConfig) -> list[tuple[int, ...]]:
    with torch.no_grad():
        hyps = model.transcribe(
            x, x_len, cfg.beam_size, 1, cfg.max_len, cfg.softmax_smoothing, cfg.length_penalty, cfg.eos_penalty
        )
    return [tuple(h[0]["yseq"].tolist()) for h in hyps]


CONFIGS = [
    DecodeConfig(),  # FireRedASR's recommended beam 3
    DecodeConfig(beam_size=1),
    DecodeConfig(beam_size=4, softmax_smoothing=1.0, length_penalty=0.0),
    DecodeConfig(beam_size=3, eos_penalty=0.9, length_penalty=1.0),
    DecodeConfig(beam_size=2, max_len=7),
    DecodeConfig(beam_size=4, length_penalty=2.0),  # ranks on length: fails if the penalty skipped sos
]


@pytest.fixture(scope="module", params=[1.1, 1.3], ids=["eos_bias1.1", "eos_bias1.3"])
def model(request):
    torch.set_num_threads(1)
    return official_model(request.param)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"beam{c.beam_size}-lp{c.length_penalty}-eos{c.eos_penalty}-max{c.max_len}")
def test_search_matches_batch_beam_search(model, cfg):
    """One mixed-length batch of 6: tokens identical to the official batch search."""
    x, x_len, enc_out, enc_mask = encoded(model, LENGTHS)
    want = official_tokens(model, x, x_len, cfg)
    maxlen = cfg.max_len or enc_out.shape[1]
    got = search(OfficialDecoder(model.decoder, enc_out, enc_mask), len(LENGTHS), maxlen, cfg, SOS, EOS)
    assert got == want


@pytest.mark.parametrize("batch", [(0, 2), (1, 3, 5), (4,)])
def test_search_matches_in_sub_batches(model, batch):
    """Other batch compositions (maxlen follows each batch's padded T', as in FireRedASR)."""
    lengths = [LENGTHS[i] for i in batch]
    x, x_len, enc_out, enc_mask = encoded(model, lengths)
    cfg = DecodeConfig()
    got = beam_search(OfficialDecoder(model.decoder, enc_out, enc_mask), len(lengths), enc_out.shape[1], cfg, SOS, EOS)
    assert [d.tokens for d in got] == official_tokens(model, x, x_len, cfg)


def test_greedy_equals_official_beam_one(model):
    x, x_len, enc_out, enc_mask = encoded(model, LENGTHS)
    cfg = DecodeConfig(beam_size=1)
    got = greedy_search(OfficialDecoder(model.decoder, enc_out, enc_mask), len(LENGTHS), enc_out.shape[1], cfg, SOS, EOS)
    assert [d.tokens for d in got] == official_tokens(model, x, x_len, cfg)


def test_fixture_model_is_not_degenerate(model):
    """The comparisons above mean something only if hypotheses end at varied steps and differ."""
    x, x_len, enc_out, enc_mask = encoded(model, LENGTHS)
    maxlen = enc_out.shape[1]
    hyps = official_tokens(model, x, x_len, DecodeConfig()) + official_tokens(model, x, x_len, DecodeConfig(beam_size=1))
    lengths = {len(h) for h in hyps}
    assert len(lengths) >= 3 and any(0 < n < maxlen for n in lengths)
    assert len({t for h in hyps for t in h}) >= 3


def test_topk_is_sorted_and_breaks_ties_by_lowest_index():
    x = np.array([[0.5, 2.0, 2.0, -1.0, 2.0, 0.1], [3.0, 1.0, 2.0, 0.0, -5.0, 4.0]], dtype=np.float32)
    values, idx = topk(x, 2)
    assert idx.tolist() == [[1, 2], [5, 0]]
    assert values.tolist() == [[2.0, 2.0], [4.0, 3.0]]
    values, idx = topk(x, 6)
    assert idx.tolist() == [[1, 2, 4, 0, 5, 3], [5, 0, 2, 1, 3, 4]]


def test_topk_matches_full_sort_on_random_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 500)).astype(np.float32)
    values, idx = topk(x, 5)
    ref = np.argsort(-x, axis=1, kind="stable")[:, :5]
    assert np.array_equal(idx, ref) and np.array_equal(values, np.take_along_axis(x, ref, 1))


@pytest.mark.parametrize(
    "field, value",
    [("beam_size", 0), ("batch_size", 0), ("max_len", -1), ("softmax_smoothing", 0.0), ("eos_penalty", 0.0), ("length_penalty", -0.1)],
)
def test_decode_config_rejects_bad_values(field, value):
    with pytest.raises(OptimizeError) as e:
        DecodeConfig(**{field: value})
    assert field in e.value.message and "\n" not in str(e.value)


def test_greedy_score_is_the_summed_log_probs(model):
    """The score reported with each greedy hypothesis: its tokens' log-probs (eos included), teacher-forced again."""
    from optimize.runtime.search import log_probs

    x, x_len, enc_out, enc_mask = encoded(model, LENGTHS)
    cfg, maxlen = DecodeConfig(beam_size=1), enc_out.shape[1]
    got = greedy_search(OfficialDecoder(model.decoder, enc_out, enc_mask), len(LENGTHS), maxlen, cfg, SOS, EOS)
    seqs = [d.tokens + ((EOS,) if len(d.tokens) < maxlen else ()) for d in got]
    dec = OfficialDecoder(model.decoder, enc_out, enc_mask)
    dec.start(1)
    prev, total = np.full(len(seqs), SOS, dtype=np.int64), np.zeros(len(seqs))
    for t in range(max(map(len, seqs))):
        lp = log_probs(dec.step(prev, t), cfg, EOS)
        total += [lp[i, s[t]] if t < len(s) else 0.0 for i, s in enumerate(seqs)]
        prev = np.array([s[t] if t < len(s) else EOS for s in seqs], dtype=np.int64)
    assert np.allclose(total, [d.score for d in got], rtol=1e-5, atol=1e-4)
    assert all(d.score < 0 for d in got)
