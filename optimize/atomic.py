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
from typing import Iterable, Iterator, Mapping


def temp_path(dst: Path) -> Path:
    """Where `dst` is built before it is renamed into place: `<dst>.tmp` in the same directory (same filesystem)."""
    dst = Path(dst)
    return dst.with_name(dst.name + ".tmp")


def replace_dir(tmp: Path, dst: Path) -> None:
    """Put the finished directory `tmp` in place of `dst`; `tmp` is gone afterwards.

    A reader sees the old `dst` or the new one, never a mix or nothing: on Linux the two
    directories swap in one rename (renameat2 RENAME_EXCHANGE), then the old one is
    deleted; elsewhere the old one is renamed aside first, so a crash between the two
    renames leaves it in `<dst>.old` rather than deleted.
    """
    tmp, dst = Path(tmp), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.replace(tmp, dst)
        return
    if _exchange(tmp, dst):
        shutil.rmtree(tmp)
        return
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import ctypes.util
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2  # fcntl.h, linux/fs.h
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system without RENAME_EXCHANGE
        return False
    raise OSError(err, os.strerror(err), str(b))


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


def copy_files(files: Iterable[Path], dst: Path, names: Mapping[str, str] | None = None) -> Path:
    """Publish copies of `files` as the directory `dst` (the sources are only read), renamed by `names`."""
    names = names or {}
    with staged_dir(dst) as tmp:
        for f in files:
            shutil.copyfile(f, tmp / names.get(Path(f).name, Path(f).name))
    return Path(dst)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a part."""
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no partial temp file
