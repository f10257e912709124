"""`python -m optimize.corpus {synth,verify,tokenizer}`: build the synthetic corpus and its tokenizer.

This entry point is the only place in optimize.corpus that prints. User errors print one line,
`error: <message> (<fix>)`, and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _synth(args: argparse.Namespace) -> None:
    from optimize.corpus.dataset import SplitConfig, write_split

    cfg = SplitConfig(args.split, args.seed, args.count, args.format)
    start = time.time()

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            print(f"{done}/{total} utterances, {time.time() - start:.0f} s", flush=True)

    out = write_split(cfg, args.out, jobs=args.jobs, force=args.force, progress=progress)
    print(f"wrote {out}")


def _verify(args: argparse.Namespace) -> None:
    from optimize.corpus.dataset import verify

    problems = verify(args.dir, jobs=args.jobs, count=args.count)
    for line in problems[:20]:
        print(line)
    if problems:
        print(f"{args.dir}: {len(problems)} difference(s)")
        sys.exit(1)
    print(f"{args.dir}: regenerated manifest is identical")


def _tokenizer(args: argparse.Namespace) -> None:
    from optimize.corpus.tokenizer import build_from_manifests

    tokenizer, report = build_from_manifests(args.train, args.out, args.spm_vocab_size, args.check)
    print(f"wrote {tokenizer.dict_path} ({len(tokenizer)} tokens: {report})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m optimize.corpus", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("synth", help="synthesize a split with espeak-ng")
    p.add_argument("--split", required=True, choices=("train", "dev", "eval", "calib"))
    p.add_argument("--count", type=int, required=True, help="number of utterances")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory (written atomically)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--format", default="flac", choices=("flac", "ogg", "wav"))
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(run=_synth)

    p = commands.add_parser("verify", help="regenerate a split and compare its manifest")
    p.add_argument("dir", type=Path)
    p.add_argument("--count", type=int, default=None, help="check only the first COUNT lines")
    p.add_argument("--jobs", type=int, default=1)
    p.set_defaults(run=_verify)

    p = commands.add_parser("tokenizer", help="build dict.txt + train_bpe.model from training text")
    p.add_argument("--train", type=Path, nargs="+", required=True, help="training manifest(s) or dir(s)")
    p.add_argument("--out", type=Path, required=True, help="directory for dict.txt and train_bpe.model")
    p.add_argument("--spm-vocab-size", type=int, default=300)
    p.add_argument("--check", type=Path, nargs="*", default=[],
                   help="manifest(s) whose text must encode without <unk> (e.g. dev, eval)")
    p.set_defaults(run=_tokenizer)
    return parser


def main(argv: list[str] | None = None) -> None:
    from optimize.errors import OptimizeError

    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except OptimizeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
