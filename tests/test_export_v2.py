"""`optimize export` on FireRedASR2-AED checkpoints against the official code (PyPI fasr-asr-firered==0.5.8).

Random-weight v2 models (the v1 keys plus the CTC head). Thresholds as for v1: cross K/V,
CTC log-probs and per-step logits within 1e-4 of the official values, relative to the
largest magnitude of the reference; decoded tokens identical to the official `transcribe`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml
import onnx
import pytest

torch = pytest.importorskip("torch")

from official_v2 import official_model_v2  # noqa: E402

from optimize import contract  # noqa: E402
from optimize.export import exporter  # noqa: E402
from optimize.corpus.manifest import read_manifest  # noqa: E402
from optimize.export.checkpoint import load_checkpoint, make_random_checkpoint  # noqa: E402
from optimize.runtime.audio import load_audio  # noqa: E402
from optimize.runtime.recognizer import Recognizer  # noqa: E402
from optimize.runtime.search import DecodeConfig  # noqa: E402
from tests.conftest import TINY_DIMS  # noqa: E402
from tests.test_export import _one_line_error, official_step_logits, rel_err, sessions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REL_TOL = 1e-4
GREEDY = DecodeConfig(beam_size=1, softmax_smoothing=1.0, length_penalty=0.0)
RECOMMENDED = DecodeConfig(beam_size=3, softmax_smoothing=1.25, length_penalty=0.6, eos_penalty=1.0)  # FireRedASR2's README


def _padded(feats: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(len(feats), max(len(f) for f in feats), 80)
    for i, f in enumerate(feats):
        x[i, : len(f)] = torch.from_numpy(f)
    return x, torch.tensor([len(f) for f in feats])


@pytest.mark.parametrize("lengths", [(203,), (97, 240, 61)])
def test_cross_kv_ctc_and_step_logits_match_official(tiny_ckpt_v2, tiny_pair_v2, lengths):
    off = official_model_v2(tiny_ckpt_v2)
    enc_sess, dec_sess = sessions(tiny_pair_v2)
    rng = np.random.default_rng(len(lengths))
    x, x_len = _padded([rng.standard_normal((n, 80)).astype(np.float32) for n in lengths])
    k, v, ctc = enc_sess.run(None, {"x": x.numpy(), "x_len": x_len.numpy()})
    with torch.no_grad():
        enc, _, enc_mask = off.encoder(x, x_len)
        ref_k = torch.stack([layer.cross_attn.w_ks(enc) for layer in off.decoder.layer_stack]).numpy()
        ref_v = torch.stack([layer.cross_attn.w_vs(enc) for layer in off.decoder.layer_stack]).numpy()
        ref_ctc = off.ctc(enc).numpy()
    valid = enc_mask.squeeze(1).numpy().astype(bool)
    assert k.shape == ref_k.shape and ctc.shape == ref_ctc.shape
    assert rel_err(k[:, valid], ref_k[:, valid]) < REL_TOL
    assert rel_err(v[:, valid], ref_v[:, valid]) < REL_TOL
    assert rel_err(ctc[valid], ref_ctc[valid]) < REL_TOL

    dims = load_checkpoint(tiny_ckpt_v2).dims
    n, steps = len(lengths), 5
    k_cache = np.zeros((dims.n_layers_dec, n, steps, dims.n_head, dims.head_dim), np.float32)
    v_cache = k_cache.copy()
    mask = np.where(valid, 0.0, -np.inf).astype(np.float32)[:, None, None, :]
    ys = torch.cat([torch.full((n, 1), dims.sos_id), torch.randint(5, dims.odim, (n, steps - 1))], dim=1)
    for t in range(steps):
        feeds = {"tokens": ys[:, t : t + 1].numpy(), "in_n_layer_self_k_cache": k_cache, "in_n_layer_self_v_cache": v_cache,
                 "n_layer_cross_k": k, "n_layer_cross_v": v, "offset": np.array([t], np.int64), contract.CROSS_MASK: mask}  # fmt: skip
        logits, k_cache, v_cache = dec_sess.run(None, feeds)
        with torch.no_grad():
            ref = official_step_logits(off, enc, enc_mask, ys[:, : t + 1])
        assert rel_err(logits[:, 0], ref) < REL_TOL, f"step {t}"


def official_tokens(off, feats: list[np.ndarray], cfg: DecodeConfig) -> list[tuple[int, ...]]:
    x, x_len = _padded(feats)
    with torch.no_grad():
        hyps = off.transcribe(
            x, x_len, beam_size=cfg.beam_size, nbest=1, softmax_smoothing=cfg.softmax_smoothing,
            length_penalty=cfg.length_penalty, eos_penalty=cfg.eos_penalty,
        )  # fmt: skip
    return [tuple(h[0]["yseq"].tolist()) for h in hyps]


@pytest.fixture(scope="module")
def eval_feats(default_pair_v2):
    """CMVN-normalized fbank of 6 eval utterances, computed by our front end from the pair's metadata."""
    utts = read_manifest(ROOT / "calibration" / "eval")[:6]
    rec = Recognizer(default_pair_v2, GREEDY)
    return [rec.features(load_audio(u.audio)) for u in utts]


