"""`optimize export` against the official FireRedASR code (PyPI fireredasr==0.0.2).

Thresholds: cross K/V and per-step logits within 1e-4 of the official values,
relative to the largest magnitude of the reference tensor.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("fireredasr.models.fireredasr_aed")

from optimize import contract, graph  # noqa: E402
from optimize.cli import app  # noqa: E402
from optimize.export import exporter  # noqa: E402
from optimize.export.checkpoint import load_checkpoint  # noqa: E402

REL_TOL = 1e-4


def official_model(ckpt_dir: Path):
    from fireredasr.models.fireredasr_aed import FireRedAsrAed

    package = torch.load(ckpt_dir / "model.pth.tar", map_location="cpu", weights_only=False)
    model = FireRedAsrAed.from_args(package["args"])
    model.load_state_dict(package["model_state_dict"], strict=True)
    return model.eval()


def sessions(pair: Path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return (ort.InferenceSession(str(pair / f), so, providers=["CPUExecutionProvider"]) for f in ("encoder.onnx", "decoder.onnx"))


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def official_step_logits(off, enc, enc_mask, ys: torch.Tensor) -> np.ndarray:
    """The official decoder's last-position logits for prefix ys, as batch_beam_search computes them."""
    dec = off.decoder
    tgt_mask = dec.ignored_target_position_is_0(ys, dec.pad_id)
    h = dec.tgt_word_emb(ys) * dec.scale + dec.positional_encoding(ys)
    for layer in dec.layer_stack:
        h = layer(h, enc, tgt_mask, enc_mask)
    return dec.tgt_word_prj(dec.layer_norm_out(h))[:, -1].numpy()


@pytest.mark.parametrize("lengths", [(203,), (203, 150, 61), (97, 240)])
def test_cross_kv_and_step_logits_match_official(tiny_ckpt, tiny_pair, lengths):
    off = official_model(tiny_ckpt)
    enc_sess, dec_sess = sessions(tiny_pair)
    x = torch.randn(len(lengths), max(lengths), 80)
    x_len = torch.tensor(lengths)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0  # padding as FireRedASR pads: zeros after CMVN
    k, v = enc_sess.run(None, {"x": x.numpy(), "x_len": x_len.numpy()})
    with torch.no_grad():
        enc, _, enc_mask = off.encoder(x, x_len)
        ref_k = torch.stack([layer.cross_attn.w_ks(enc) for layer in off.decoder.layer_stack]).numpy()
        ref_v = torch.stack([layer.cross_attn.w_vs(enc) for layer in off.decoder.layer_stack]).numpy()
    valid = enc_mask.squeeze(1).numpy().astype(bool)
    assert k.shape == ref_k.shape
    assert rel_err(k[:, valid], ref_k[:, valid]) < REL_TOL
    assert rel_err(v[:, valid], ref_v[:, valid]) < REL_TOL

    n, layers, steps = len(lengths), len(off.decoder.layer_stack), 6
    info = load_checkpoint(tiny_ckpt).dims
    cache = np.zeros((layers, n, steps + 1, info.n_head, info.head_dim), np.float32)
    k_cache, v_cache = cache, cache.copy()
    mask = np.where(valid, 0.0, -np.inf).astype(np.float32)[:, None, None, :]
    ys = torch.cat([torch.full((n, 1), 3), torch.randint(5, info.odim, (n, steps - 1))], dim=1)
    for t in range(steps):
        feeds = {"tokens": ys[:, t : t + 1].numpy(), "in_n_layer_self_k_cache": k_cache, "in_n_layer_self_v_cache": v_cache,
                 "n_layer_cross_k": k, "n_layer_cross_v": v, "offset": np.array([t], np.int64), contract.CROSS_MASK: mask}  # fmt: skip
        logits, k_cache, v_cache = dec_sess.run(None, feeds)
        with torch.no_grad():
            ref = official_step_logits(off, enc, enc_mask, ys[:, : t + 1])
        assert logits.shape == (n, 1, info.odim)
        assert rel_err(logits[:, 0], ref) < REL_TOL, f"step {t}"


