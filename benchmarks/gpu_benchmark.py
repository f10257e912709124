"""Official PyTorch vs our ONNX Runtime pairs, fp32 and fp16, batch 1 and 16, side by side in one run.

    python benchmarks/gpu_benchmark.py --device cpu          # tiny dims (the test fixture's); fp16 rows skipped
    python benchmarks/gpu_benchmark.py --device cuda --d-model 1280 --heads 20 --enc-layers 16 --dec-layers 16 \\
        --vocab 7832 --work-dir /tmp/aed-l [--fp16-pair DIR]  # FireRedASR-AED-L dims, random weights

Workload per (implementation, batch): `batch` random 10 s inputs (--frames 1000 fbank frames,
equal lengths), the encoder, then --steps beam-search steps (--beam, FireRedASR's 3 by
default) with EOS disabled, so every implementation runs exactly the same number of steps
(the official decoder's `eos_id` is set to -1 on the instance; ours gets eos -1). Weights are
random: a checkpoint of the given dims (or --ckpt) feeds the official model and, exported, our
fp32 pair (or --fp32-pair, which must come from that checkpoint); --fp16-pair is the pipeline's
fp16 stage output of that pair.

Rows: official PyTorch fp32 and fp16 (`.half()`, cuda only), our ORT fp32 with numpy I/O (the
plain path) and with IOBinding (optimize.runtime.binding), our ORT fp16 with IOBinding. Reported:
median encoder ms, median decoder ms per step, aggregate RTF = sum of (encoder + decoder) seconds
over sum of audio seconds across the timed repeats, and the fraction of utterances whose tokens
equal torch fp32's (so the same work was timed). The clock starts before the host->device copy
of the fbank and stops after torch.cuda.synchronize(); session/model creation and warm-up calls
are excluded. TF32 is off in torch and ORT, so fp32 means fp32. Prints a markdown table and
writes it with a JSON twin to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from optimize.errors import OptimizeError
from optimize.runtime.binding import BoundPair
from optimize.runtime.inference import encode, open_decoder
from optimize.runtime.search import DecodeConfig, search
from optimize.runtime.providers import ProviderOptions
from optimize.runtime.session import OrtPair
from aed_dims import add_dim_args, dims_of

NEVER = -1  # an EOS id no token can take: the search runs exactly --steps steps
TORCH_FP32 = "torch fp32"


@dataclass(frozen=True)
class Row:
    implementation: str  # "torch fp32", "torch fp16", "ort fp32 numpy I/O", "ort fp32 IOBinding", "ort fp16 IOBinding"
    batch: int  # utterances per call (the decoder runs batch x beam rows)
    encoder_ms: float | None  # median over the timed repeats
    decoder_ms_per_step: float | None  # median decoder time per repeat / steps
    rtf: float | None  # sum of processing s / sum of audio s over the timed repeats
    token_agreement: float | None  # fraction of utterances with torch fp32's tokens (same batch)
    note: str = ""  # why a row has no numbers, or what differs


# (x (N, T, 80) f32, x_len (N,) i64, cfg) -> (encoder s, decoder s, tokens per utterance)
Runner = Callable[[np.ndarray, np.ndarray, DecodeConfig], tuple[float, float, list[tuple[int, ...]]]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda: CUDA EP + torch cuda; cpu: CPU EP + torch cpu")
    add_dim_args(p, d_model=64, heads=4, enc_layers=2, dec_layers=2, vocab=60)
    p.add_argument("--ckpt", type=Path, default=None, help="official checkpoint dir (default: a random one of the dims above)")
    p.add_argument("--fp32-pair", type=Path, default=None, help="our fp32 pair exported from --ckpt (default: export it)")
    p.add_argument("--fp16-pair", type=Path, default=None, help="the fp16 stage output of the fp32 pair (row skipped if absent)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="utterances per call")
    p.add_argument("--frames", type=int, default=1000, help="fbank frames per input (10 ms each: 1000 = 10 s)")
    p.add_argument("--steps", type=int, default=32, help="decoder steps per call (EOS disabled)")
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per (implementation, batch)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per (implementation, batch)")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads and torch threads (CPU work)")
    p.add_argument("--device-id", type=int, default=0, help="CUDA device")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the random checkpoint and export here (reused if present)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_benchmark"), help="directory for <tag>.md and <tag>.json")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The checkpoint and the fp32 pair: given, or made in `work` (reused when already there)."""
    if args.fp32_pair is not None and args.ckpt is None:
        raise OptimizeError("--fp32-pair without --ckpt", "pass --ckpt, the checkpoint the pair was exported from")
    ckpt = args.ckpt or work / "ckpt"
    if args.ckpt is None and not (ckpt / "model.pth.tar").is_file():
        from optimize.export.checkpoint import make_random_checkpoint

        make_random_checkpoint(ckpt, **dims_of(args))
    pair = args.fp32_pair or work / "fp32"
    if args.fp32_pair is None and not (pair / "decoder.onnx").is_file():
        from optimize.export.exporter import export_checkpoint

        export_checkpoint(ckpt, pair)
    return ckpt, pair


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()  # cudaDeviceSynchronize: waits for ORT's stream as well as torch's


