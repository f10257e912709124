"""Average the weights of training checkpoints into one official-format checkpoint (with its CTC head).

    python -m optimize.export.average OUT work/train-v3/last-12600.pt ... --base work/train-v3/best

Each input is a checkpoint directory as training's `best/` (official format, plus `ctc_head.pt`
when trained with the CTC head), a FireRedASR2-AED checkpoint directory (the CTC head inside its
model state, e.g. a published default's `checkpoint/`) or a resumable `last.pt` of
optimize.export.train. The result holds the element-wise mean of every weight (and of the CTC
heads, when every input has one), the dims, CMVN and tokens of `--base` (default: the first
input, then a directory), and is what `optimize.export.publish` takes. Its layout follows the
base: a FireRedASR2 base gives a FireRedASR2 checkpoint, a training `best/` gives `ctc_head.pt`
beside it. Averaging the last checkpoints of a run is the standard cheap gain
for attention models trained this way; which inputs to average is chosen on dev (BENCHMARKS.md
section 1.1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from optimize.errors import OptimizeError
from optimize.export.checkpoint import CTC_PREFIX, load_checkpoint, save_checkpoint
from optimize.export.model import exact_positional_tables
from optimize.export.train import CTC_HEAD_FILE


Weights = dict[str, torch.Tensor]


def _split(state: Weights) -> tuple[Weights, Weights | None]:
    """(the AED's weights, the CTC head's under its FireRedASR2 keys or None) of a model state."""
    head = {k: v for k, v in state.items() if k.startswith(CTC_PREFIX)}
    return {k: v for k, v in state.items() if not k.startswith(CTC_PREFIX)}, head or None


def _weights(path: Path) -> tuple[Weights, Weights | None]:
    """(model state, CTC head under its FireRedASR2 keys or None) of a checkpoint directory or a last.pt."""
    if path.is_dir():
        model, head = _split(load_checkpoint(path).model.state_dict())
        if head is None and (path / CTC_HEAD_FILE).is_file():
            head = torch.load(path / CTC_HEAD_FILE, map_location="cpu")
        return model, head
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state:
        raise OptimizeError(f"{path} is neither a checkpoint directory nor a last.pt of optimize.export.train", "pass best/ directories or last.pt files")
    head = {CTC_PREFIX + k: v for k, v in state["ctc"].items()} if "ctc" in state else None
    return state["model"], head


def average(out_dir: Path, inputs: list[Path], base_dir: Path | None = None) -> Path:
    base_dir = base_dir or (inputs[0] if inputs else None)
    if base_dir is None or not base_dir.is_dir():
        raise OptimizeError("no checkpoint directory to take dims, CMVN and tokens from", "pass --base DIR (e.g. training's best/), or a directory as the first input")
    base = load_checkpoint(base_dir)
    state, _ = _split(base.model.state_dict())
    shapes = {k: v.shape for k, v in state.items()}
    found = [_weights(p) for p in inputs]
    for p, (model, _) in zip(inputs, found):
        if {k: v.shape for k, v in model.items()} != shapes:
            raise OptimizeError(f"{p} holds other weights than {base_dir}", "average checkpoints of one training run")
    # positional tables are the exact float32 sinusoids (load_checkpoint checks them), also from a float16 base
    exact = exact_positional_tables(base.dims)
    mean = {k: exact[k] if k.endswith(".pe") else sum(m[k].float() for m, _ in found) / len(found) for k in state}
    heads = [h for _, h in found]
    head = {k: sum(h[k].float() for h in heads) / len(heads) for k in heads[0]} if all(heads) else None
    inside = base.model.ctc is not None  # a FireRedASR2 base: the head stays inside the model state
    if inside and head is None:
        missing = [str(p) for p, h in zip(inputs, heads) if h is None]
        raise OptimizeError(f"{base_dir} is a FireRedASR2 checkpoint but {', '.join(missing)} has no CTC head",
                            "average checkpoints that all carry the CTC head, or pass a --base without one")
    base.model.load_state_dict(mean | head if inside else mean)
    save_checkpoint(out_dir, base.model, base.cmvn_stats, base.tokens)
    if head is not None and not inside:
        torch.save(head, out_dir / CTC_HEAD_FILE)
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("inputs", type=Path, nargs="+", help="best/ directories or last.pt files")
    p.add_argument("--base", type=Path, help="checkpoint directory whose dims, CMVN and tokens the result keeps [default: the first input]")
    a = p.parse_args()
    try:
        print(average(a.out_dir, a.inputs, a.base))
    except OptimizeError as e:
        p.error(str(e))


if __name__ == "__main__":
    main()