@pytest.mark.parametrize(
    "cfg, batches",
    [(GREEDY, (1, 2, 3)), (RECOMMENDED, (1, 2, 3)), (DecodeConfig(beam_size=3, eos_penalty=1.5), (3,))],
    ids=["greedy", "beam3", "eos1.5"],
)
def test_tokens_identical_to_official_transcribe(default_ckpt_v2, default_pair_v2, eval_feats, cfg, batches):
    """The trained default in v2 format on eval audio, batched as the official code pads (batch sizes `batches`)."""
    off = official_model_v2(default_ckpt_v2)
    starts = np.cumsum((0,) + batches)
    for feats in (eval_feats[a:b] for a, b in zip(starts[:-1], starts[1:])):
        ref = official_tokens(off, feats, cfg)
        ours = Recognizer(default_pair_v2, DecodeConfig(**{**cfg.__dict__, "batch_size": len(feats)})).recognize_features(feats)
        assert [h.tokens for h in ours] == ref
    assert len({h for h in ref}) == len(ref) and all(ref)  # varied, non-empty hypotheses


def _meta(pair) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(pair / "encoder.onnx"), load_external_data=False).metadata_props}


def test_v2_metadata_and_io(tiny_ckpt_v2, tiny_pair_v2, tmp_path):
    meta = _meta(tiny_pair_v2)
    assert set(contract.V2_METADATA) <= set(meta)
    assert meta["version"] == "2" and meta["feat_dim"] == "80" and meta["vocab_size"] == str(TINY_DIMS["odim"])
    assert meta["model_type"] == contract.MODEL_TYPE and meta["max_len"] == str(contract.MAX_LEN)
    enc_sess, dec_sess = sessions(tiny_pair_v2)
    outputs = [o.name for o in enc_sess.get_outputs()]
    assert outputs == [n for n, _ in contract.ENCODER_OUTPUTS] + [contract.CTC_OUTPUT[0]]
    assert [i.name for i in dec_sess.get_inputs()] == [n for n, _ in contract.DECODER_INPUTS]
    # without --with-ctc: exactly the published two encoder outputs, same v2 metadata
    exporter.export_checkpoint(tiny_ckpt_v2, tmp_path / "plain")
    enc_plain, _ = sessions(tmp_path / "plain")
    assert [o.name for o in enc_plain.get_outputs()] == [n for n, _ in contract.ENCODER_OUTPUTS]
    assert _meta(tmp_path / "plain") == meta