def official_model(ckpt: Path, device: str):
    """FireRedASR's own FireRedAsrAed with the checkpoint's weights, eval mode, on `device`."""
    from fireredasr.models.fireredasr_aed import FireRedAsrAed

    package = torch.load(ckpt / "model.pth.tar", map_location="cpu", weights_only=False)
    model = FireRedAsrAed.from_args(package["args"])
    model.load_state_dict(package["model_state_dict"], strict=True)
    model.decoder.eos_id = NEVER  # on this instance only: batch_beam_search then never stops early
    return model.eval().to(device), package["args"]


def torch_runner(model, device: str, dtype: torch.dtype, steps: int) -> Runner:
    def run(x: np.ndarray, x_len: np.ndarray, cfg: DecodeConfig):
        with torch.inference_mode():
            _sync(device)
            start = time.perf_counter()
            xt, lt = torch.from_numpy(x).to(device, dtype), torch.from_numpy(x_len).to(device)
            enc, _, mask = model.encoder(xt, lt)
            _sync(device)
            mid = time.perf_counter()
            hyps = model.decoder.batch_beam_search(enc, mask, cfg.beam_size, 1, steps, cfg.softmax_smoothing, cfg.length_penalty, cfg.eos_penalty)
            _sync(device)
            end = time.perf_counter()
        return mid - start, end - mid, [tuple(h[0]["yseq"].tolist()) for h in hyps]

    return run


def ort_runner(pair: OrtPair, device: str, io_binding: bool, steps: int) -> Runner:
    bound = BoundPair(pair) if io_binding else None
    cache_len = pair.fixed_cache_len or steps + 1
    sos = pair.info.sos

    def run(x: np.ndarray, x_len: np.ndarray, cfg: DecodeConfig):
        _sync(device)
        start = time.perf_counter()
        model = open_decoder(pair, bound, encode(pair, bound, x, x_len), None, cache_len)  # the recognizer's driver
        _sync(device)
        mid = time.perf_counter()
        seqs = search(model, len(x), steps, cfg, sos, NEVER)
        _sync(device)
        return mid - start, time.perf_counter() - mid, seqs

    return run


def check_dims(pair: OrtPair, args_ns, where: Path) -> None:
    """The pair must be the checkpoint's model, or token agreement means nothing."""
    info = pair.info
    got = (info.num_decoder_layers, info.num_head, info.d_model, info.vocab_size)
    want = (args_ns.n_layers_dec, args_ns.n_head, args_ns.d_model, args_ns.odim)
    if got != want:
        raise OptimizeError(f"{where}: (layers, heads, d_model, vocab) = {got}, the checkpoint has {want}", "pass the pair exported from --ckpt")


def measure(runner: Runner, name: str, batch: int, args: argparse.Namespace, reference: dict) -> Row:
    """Warm up, time --repeats calls, compare tokens with torch fp32's at this batch (kept in `reference`)."""
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, args.frames, 80)).astype(np.float32)
    x_len = np.full(batch, args.frames, dtype=np.int64)
    cfg = DecodeConfig(beam_size=args.beam, batch_size=batch, max_len=args.steps)
    for _ in range(args.warmup):
        runner(x, x_len, cfg)
    enc, dec = [], []
    for _ in range(args.repeats):
        e, d, tokens = runner(x, x_len, cfg)
        enc.append(e)
        dec.append(d)
    if name == TORCH_FP32:
        reference[batch] = tokens
    want = reference.get(batch)
    agreement = None if want is None else sum(a == b for a, b in zip(tokens, want)) / batch
    audio = args.repeats * batch * args.frames / 100
    return Row(name, batch, 1e3 * statistics.median(enc), 1e3 * statistics.median(dec) / args.steps, (sum(enc) + sum(dec)) / audio, agreement)


def _rows_for(name: str, make: Callable[[], Runner], args: argparse.Namespace, reference: dict) -> list[Row]:
    """Every batch of one implementation; a failure (an OOM at batch 16, say) becomes a row saying so."""
    try:
        runner = make()
    except Exception as e:  # noqa: BLE001 - reported in the row; the other implementations still run
        return [_failed(name, batch, e) for batch in args.batches]
    rows = []
    for batch in args.batches:
        try:
            rows.append(measure(runner, name, batch, args, reference))
        except Exception as e:  # noqa: BLE001 - as above
            rows.append(_failed(name, batch, e))
    return rows


