"""The training script's pieces: it learns, saves the official format, and continues from a saved model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import TINY_DIMS  # noqa: E402

from optimize.export.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from optimize.export.model import AedDims  # noqa: E402
from optimize.export.train import TrainConfig, Trainer, collate, dev_error  # noqa: E402

DIMS = AedDims(**TINY_DIMS, residual_dropout=0.0, dropout_rate=0.0)


def toy_batch(n: int = 4, frames: int = 60):
    """Fixed features and token sequences (ids >= 5: no specials), one batch."""
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((frames - 7 * i, 80)).astype(np.float32) for i in range(n)]
    ids = [list(rng.integers(5, DIMS.odim, 4 + i)) for i in range(n)]
    return feats, ids


def test_trainer_fits_one_batch():
    feats, ids = toy_batch()
    trainer = Trainer(TrainConfig(peak_lr=3e-3, warmup_steps=5, dropout=0.0), DIMS)
    batch = collate(feats, ids, list(range(len(feats))), DIMS.sos_id, DIMS.eos_id, DIMS.pad_id, None)
    first = trainer.train_step(batch)[0]
    for _ in range(60):
        last = trainer.train_step(batch)[0]
    assert last < 0.5 * first
    assert trainer.step == 61
    assert dev_error(trainer.model, feats, ids, 12000) < 50.0  # greedy decoding recovers most tokens


def test_init_from_saved_model_resumes_schedule(tmp_path):
    feats, ids = toy_batch()
    source = Trainer(TrainConfig(), DIMS)
    stats = np.stack([np.r_[np.zeros(80), 10.0], np.r_[np.full(80, 10.0), 0.0]])
    tokens = tuple(f"t{i}" for i in range(DIMS.odim))
    save_checkpoint(tmp_path / "ckpt", source.model, stats, tokens, dtype=torch.float16)

    cfg = TrainConfig(init_step=5000, restart_warmup=100)
    trainer = Trainer(cfg, DIMS)
    trainer.init_from(tmp_path / "ckpt")
    saved = load_checkpoint(tmp_path / "ckpt").model.state_dict()
    for k, v in trainer.model.state_dict().items():
        if not k.endswith(".pe"):
            torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    # the positional tables stay exact, so a model trained from here saves and loads in fp32
    save_checkpoint(tmp_path / "again", trainer.model, stats, tokens)
    load_checkpoint(tmp_path / "again")
    assert trainer.step == 5000
    # a short ramp to the decayed rate (fresh optimizer moments), then the inverse-sqrt decay
    decayed = cfg.peak_lr * (cfg.warmup_steps / 5000) ** 0.5
    assert trainer.lr() == pytest.approx(decayed / 100)
    trainer.step = 5099
    assert trainer.lr() == pytest.approx(cfg.peak_lr * (cfg.warmup_steps / 5099) ** 0.5)


def test_init_from_continues_a_v2_ctc_head(tmp_path):
    from optimize.export.model import FireRedAsrAed

    source = FireRedAsrAed(DIMS, with_ctc=True)
    torch.nn.init.normal_(source.ctc.ctc_lo.weight)
    stats = np.stack([np.r_[np.zeros(80), 10.0], np.r_[np.full(80, 10.0), 0.0]])
    save_checkpoint(tmp_path / "ckpt", source, stats, tuple(f"t{i}" for i in range(DIMS.odim)))
    trainer = Trainer(TrainConfig(init_step=10), DIMS)
    trainer.init_from(tmp_path / "ckpt")
    torch.testing.assert_close(trainer.ctc.weight, source.ctc.ctc_lo.weight, rtol=0, atol=0)
    torch.testing.assert_close(trainer.ctc.bias, source.ctc.ctc_lo.bias, rtol=0, atol=0)


def test_init_from_refuses_other_dims(tmp_path):
    source = Trainer(TrainConfig(), DIMS)
    stats = np.stack([np.r_[np.zeros(80), 10.0], np.r_[np.full(80, 10.0), 0.0]])
    save_checkpoint(tmp_path / "ckpt", source.model, stats, tuple(f"t{i}" for i in range(DIMS.odim)))
    other = Trainer(TrainConfig(init_step=10), AedDims(**(TINY_DIMS | {"n_layers_dec": 1})))
    with pytest.raises(SystemExit, match="differ from the training config"):
        other.init_from(tmp_path / "ckpt")


def test_anneal_falls_linearly_to_zero():
    cfg = TrainConfig(anneal=(6000, 7000))
    trainer = Trainer(cfg, DIMS)
    trainer.step = 6000
    at_start = cfg.peak_lr * (cfg.warmup_steps / 6000) ** 0.5
    assert trainer.lr() == pytest.approx(at_start)
    trainer.step = 6500
    assert trainer.lr() == pytest.approx(cfg.peak_lr * (cfg.warmup_steps / 6500) ** 0.5 * 0.5)
    trainer.step = 7000
    assert trainer.lr() == 0.0


def test_best_checkpoint_keeps_the_ctc_head_under_v2_keys(tmp_path):
    """Dev scoring saves the official checkpoint and, beside it, the CTC head as FireRedASR2 names it."""
    import io

    from optimize.export.train import CTC_HEAD_FILE, _evaluate_and_save

    feats, ids = toy_batch()
    trainer = Trainer(TrainConfig(), DIMS)
    stats = np.stack([np.r_[np.zeros(80), 10.0], np.r_[np.full(80, 10.0), 0.0]])
    tokens = tuple(f"t{i}" for i in range(DIMS.odim))
    log = io.StringIO()
    _evaluate_and_save(trainer, feats, ids, stats, tokens, tmp_path, log, 0.0)
    head = torch.load(tmp_path / "best" / CTC_HEAD_FILE)
    assert set(head) == {"ctc.ctc_lo.weight", "ctc.ctc_lo.bias"}
    torch.testing.assert_close(head["ctc.ctc_lo.weight"], trainer.ctc.weight.detach())
    assert head["ctc.ctc_lo.weight"].shape == (DIMS.odim, DIMS.d_model)
    assert load_checkpoint(tmp_path / "best").dims == DIMS and (tmp_path / "last.pt").is_file()
    assert '"dev_token_error"' in log.getvalue()


def test_publish_with_the_ctc_head_writes_firered_asr2(tmp_path):
    """A best/ with ctc_head.pt is published as FireRedASR2-AED: CTC keys in the checkpoint, a --with-ctc pair."""
    import io
    import json

    import onnx

    from optimize.export.publish import publish
    from optimize.export.train import _evaluate_and_save

    feats, ids = toy_batch()
    trainer = Trainer(TrainConfig(), DIMS)
    stats = np.stack([np.r_[np.zeros(80), 10.0], np.r_[np.full(80, 10.0), 0.0]])
    _evaluate_and_save(trainer, feats, ids, stats, tuple(f"t{i}" for i in range(DIMS.odim)), tmp_path, io.StringIO(), 0.0)
    out = publish(tmp_path / "best", tmp_path / "published", None, None, ctc_weight=0.5)
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt.version == 2
    torch.testing.assert_close(ckpt.model.ctc.ctc_lo.weight, trainer.ctc.weight.detach().half().float())
    encoder = onnx.load(out / "encoder.onnx", load_external_data=False)
    assert len(encoder.graph.output) == 3
    assert {p.key: p.value for p in encoder.metadata_props}["ctc_weight"] == "0.5"  # the recognizer's default weight
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"].startswith("FireRedASR2-AED") and manifest["decode"] == {"ctc_weight": 0.5}


def test_average_of_a_best_dir_and_a_last_pt(tmp_path):
    """optimize.export.average: element-wise mean of model and CTC head; the positional tables kept; one-line refusals."""
    import io

    from optimize.errors import OptimizeError
    from optimize.export.average import average
    from optimize.export.train import CTC_HEAD_FILE, _evaluate_and_save

    feats, ids = toy_batch()
    stats = np.stack([np.r_[np.zeros(80), 10.0], np.r_[np.full(80, 10.0), 0.0]])
    tokens = tuple(f"t{i}" for i in range(DIMS.odim))
    a = Trainer(TrainConfig(), DIMS)
    _evaluate_and_save(a, feats, ids, stats, tokens, tmp_path / "a", io.StringIO(), 0.0)
    b = Trainer(TrainConfig(seed=2), DIMS)
    torch.manual_seed(7)
    for p in list(b.model.parameters()) + list(b.ctc.parameters()):
        torch.nn.init.normal_(p, std=0.1)
    torch.save(b.state(), tmp_path / "b.pt")
    out = average(tmp_path / "avg", [tmp_path / "a" / "best", tmp_path / "b.pt"])
    got = load_checkpoint(out).model.state_dict()
    for k, v in a.model.state_dict().items():
        want = v if k.endswith(".pe") else (v + b.model.state_dict()[k]) / 2
        torch.testing.assert_close(got[k], want, msg=k)
    head = torch.load(out / CTC_HEAD_FILE)
    torch.testing.assert_close(head["ctc.ctc_lo.weight"], (a.ctc.weight + b.ctc.weight).detach() / 2)
    with pytest.raises(OptimizeError, match="no checkpoint directory"):
        average(tmp_path / "x", [tmp_path / "b.pt", tmp_path / "a" / "best"])
    only_pts = average(tmp_path / "z", [tmp_path / "b.pt", tmp_path / "b.pt"], base_dir=tmp_path / "a" / "best")
    torch.testing.assert_close(load_checkpoint(only_pts).model.state_dict()["decoder.tgt_word_prj.weight"], b.model.state_dict()["decoder.tgt_word_prj.weight"])
    other = Trainer(TrainConfig(), AedDims(**{**TINY_DIMS, "n_layers_dec": 1}, residual_dropout=0.0, dropout_rate=0.0))
    torch.save(other.state(), tmp_path / "other.pt")
    with pytest.raises(OptimizeError, match="other weights"):
        average(tmp_path / "y", [tmp_path / "a" / "best", tmp_path / "other.pt"])


def test_average_takes_a_published_firered2_checkpoint(tmp_path):
    """A FireRedASR2 checkpoint (head inside its model state) is an input and a --base; the result stays FireRedASR2."""
    import io

    from optimize.errors import OptimizeError
    from optimize.export.average import average
    from optimize.export.publish import publish
    from optimize.export.train import CTC_HEAD_FILE, _evaluate_and_save

    feats, ids = toy_batch()
    stats = np.stack([np.r_[np.zeros(80), 10.0], np.r_[np.full(80, 10.0), 0.0]])
    a = Trainer(TrainConfig(), DIMS)
    _evaluate_and_save(a, feats, ids, stats, tuple(f"t{i}" for i in range(DIMS.odim)), tmp_path / "a", io.StringIO(), 0.0)
    published = publish(tmp_path / "a" / "best", tmp_path / "pub", None, None, ctc_weight=0.5) / "checkpoint"
    b = Trainer(TrainConfig(seed=2), DIMS)
    torch.manual_seed(7)
    for p in list(b.model.parameters()) + list(b.ctc.parameters()):
        torch.nn.init.normal_(p, std=0.1)
    torch.save(b.state(), tmp_path / "b.pt")
    out = average(tmp_path / "avg", [published, tmp_path / "b.pt"], base_dir=published)
    assert not (out / CTC_HEAD_FILE).exists()
    got = load_checkpoint(out)
    assert got.version == 2
    pub = load_checkpoint(published).model.state_dict()
    want_head = (pub["ctc.ctc_lo.weight"] + b.ctc.weight.detach()) / 2
    torch.testing.assert_close(got.model.ctc.ctc_lo.weight, want_head)
    key = "decoder.tgt_word_prj.weight"
    torch.testing.assert_close(got.model.state_dict()[key], (pub[key] + b.model.state_dict()[key]) / 2)
    # a training best/ as base keeps its layout: the head from the FireRedASR2 input goes to ctc_head.pt
    beside = average(tmp_path / "avg1", [published, tmp_path / "a" / "best"], base_dir=tmp_path / "a" / "best")
    assert load_checkpoint(beside).version == 1
    torch.testing.assert_close(torch.load(beside / CTC_HEAD_FILE)["ctc.ctc_lo.weight"], (pub["ctc.ctc_lo.weight"] + a.ctc.weight.detach()) / 2)
    no_head = Trainer(TrainConfig(), DIMS)
    state = no_head.state()
    del state["ctc"]
    torch.save(state, tmp_path / "nohead.pt")
    with pytest.raises(OptimizeError, match="has no CTC head"):
        average(tmp_path / "bad", [published, tmp_path / "nohead.pt"], base_dir=published)
    assert not (tmp_path / "bad").exists()
