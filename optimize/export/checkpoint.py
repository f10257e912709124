"""The official FireRedASR AED checkpoint directory: read, write, and make random ones.

Layout (HF FireRedTeam/FireRedASR-AED-L): `model.pth.tar` = {"args": argparse.Namespace,
"model_state_dict": ...}, `cmvn.ark` (Kaldi 2 x 81 stats), `dict.txt` (`token id` per line).

FireRedASR2-AED (ModelScope/HF FireRedTeam/FireRedASR2-AED) keeps that layout and those
keys and adds the CTC head `ctc.ctc_lo` (Linear(d_model, odim), fireredasr2/models/module/ctc.py);
its vocabulary is 8667. The CTC keys are what tells the two releases apart: nothing in
`args` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from optimize.errors import OptimizeError
from optimize.export.model import AedDims, FireRedAsrAed, sinusoid
from optimize.runtime.features import cmvn_stats, read_kaldi_cmvn, write_kaldi_cmvn

CKPT_FILE, CMVN_FILE, DICT_FILE = "model.pth.tar", "cmvn.ark", "dict.txt"
SPECIAL_TOKENS = ("<blank>", "<unk>", "<pad>", "<sos>", "<eos>")
CTC_PREFIX = "ctc.ctc_lo."  # FireRedASR2's CTC head: Linear(d_model, odim) under model.ctc.ctc_lo
CTC_KEYS = (CTC_PREFIX + "weight", CTC_PREFIX + "bias")
# FireRedASR2's loader is strict=False, and these keys are derivable: the PE tables from the
# formula (checked by _check_pe when present), the output projection tied to the embedding.
_DERIVABLE_V2_KEYS = ("encoder.positional_encoding.pe", "decoder.positional_encoding.pe", "decoder.tgt_word_prj.weight")
_DIM_FIELDS = tuple(f.name for f in dataclasses.fields(AedDims))


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint directory; the model is in eval mode."""

    model: FireRedAsrAed
    dims: AedDims
    cmvn_stats: np.ndarray  # shape = (2, idim + 1), float64
    tokens: tuple[str, ...]  # id -> symbol
    version: int = 1  # 1: FireRedASR-AED-L; 2: FireRedASR2-AED (has the CTC head, model.ctc)


def read_dict(path: Path) -> tuple[str, ...]:
    """dict.txt: `token id` per line, id equal to the line index (asserted by FireRedASR too)."""
    tokens = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        parts = line.split()
        if len(parts) == 2 and parts[1] != str(i):
            raise OptimizeError(f"{path} line {i + 1}: id {parts[1]} != line index {i}", "ids in dict.txt must be 0, 1, 2, ... in order")
        tokens.append(" " if not parts or parts[0] == "<space>" else parts[0])
    return tuple(tokens)


def _require_files(ckpt_dir: Path) -> None:
    if not ckpt_dir.is_dir():
        raise OptimizeError(f"checkpoint directory {ckpt_dir} does not exist", "pass the directory holding model.pth.tar, cmvn.ark, dict.txt")
    missing = [f for f in (CKPT_FILE, CMVN_FILE, DICT_FILE) if not (ckpt_dir / f).is_file()]
    if missing:
        raise OptimizeError(f"{ckpt_dir} lacks {', '.join(missing)}", "a FireRedASR AED checkpoint directory needs model.pth.tar, cmvn.ark and dict.txt")


def _dims_from_args(args: object, where: Path) -> AedDims:
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else None
    if values is None:
        raise OptimizeError(f"{where}: `args` is a {type(args).__name__}", "the checkpoint must store an argparse.Namespace under 'args'")
    missing = [f for f in _DIM_FIELDS if f not in values and f not in ("residual_dropout", "dropout_rate", "pe_maxlen")]
    if missing:
        raise OptimizeError(f"{where}: args lack {', '.join(missing)}", "save the checkpoint with the official FireRedASR args")
    return AedDims(**{f: values[f] for f in _DIM_FIELDS if f in values})


