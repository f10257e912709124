"""Train the embedded default: a small FireRedASR AED on the synthetic bilingual corpus.

The standard recipe that makes small attention encoder-decoders converge on little
data and CPU time: joint CTC-attention loss (the CTC head is dropped when saving),
label smoothing, SpecAugment, warm-up then inverse-sqrt decay, length-bucketed
batches with the shortest utterances first in the first epoch, and model selection
on dev error rather than loss. Speed variety comes from espeak-ng's rate range at
synthesis time. Resumable: `work/train/last.pt` holds model, optimizer and step.

    python -m optimize.export.train --train work/corpus/train --dev work/corpus/dev \
        --lang work/corpus/lang --out work/train --max-minutes 80
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from optimize.corpus.manifest import read_manifest
from optimize.corpus.tokenizer import Tokenizer
from optimize.export.checkpoint import CTC_PREFIX, load_checkpoint, read_dict, save_checkpoint
from optimize.evaluate.wer import edit_distance
from optimize.export.model import AedDims, FireRedAsrAed, encoder_lengths
from optimize.runtime.audio import load_audio
from optimize.runtime.features import apply_cmvn, cmvn_from_stats, cmvn_stats, fbank


CTC_HEAD_FILE = "ctc_head.pt"  # beside best/'s official checkpoint: the training CTC head's weights


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    d_model: int = 160  # small enough that model + eval set fit the 40 MB repo budget
    n_head: int = 4
    n_layers_enc: int = 4
    n_layers_dec: int = 2
    kernel_size: int = 15
    dropout: float = 0.1
    ctc_weight: float = 0.3  # joint CTC-attention: CTC aligns the encoder early
    label_smoothing: float = 0.1
    peak_lr: float = 1.5e-3
    warmup_steps: int = 250  # CPU budget allows ~1000 steps: a short warm-up
    eval_every: int = 150  # steps between dev scoring / checkpoints
    batch_frames: int = 12000  # padded fbank frames per batch
    max_minutes: float = 80.0
    seed: int = 1
    threads: int = 2
    init_step: int = 0  # continuing from a saved model: the schedule resumes at this step
    restart_warmup: int = 100  # fresh optimizer moments: ramp up to the resumed rate
    anneal: tuple[int, int] | None = None  # (from, to) steps: the rate falls linearly to 0 between them
    stop_at: int | None = None  # stop (after scoring dev and saving last.pt) at this step: replays a recorded schedule


def _features(path: str) -> np.ndarray:
    return fbank(load_audio(Path(path)))


def load_split(manifest: Path, tokenizer: Tokenizer, cache: Path) -> tuple[list[np.ndarray], list[list[int]], list[dict]]:
    """Raw fbank (T, 80) float32, token ids and manifest rows; fbank cached in one .npz."""
    utts = read_manifest(manifest)
    rows = [{"text": u.text, "lang": u.lang, **u.extra} for u in utts]
    ids = [tokenizer.encode(u.text) for u in utts]
    if cache.exists():
        data = np.load(cache)
        feats = np.split(data["feats"], np.cumsum(data["lengths"])[:-1])
    else:
        with ProcessPoolExecutor(2) as pool:
            feats = list(pool.map(_features, [str(u.audio) for u in utts], chunksize=32))
        lengths = np.array([len(f) for f in feats])
        np.savez(cache, feats=np.concatenate(feats), lengths=lengths)
    return feats, ids, rows


def spec_augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Two frequency masks (<= 10 bins) and two time masks (<= 5% of length, <= 20 frames)."""
    x = x.clone()
    t = x.size(0)
    for _ in range(2):
        w = rng.integers(0, 11)
        f0 = rng.integers(0, x.size(1) - w + 1)
        x[:, f0 : f0 + w] = 0.0
        w = rng.integers(0, max(1, min(20, int(0.05 * t))) + 1)
        t0 = rng.integers(0, max(1, t - w + 1))
        x[t0 : t0 + w, :] = 0.0
    return x


