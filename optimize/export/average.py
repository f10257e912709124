"""Average the weights of training checkpoints into one official-format checkpoint (with its CTC head).

    python -m optimize.export.average OUT work/train-v3/last-12600.pt ... --base work/train-v3/best

Each input is a checkpoint directory as training's `best/` (official format, plus `ctc_head.pt`
when trained with the CTC head) or a resumable `last.pt` of optimize.export.train. The result
holds the element-wise mean of every weight (and of the CTC heads, when every input has one),
the dims, CMVN and tokens of `--base` (default: the first input, then a directory), and is what
`optimize.export.publish` takes. Averaging the last checkpoints of a run is the standard cheap gain
for attention models trained this way; which inputs to average is chosen on dev (BENCHMARKS.md
section 1.1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from optimize.errors import OptimizeError
from optimize.export.checkpoint import CTC_PREFIX, load_checkpoint, save_checkpoint
from optimize.export.train import CTC_HEAD_FILE


def _weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(model state, CTC head under its FireRedASR2 keys or None) of a best/ directory or a last.pt."""
    if path.is_dir():
        model = load_checkpoint(path).model.state_dict()
        head = torch.load(path / CTC_HEAD_FILE, map_location="cpu") if (path / CTC_HEAD_FILE).is_file() else None
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
    state = base.model.state_dict()
    shapes = {k: v.shape for k, v in state.items()}
    found = [_weights(p) for p in inputs]
    for p, (model, _) in zip(inputs, found):
        if {k: v.shape for k, v in model.items()} != shapes:
            raise OptimizeError(f"{p} holds other weights than {base_dir}", "average checkpoints of one training run")
    # positional tables stay the exact float32 sinusoids (load_checkpoint checks them)
    mean = {k: v if k.endswith(".pe") else sum(m[k].float() for m, _ in found) / len(found) for k, v in state.items()}
    base.model.load_state_dict(mean)
    save_checkpoint(out_dir, base.model, base.cmvn_stats, base.tokens)
    heads = [h for _, h in found]
    if all(h is not None for h in heads):
        torch.save({k: sum(h[k].float() for h in heads) / len(heads) for k in heads[0]}, out_dir / CTC_HEAD_FILE)
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