def _load_package(path: Path) -> dict:
    try:
        package = torch.load(path, map_location="cpu", weights_only=False)  # args is an argparse.Namespace
    except Exception as e:  # torch raises many types for a bad file
        raise OptimizeError(f"cannot read {path}: {str(e).splitlines()[0][:200]}", "the file is truncated or not a torch checkpoint; download it again") from e
    if not isinstance(package, dict) or "args" not in package or "model_state_dict" not in package:
        raise OptimizeError(f"{path} holds no 'args' / 'model_state_dict'", "pass an official FireRedASR AED model.pth.tar")
    return package


def _check_keys(model: FireRedAsrAed, state: dict, where: Path) -> None:
    expected, got = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''})")
        raise OptimizeError(f"{where}: state dict does not match its args: {'; '.join(parts)}", "the checkpoint is not a FireRedASR AED model of these dimensions")
    for key, value in state.items():
        if tuple(value.shape) != tuple(model.state_dict()[key].shape):
            raise OptimizeError(f"{where}: {key} has shape {tuple(value.shape)}, args imply {tuple(model.state_dict()[key].shape)}", "the args and weights disagree; re-save the checkpoint")


def _release(state: dict, where: Path, dims: AedDims) -> int:
    """2 when the state dict carries FireRedASR2's CTC head, else 1; a partial or misshapen head is an error."""
    present = [k for k in CTC_KEYS if k in state]
    if not present:
        return 1
    fix = "download FireRedASR2-AED's model.pth.tar again (its CTC head is Linear(d_model, odim): ctc.ctc_lo.weight and ctc.ctc_lo.bias)"
    if len(present) < len(CTC_KEYS):
        missing = [k for k in CTC_KEYS if k not in state]
        raise OptimizeError(f"{where}: FireRedASR2 checkpoint with an incomplete CTC head: {', '.join(missing)} missing", fix)
    want = dict(zip(CTC_KEYS, [(dims.odim, dims.d_model), (dims.odim,)]))
    for key, shape in want.items():
        got = tuple(getattr(state[key], "shape", ()))
        if got != shape:
            raise OptimizeError(f"{where}: {key} has shape {got}, args (odim {dims.odim}, d_model {dims.d_model}) imply {shape}", fix)
    return 2


def _fill_derivable(model: FireRedAsrAed, state: dict) -> dict:
    """A v2 state dict with the derivable keys it lacks taken from our model (see _DERIVABLE_V2_KEYS)."""
    own = model.state_dict()
    state = dict(state)
    for key in _DERIVABLE_V2_KEYS:
        if key not in state:
            state[key] = state["decoder.tgt_word_emb.weight"] if key == "decoder.tgt_word_prj.weight" else own[key]
    return state


def _check_pe(model: FireRedAsrAed, where: Path, stored_dtype: torch.dtype) -> None:
    """The export computes both PE tables in-graph; the stored ones must equal the formula.

    Tolerance follows the stored precision: a float16 checkpoint rounds the tables (<= 5e-4).
    """
    atol = 1e-4 if stored_dtype == torch.float32 else 2e-3
    for name, module in (("encoder", model.encoder.positional_encoding), ("decoder", model.decoder.positional_encoding)):
        ref = sinusoid(torch.arange(module.pe.size(1)), module.d_model) if name == "decoder" else None
        if ref is None:
            half = module.pe.size(1) // 2
            ref = sinusoid(torch.arange(half, -half - 1, -1), module.d_model)
        if not torch.allclose(module.pe[0].float(), ref, atol=atol):
            raise OptimizeError(f"{where}: {name}.positional_encoding.pe differs from the sinusoid formula", "this is not a FireRedASR table; the export cannot reproduce it")