def test_v2_without_derivable_keys_exports_the_same(tiny_ckpt_v2, tiny_pair_v2, tmp_path):
    """FireRedASR2 loads with strict=False: PE tables and the tied projection may be absent."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_v2, ckpt)
    package = torch.load(ckpt / "model.pth.tar", weights_only=False)
    for key in ("encoder.positional_encoding.pe", "decoder.positional_encoding.pe", "decoder.tgt_word_prj.weight"):
        del package["model_state_dict"][key]
    torch.save(package, ckpt / "model.pth.tar")
    exporter.export_checkpoint(ckpt, tmp_path / "pair", exporter.ExportConfig(with_ctc=True))
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 90, 80)).astype(np.float32), "x_len": np.array([90])}
    ours = next(sessions(tmp_path / "pair")).run(None, feeds)
    ref = next(sessions(tiny_pair_v2)).run(None, feeds)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def _broken_v2(tmp_path, tiny_ckpt_v2, edit) -> str:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_v2, ckpt)
    package = torch.load(ckpt / "model.pth.tar", weights_only=False)
    edit(package["model_state_dict"], ckpt)
    torch.save(package, ckpt / "model.pth.tar")
    msg = _one_line_error(["export", str(ckpt), "-o", str(tmp_path / "out"), "--with-ctc"])
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp directory left either
    return msg


def test_missing_ctc_key_is_one_line(tmp_path, tiny_ckpt_v2):
    msg = _broken_v2(tmp_path, tiny_ckpt_v2, lambda state, _: state.pop("ctc.ctc_lo.bias"))
    assert "ctc.ctc_lo.bias missing" in msg and "download" in msg


def test_misshapen_ctc_key_is_one_line(tmp_path, tiny_ckpt_v2):
    def edit(state, _):
        state["ctc.ctc_lo.weight"] = state["ctc.ctc_lo.weight"][:-1]

    msg = _broken_v2(tmp_path, tiny_ckpt_v2, edit)
    assert "ctc.ctc_lo.weight has shape (59, 64)" in msg and "(60, 64)" in msg


def test_vocab_disagreeing_with_dict_is_one_line(tmp_path, tiny_ckpt_v2):
    def edit(_, ckpt):
        lines = (ckpt / "dict.txt").read_text(encoding="utf-8").splitlines()
        (ckpt / "dict.txt").write_text("\n".join(lines[:-3]) + "\n", encoding="utf-8")

    msg = _broken_v2(tmp_path, tiny_ckpt_v2, edit)
    assert "57 tokens" in msg and "odim is 60" in msg and "dict.txt" in msg


def test_with_ctc_on_a_v1_checkpoint_is_one_line(tmp_path, tiny_ckpt):
    msg = _one_line_error(["export", str(tiny_ckpt), "-o", str(tmp_path / "out"), "--with-ctc"])
    assert "no CTC head" in msg and "without --with-ctc" in msg
    assert not (tmp_path / "out").exists()


def test_random_v2_checkpoint_round_trips(tmp_path):
    ckpt = make_random_checkpoint(tmp_path / "c", seed=1, version=2, **TINY_DIMS)
    loaded = load_checkpoint(ckpt)
    assert loaded.version == 2 and loaded.model.ctc is not None
    assert load_checkpoint(make_random_checkpoint(tmp_path / "c1", seed=1, **TINY_DIMS)).version == 1


@pytest.mark.parametrize("recipe", ["cpu_int8", "gpu_fp16"])
def test_shipped_recipe_stages_on_a_v2_export(tiny_pair_v2, tmp_path, recipe):
    """The shipped recipe's stages and settings on a v2 --with-ctc pair (gpu_fp16 as with --provider cpu).

    Judged by parity (small probes keep it fast); the final pair keeps the v2 metadata and
    the CTC output, and its CTC log-probs still pick the baseline's best token per frame.
    """
    from stage_helpers import cli, tiny_recipe

    shipped = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    gates = shipped["gates"] | {"min_speedup": 0.01, "min_logits_cosine": 0.99}  # no timing judged in tests
    path = tiny_recipe(tmp_path / "r.yaml", tiny_pair_v2, shipped["stages"], tmp_path / "run", gates=gates,
                       decode={"beam_size": 1, "max_len": 12})  # fmt: skip
    result = cli("run", path, "--provider", "cpu")
    assert result.exit_code == 0, result.stderr
    final = tmp_path / "run" / "final"
    assert _meta(final) == _meta(tiny_pair_v2)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 300, 80)).astype(np.float32), "x_len": np.array([300])}
    ours, ref = next(sessions(final)).run(None, feeds), next(sessions(tiny_pair_v2)).run(None, feeds)
    assert len(ours) == 3 and (ours[2].argmax(-1) == ref[2].argmax(-1)).mean() >= 0.9