def test_contract_io_and_metadata(tiny_pair, tiny_ckpt):
    enc = onnx.load(str(tiny_pair / "encoder.onnx"))
    dec = onnx.load(str(tiny_pair / "decoder.onnx"))

    def io(values):
        return [(v.name, v.type.tensor_type.elem_type) for v in values]

    init_names = {i.name for i in dec.graph.initializer}
    assert io(enc.graph.input) == list(contract.ENCODER_INPUTS)
    assert io(enc.graph.output) == list(contract.ENCODER_OUTPUTS)
    assert [x for x in io(dec.graph.input) if x[0] not in init_names] == list(contract.DECODER_INPUTS)
    assert io(dec.graph.output) == list(contract.DECODER_OUTPUTS)
    meta = {p.key: p.value for p in enc.metadata_props}
    for key in contract.REQUIRED_METADATA + contract.EXTRA_METADATA:
        assert key in meta, key
    dims = load_checkpoint(tiny_ckpt).dims
    parsed = contract.parse_metadata(meta, "encoder")
    assert (parsed["num_decoder_layers"], parsed["num_head"], parsed["head_dim"]) == (dims.n_layers_dec, dims.n_head, dims.head_dim)
    assert meta["model_type"] == "fire-red-asr-aed" and meta["vocab_size"] == str(dims.odim)
    assert len(parsed["cmvn_mean"]) == 80 and len(parsed["cmvn_inv_stddev"]) == 80
    # six required decoder inputs for sherpa-onnx; the mask is an overridable initializer
    _, dec_sess = sessions(tiny_pair)
    assert [i.name for i in dec_sess.get_inputs()] == [n for n, _ in contract.DECODER_INPUTS]
    assert [i.name for i in dec_sess.get_overridable_initializers()] == [contract.CROSS_MASK]


def test_cache_length_dynamic_and_fixed(tiny_pair, tiny_pair_v1):
    _, dyn = sessions(tiny_pair)
    _, fixed = sessions(tiny_pair_v1)
    assert isinstance(dyn.get_inputs()[1].shape[2], str)
    assert fixed.get_inputs()[1].shape[2] == 1024
    meta = {p.key: p.value for p in onnx.load(str(tiny_pair_v1 / "encoder.onnx")).metadata_props}
    assert meta["max_len"] == "1024"


def test_tokens_txt_matches_dict(tiny_pair, tiny_ckpt):
    lines = (tiny_pair / "tokens.txt").read_text(encoding="utf-8").splitlines()
    dict_lines = (tiny_ckpt / "dict.txt").read_text(encoding="utf-8").splitlines()
    assert lines == dict_lines


def test_external_data_when_over_limit(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(graph, "PROTO_LIMIT_BYTES", 1000)  # force the >2 GB path on a small model
    exporter.export_checkpoint(tiny_ckpt, tmp_path / "big")
    files = sorted(p.name for p in (tmp_path / "big").iterdir())
    assert files == ["decoder.onnx", "decoder.onnx.data", "encoder.onnx", "encoder.onnx.data", "tokens.txt"]
    enc_sess, _ = sessions(tmp_path / "big")
    k, _ = enc_sess.run(None, {"x": np.zeros((1, 50, 80), np.float32), "x_len": np.array([50])})
    assert k.shape[2] == 13


def _one_line_error(args) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text, text
    assert "Traceback" not in text
    return text


def test_missing_checkpoint_files(tmp_path, tiny_ckpt):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "cmvn.ark").unlink()
    msg = _one_line_error(["export", str(ckpt), "-o", str(tmp_path / "out")])
    assert "cmvn.ark" in msg
    assert not (tmp_path / "out").exists()
    assert "does not exist" in _one_line_error(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])


def test_corrupt_checkpoint(tmp_path, tiny_ckpt):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    data = (ckpt / "model.pth.tar").read_bytes()
    (ckpt / "model.pth.tar").write_bytes(data[: len(data) // 2])
    assert "cannot read" in _one_line_error(["export", str(ckpt), "-o", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_missing_state_dict_keys_are_named(tmp_path, tiny_ckpt):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    package = torch.load(ckpt / "model.pth.tar", weights_only=False)
    del package["model_state_dict"]["decoder.layer_norm_out.weight"]
    torch.save(package, ckpt / "model.pth.tar")
    msg = _one_line_error(["export", str(ckpt), "-o", str(tmp_path / "out")])
    assert "decoder.layer_norm_out.weight" in msg
    assert not (tmp_path / "out").exists()


def test_export_leaves_no_temp_files(tiny_ckpt, tmp_path):
    out = tmp_path / "pair"
    exporter.export_checkpoint(tiny_ckpt, out)
    assert sorted(os.listdir(tmp_path)) == ["pair"]