def load_checkpoint(ckpt_dir: Path) -> Checkpoint:
    """Load an official checkpoint directory with strict key matching."""
    ckpt_dir = Path(ckpt_dir)
    _require_files(ckpt_dir)
    package = _load_package(ckpt_dir / CKPT_FILE)
    dims = _dims_from_args(package["args"], ckpt_dir / CKPT_FILE)
    state = package["model_state_dict"]
    version = _release(state, ckpt_dir / CKPT_FILE, dims)
    model = FireRedAsrAed(dims, with_ctc=version == 2)
    if version == 2 and "decoder.tgt_word_emb.weight" in state:
        state = _fill_derivable(model, state)
    _check_keys(model, state, ckpt_dir / CKPT_FILE)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.eval()
    _check_pe(model, ckpt_dir / CKPT_FILE, state["encoder.positional_encoding.pe"].dtype)
    tokens = read_dict(ckpt_dir / DICT_FILE)
    if len(tokens) != dims.odim:
        raise OptimizeError(f"{ckpt_dir / DICT_FILE} has {len(tokens)} tokens, the model's odim is {dims.odim}", "use the dict.txt that came with the checkpoint")
    stats = read_kaldi_cmvn(ckpt_dir / CMVN_FILE)
    if stats.shape != (2, dims.idim + 1):
        raise OptimizeError(f"{ckpt_dir / CMVN_FILE} has shape {stats.shape}, expected (2, {dims.idim + 1})", "use the cmvn.ark that came with the checkpoint")
    return Checkpoint(model, dims, stats, tokens, version)


def save_checkpoint(out_dir: Path, model: FireRedAsrAed, stats: np.ndarray, tokens: tuple[str, ...], dtype=torch.float32) -> None:
    """Write the official layout atomically (temp names, then rename); `dtype` of the stored weights."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(**dataclasses.asdict(model.dims), blank_id=0, unk="<unk>", blank="<blank>", pad="<pad>", sos="<sos>", eos="<eos>")
    state = {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()}
    tmp = out_dir / (CKPT_FILE + ".tmp")
    torch.save({"args": args, "model_state_dict": state}, tmp)
    os.replace(tmp, out_dir / CKPT_FILE)
    write_kaldi_cmvn(out_dir / (CMVN_FILE + ".tmp"), stats)
    os.replace(out_dir / (CMVN_FILE + ".tmp"), out_dir / CMVN_FILE)
    (out_dir / (DICT_FILE + ".tmp")).write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)), encoding="utf-8")
    os.replace(out_dir / (DICT_FILE + ".tmp"), out_dir / DICT_FILE)


def placeholder_tokens(odim: int) -> tuple[str, ...]:
    """Specials, then CJK characters and `▁`-pieces, to fill a vocabulary of `odim` for random models."""
    body = []
    for i in range(odim - len(SPECIAL_TOKENS)):
        body.append(chr(0x4E00 + i // 2) if i % 2 == 0 else f"▁W{i}")
    return SPECIAL_TOKENS + tuple(body)


def make_random_checkpoint(out_dir: Path, seed: int = 0, version: int = 1, **dims) -> Path:
    """Random-weight checkpoint in the official format at any dimensions (AedDims fields).

    `version` 2 writes the FireRedASR2-AED format: the same keys plus the CTC head.
    LayerNorm affines are randomized too, so parity tests exercise them. CMVN stats
    describe log-mel-like features (mean about 10, std about 3).
    """
    torch.manual_seed(seed)
    d = AedDims(**dims)
    if version not in (1, 2):
        raise ValueError(f"version {version}: FireRedASR releases are 1 and 2")
    model = FireRedAsrAed(d, with_ctc=version == 2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.8, 1.2)
            elif "norm" in name and name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
        model.decoder.tgt_word_emb.weight[d.pad_id].zero_()  # nn.Embedding(padding_idx) keeps the pad row at 0
    rng = np.random.default_rng(seed)
    feats = rng.normal(10.0, 3.0, size=(1000, d.idim)) * rng.uniform(0.5, 1.5, size=d.idim)
    save_checkpoint(out_dir, model, cmvn_stats([feats]), placeholder_tokens(d.odim))
    return Path(out_dir)