def make_batches(lengths: list[int], batch_frames: int, rng: np.random.Generator, sort_all: bool) -> list[list[int]]:
    """Length-bucketed batches of at most `batch_frames` padded frames; shuffled unless sort_all."""
    order = np.argsort(np.asarray(lengths) + (0 if sort_all else rng.uniform(0, 30, len(lengths))), kind="stable")
    batches, cur, longest = [], [], 0
    for i in order:
        longest_new = max(longest, lengths[i])
        if cur and longest_new * (len(cur) + 1) > batch_frames:
            batches.append(cur)
            cur, longest_new = [], lengths[i]
        cur.append(int(i))
        longest = longest_new
    batches.append(cur)
    if not sort_all:
        rng.shuffle(batches)
    return batches


def collate(feats, ids, idx, sos, eos, pad, augment: np.random.Generator | None):
    xs = [torch.from_numpy(feats[i]) for i in idx]
    if augment is not None:
        xs = [spec_augment(x, augment) for x in xs]
    x_len = torch.tensor([len(x) for x in xs])
    x = nn.utils.rnn.pad_sequence(xs, batch_first=True)
    ys_in = nn.utils.rnn.pad_sequence([torch.tensor([sos] + ids[i]) for i in idx], batch_first=True, padding_value=pad)
    ys_out = nn.utils.rnn.pad_sequence([torch.tensor(ids[i] + [eos]) for i in idx], batch_first=True, padding_value=-100)
    targets = [torch.tensor(ids[i]) for i in idx]
    return x, x_len, ys_in, ys_out, targets


class Trainer:
    def __init__(self, cfg: TrainConfig, dims: AedDims):
        torch.manual_seed(cfg.seed)
        self.cfg, self.dims = cfg, dims
        self.model = FireRedAsrAed(dims)
        # Tied embedding/projection: N(0, 1) init gives logits of std sqrt(d) and a
        # first loss near 150; N(0, d^-1/2) keeps both the scaled input and logits O(1).
        nn.init.normal_(self.model.decoder.tgt_word_emb.weight, std=dims.d_model**-0.5)
        self.ctc = nn.Linear(dims.d_model, dims.odim)  # training only; not part of the checkpoint
        params = list(self.model.parameters()) + list(self.ctc.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.peak_lr, betas=(0.9, 0.98), weight_decay=1e-3)
        self.step, self.epoch, self.batch_in_epoch, self.best = 0, 0, 0, float("inf")

    def lr(self) -> float:
        s = max(self.step, 1)
        rate = self.cfg.peak_lr * min(s / self.cfg.warmup_steps, math.sqrt(self.cfg.warmup_steps / s))
        if self.cfg.init_step:
            rate *= min(1.0, (self.step - self.cfg.init_step + 1) / self.cfg.restart_warmup)
        if self.cfg.anneal:
            start, end = self.cfg.anneal
            rate *= min(1.0, max(0.0, (end - self.step) / (end - start)))
        return rate

    def init_from(self, ckpt_dir: Path) -> None:
        """Start from a saved official-format model; a FireRedASR2 checkpoint's CTC head (`ctc.ctc_lo`)
        continues too, a FireRedASR-AED one's starts fresh."""
        ckpt = load_checkpoint(ckpt_dir)
        if ckpt.dims != self.dims:
            raise SystemExit(f"--init {ckpt_dir}: dims {ckpt.dims} differ from the training config {self.dims}")
        # weights only: the positional tables stay this model's exact float32 sinusoids (a
        # float16 checkpoint's rounded copies would be trained on, then fail load_checkpoint)
        own = self.model.state_dict()
        weights = ckpt.model.state_dict()
        head = {k.removeprefix(CTC_PREFIX): weights.pop(k).float() for k in list(weights) if k.startswith(CTC_PREFIX)}
        self.model.load_state_dict({k: own[k] if k.endswith(".pe") else v.float() for k, v in weights.items()})
        if head:
            self.ctc.load_state_dict(head)
        self.step = self.cfg.init_step

    def loss(self, x, x_len, ys_in, ys_out, targets):
        logits, enc, _ = self.model(x, x_len, ys_in)
        att = F.cross_entropy(logits.transpose(1, 2), ys_out, ignore_index=-100, label_smoothing=self.cfg.label_smoothing)
        log_probs = F.log_softmax(self.ctc(enc), dim=-1).transpose(0, 1)
        ctc = F.ctc_loss(log_probs, torch.cat(targets), encoder_lengths(x_len), torch.tensor([len(t) for t in targets]), blank=0, zero_infinity=True)
        return (1 - self.cfg.ctc_weight) * att + self.cfg.ctc_weight * ctc, att.item(), ctc.item()

    def train_step(self, batch) -> tuple[float, float]:
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr()
        loss, att, ctc = self.loss(*batch)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(list(self.model.parameters()) + list(self.ctc.parameters()), 5.0)
        self.opt.step()
        self.step += 1
        return att, ctc

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ctc": self.ctc.state_dict(), "opt": self.opt.state_dict(), "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best": self.best}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ctc.load_state_dict(state["ctc"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.epoch, self.best = state["step"], state["epoch"], state["best"]
        self.batch_in_epoch = state["batch_in_epoch"]


