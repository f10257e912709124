"""The model-size flags of the benchmark scripts that make a random checkpoint, and its dims from them.

Each script names its own defaults (tiny for the quick ones, AED-L for make_aed_l.py); the flag
names, their help and the kernel rule are written here once.
"""

from __future__ import annotations

import argparse

AED_L = dict(d_model=1280, heads=20, enc_layers=16, dec_layers=16, vocab=7832, kernel_size=33)


def add_dim_args(p: argparse.ArgumentParser, d_model: int, heads: int, enc_layers: int, dec_layers: int, vocab: int,
                 kernel_size: int | None = None) -> None:  # fmt: skip
    """--d-model, --heads, --enc-layers, --dec-layers, --vocab and --kernel-size with these defaults."""
    p.add_argument("--d-model", type=int, default=d_model, help=f"model width (AED-L: {AED_L['d_model']})")
    p.add_argument("--heads", type=int, default=heads, help=f"attention heads (AED-L: {AED_L['heads']})")
    p.add_argument("--enc-layers", type=int, default=enc_layers, help=f"conformer blocks (AED-L: {AED_L['enc_layers']})")
    p.add_argument("--dec-layers", type=int, default=dec_layers, help=f"decoder layers (AED-L: {AED_L['dec_layers']})")
    p.add_argument("--vocab", type=int, default=vocab, help=f"output vocabulary (AED-L: {AED_L['vocab']})")
    p.add_argument("--kernel-size", type=int, default=kernel_size,
                   help=f"conformer depthwise kernel (AED-L: {AED_L['kernel_size']}; unset: 5 up to d-model 256, else 33)")  # fmt: skip


def dims_of(args: argparse.Namespace) -> dict:
    """make_random_checkpoint's dims (AedDims fields) from the flags."""
    kernel = args.kernel_size or (5 if args.d_model <= 256 else 33)
    return dict(d_model=args.d_model, n_head=args.heads, n_layers_enc=args.enc_layers, n_layers_dec=args.dec_layers,
                kernel_size=kernel, odim=args.vocab)  # fmt: skip
