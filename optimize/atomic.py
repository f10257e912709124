"""Outputs that appear complete or not at all: a temp name, then one rename.

Every writer of a pair or a report goes through here, so "never half-written" has one
implementation: a directory is built under `<dst>.tmp` and `os.replace`d onto `dst`
(the old `dst`, if any, is removed first: a directory rename cannot overwrite a
non-empty one); a file is written to `<name>.tmp` beside it and renamed. A failure
leaves `dst` as it was, apart from an old `dst` already removed, and no `.tmp` behind.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


def temp_path(dst: Path) -> Path:
    """Where `dst` is built before it is renamed into place: `<dst>.tmp` in the same directory (same filesystem)."""
    dst = Path(dst)
    return dst.with_name(dst.name + ".tmp")


def replace_dir(tmp: Path, dst: Path) -> None:
    """Put the finished directory `tmp` in place of `dst` (one rename)."""
    tmp, dst = Path(tmp), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dst)


@contextmanager
def staged_dir(dst: Path) -> Iterator[Path]:
    """Yield an empty `<dst>.tmp` to fill; on success it becomes `dst`, on an exception it is removed."""
    tmp = temp_path(dst)
    shutil.rmtree(tmp, ignore_errors=True)  # a stale one from a killed run
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_files(files: Iterable[Path], dst: Path) -> Path:
    """Publish copies of `files` as the directory `dst` (the sources are only read)."""
    with staged_dir(dst) as tmp:
        for f in files:
            shutil.copyfile(f, tmp / Path(f).name)
    return Path(dst)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a part."""
    tmp = temp_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)