@torch.no_grad()
def greedy_decode(model: FireRedAsrAed, x, x_len, max_len: int) -> list[list[int]]:
    """Batched greedy decoding by full-prefix recomputation (dev scoring only)."""
    model.eval()
    enc, keep = model.encoder(x, x_len)
    d = model.dims
    ys = torch.full((x.size(0), 1), d.sos_id, dtype=torch.long)
    done = torch.zeros(x.size(0), dtype=torch.bool)
    for _ in range(max_len):
        nxt = model.decoder(ys, enc, keep)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, d.eos_id), nxt)
        ys = torch.cat([ys, nxt[:, None]], 1)
        done |= nxt == d.eos_id
        if done.all():
            break
    return [[t for t in row[1:].tolist() if t != d.eos_id] for row in ys]


def dev_error(model, feats, ids, batch_frames: int) -> float:
    """Token error rate (%) of greedy decoding on the dev split."""
    errors = total = 0
    for idx in make_batches([len(f) for f in feats], batch_frames, np.random.default_rng(0), sort_all=True):
        x, x_len, *_ = collate(feats, ids, idx, 3, 4, 2, None)
        for i, hyp in zip(idx, greedy_decode(model, x, x_len, max(len(ids[i]) for i in idx) + 10)):
            errors += edit_distance(ids[i], hyp)
            total += len(ids[i])
    return 100.0 * errors / max(total, 1)


def _normalize(feats: list[np.ndarray], mean, inv_std) -> list[np.ndarray]:
    return [apply_cmvn(f, mean, inv_std) for f in feats]