def _failed(name: str, batch: int, e: Exception) -> Row:
    """A row without numbers; anything but an OptimizeError also prints its traceback (it may be a bug)."""
    if isinstance(e, OptimizeError):
        return Row(name, batch, None, None, None, None, f"error: {e}")
    traceback.print_exc()
    return Row(name, batch, None, None, None, None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")


def run_all(args: argparse.Namespace, ckpt: Path, fp32_pair: Path) -> list[Row]:
    reference: dict = {}
    model, ckpt_args = official_model(ckpt, args.device)
    rows = _rows_for(TORCH_FP32, lambda: torch_runner(model, args.device, torch.float32, args.steps), args, reference)
    if args.device == "cuda":
        rows += _rows_for("torch fp16", lambda: torch_runner(model.half(), args.device, torch.float16, args.steps), args, reference)
    else:
        rows += _skipped("torch fp16", args, "skipped: fp16 is a cuda measurement (CPU half kernels are a different, slow path)")
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()  # hand torch's cached blocks back before ORT's arena asks for memory
    provider = "cuda" if args.device == "cuda" else "cpu"
    options = ProviderOptions(device_id=args.device_id)

    def ort_rows(name: str, pair_dir: Path, io_binding: bool) -> list[Row]:
        def make() -> Runner:
            pair = OrtPair(pair_dir, provider, args.threads, dataclasses.replace(options, io_binding=io_binding))
            check_dims(pair, ckpt_args, pair_dir)
            return ort_runner(pair, args.device, io_binding, args.steps)

        return _rows_for(name, make, args, reference)

    rows += ort_rows("ort fp32 numpy I/O", fp32_pair, io_binding=False)
    rows += ort_rows("ort fp32 IOBinding", fp32_pair, io_binding=True)
    if args.device != "cuda":
        rows += _skipped("ort fp16 IOBinding", args, "skipped: fp16 is a cuda measurement (the CPU EP runs fp16 graphs only as a correctness check)")
    elif args.fp16_pair is None:
        rows += _skipped("ort fp16 IOBinding", args, "skipped: no --fp16-pair given")
    else:
        rows += ort_rows("ort fp16 IOBinding", args.fp16_pair, io_binding=True)
    return rows


def _skipped(name: str, args: argparse.Namespace, note: str) -> list[Row]:
    return [Row(name, b, None, None, None, None, note) for b in args.batches]


def environment(args: argparse.Namespace) -> dict:
    gpu = torch.cuda.get_device_name(args.device_id) if args.device == "cuda" else None
    return {
        "device": args.device, "gpu": gpu, "cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
        "torch": torch.__version__, "threads": args.threads, "tf32": False, "cudnn_conv_algo_search": ProviderOptions().cudnn_conv_algo_search,
    }  # fmt: skip


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[Row], args: argparse.Namespace, env: dict) -> str:
    base = {r.batch: r.rtf for r in rows if r.implementation == TORCH_FP32 and r.rtf}
    head = [
        f"d_model {args.d_model}, {args.heads} heads, {args.enc_layers} enc + {args.dec_layers} dec layers, vocab {args.vocab} (random weights); "
        f"{args.frames} frames per input ({args.frames / 100:g} s), {args.steps} decoder steps, beam {args.beam}",
        f"{env['device']} ({env['gpu'] or env['cpu']}), onnxruntime {env['onnxruntime']}, torch {env['torch']}, {args.threads} threads, "
        f"TF32 off; median of {args.repeats} after {args.warmup} warm-up calls; RTF = sum(encoder + decoder s) / sum(audio s)",
        "",
        "| implementation | batch | encoder ms | decoder ms/step | RTF | x torch fp32 speed | tokens = torch fp32 | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    body = [
        f"| {r.implementation} | {r.batch} | {_fmt(r.encoder_ms, '.2f')} | {_fmt(r.decoder_ms_per_step, '.3f')} | {_fmt(r.rtf, '.4f')} | "
        f"{_fmt(base[r.batch] / r.rtf if r.rtf and r.batch in base else None, '.2f')} | {_fmt(r.token_agreement, '.2f')} | {r.note} |"
        for r in rows
    ]
    return "\n".join(head + body)


def write(out: Path, tag: str, text: str, payload: dict) -> None:
    """<tag>.md and <tag>.json, each written to a temp name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    for path, content in ((out / f"{tag}.md", text + "\n"), (out / f"{tag}.json", json.dumps(payload, indent=2) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu)", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as ProviderOptions.use_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        try:
            ckpt, fp32_pair = prepare(args, work)
            rows = run_all(args, ckpt, fp32_pair)
        except OptimizeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    env = environment(args)
    text = markdown(rows, args, env)
    print(text)
    tag = f"{args.device}-d{args.d_model}-L{args.enc_layers}x{args.dec_layers}"
    write(args.out, tag, text, {"environment": env, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": [asdict(r) for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