def run(args: argparse.Namespace) -> None:
    cfg = TrainConfig(max_minutes=args.max_minutes, seed=args.seed, threads=args.threads, eval_every=args.eval_every,
        init_step=args.init_step if args.init else 0, anneal=tuple(args.anneal) if args.anneal else None, stop_at=args.stop_at,
    )  # fmt: skip
    torch.set_num_threads(cfg.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lang = Path(args.lang)
    tokenizer = Tokenizer(lang / "dict.txt", lang / "train_bpe.model")
    tokens = read_dict(lang / "dict.txt")
    train_raw, train_ids, _ = load_split(Path(args.train), tokenizer, out / "train_feats.npz")
    dev_raw, dev_ids, _ = load_split(Path(args.dev), tokenizer, out / "dev_feats.npz")
    # Continuing from a saved model keeps the normalization it learned with (its cmvn.ark).
    stats = load_checkpoint(Path(args.init)).cmvn_stats if args.init else cmvn_stats(train_raw)
    mean, inv_std = cmvn_from_stats(stats)
    train, dev = _normalize(train_raw, mean, inv_std), _normalize(dev_raw, mean, inv_std)
    dims = AedDims(
        odim=len(tokens), d_model=cfg.d_model, n_head=cfg.n_head, n_layers_enc=cfg.n_layers_enc,
        n_layers_dec=cfg.n_layers_dec, kernel_size=cfg.kernel_size, residual_dropout=cfg.dropout, dropout_rate=cfg.dropout,
    )  # fmt: skip
    trainer = Trainer(cfg, dims)
    if (out / "last.pt").exists():
        trainer.load(torch.load(out / "last.pt", weights_only=False))
        print(f"resumed at step {trainer.step}, epoch {trainer.epoch}, best dev {trainer.best:.2f}", flush=True)
    elif args.init:
        trainer.init_from(Path(args.init))
        trainer.epoch = 1  # shuffled batches, not the sorted first epoch
        print(f"initialized from {args.init}; schedule resumes at step {trainer.step}", flush=True)
    start = time.time()
    log = open(out / "train.log", "a")
    if args.init and trainer.best == float("inf"):  # the starting point on this dev set, and the best so far
        _evaluate_and_save(trainer, dev, dev_ids, stats, tokens, out, log, 0.0)
    lengths = [len(f) for f in train]
    while (time.time() - start) / 60 < cfg.max_minutes:
        rng = np.random.default_rng(cfg.seed + trainer.epoch)
        batches = make_batches(lengths, cfg.batch_frames, rng, sort_all=trainer.epoch == 0)
        for idx in batches[trainer.batch_in_epoch :]:
            att, ctc = trainer.train_step(collate(train, train_ids, idx, dims.sos_id, dims.eos_id, dims.pad_id, rng))
            trainer.batch_in_epoch += 1
            minutes = (time.time() - start) / 60
            if trainer.step % 25 == 0:
                print(f"epoch {trainer.epoch} step {trainer.step} lr {trainer.lr():.2e} att {att:.3f} ctc {ctc:.3f} {minutes:.1f} min", flush=True)
            stop = (minutes >= cfg.max_minutes or (cfg.anneal is not None and trainer.step >= cfg.anneal[1])
                    or (cfg.stop_at is not None and trainer.step >= cfg.stop_at))
            if trainer.step % cfg.eval_every == 0 or stop:
                _evaluate_and_save(trainer, dev, dev_ids, stats, tokens, out, log, minutes)
            if stop:
                return
        trainer.epoch, trainer.batch_in_epoch = trainer.epoch + 1, 0


def _evaluate_and_save(trainer: Trainer, dev, dev_ids, stats, tokens, out: Path, log, minutes: float) -> None:
    """Score dev, keep the best model in the official format, and write the resumable state."""
    err = dev_error(trainer.model, dev, dev_ids, trainer.cfg.batch_frames)
    record = {"epoch": trainer.epoch, "step": trainer.step, "dev_token_error": round(err, 2), "minutes": round(minutes, 1)}
    print(json.dumps(record), flush=True)
    log.write(json.dumps(record) + "\n")
    log.flush()
    if err < trainer.best:
        trainer.best = err
        save_checkpoint(out / "best", trainer.model, stats, tokens)
        # the CTC head under FireRedASR2's keys (ctc.ctc_lo), for publishing in the v2 format
        torch.save({CTC_PREFIX + k: v for k, v in trainer.ctc.state_dict().items()}, out / "best" / CTC_HEAD_FILE)
    torch.save(trainer.state(), out / "last.pt.tmp")
    os.replace(out / "last.pt.tmp", out / "last.pt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="training manifest (jsonl or its directory)")
    p.add_argument("--dev", required=True, help="dev manifest")
    p.add_argument("--lang", required=True, help="directory with dict.txt and train_bpe.model")
    p.add_argument("--out", required=True, help="work directory: feature caches, last.pt, best/ (official checkpoint)")
    p.add_argument("--max-minutes", type=float, default=TrainConfig.max_minutes)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--eval-every", type=int, default=TrainConfig.eval_every, help="steps between dev scoring and checkpoints")
    p.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch intra-op threads")
    p.add_argument("--stop-at", type=int, help="stop at this step (dev scored, last.pt saved); a later run resumes there")
    p.add_argument("--anneal", type=int, nargs=2, metavar=("FROM", "TO"), help="final phase: the learning rate falls linearly to 0 from step FROM to step TO")
    p.add_argument("--init", help="start from this official-format checkpoint dir (e.g. a published model) instead of random weights")
    p.add_argument("--init-step", type=int, default=0, help="with --init: the step the learning-rate schedule resumes at")
    run(p.parse_args())


if __name__ == "__main__":
    main()
