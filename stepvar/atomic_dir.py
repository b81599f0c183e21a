"""Replace a whole directory or nothing: build the new one beside it, then swap the two names.

`atomic_directory(path)` yields an empty directory next to `path`; when the body succeeds its
files are flushed to disk and it takes `path`'s place. On Linux the swap is one
renameat2(RENAME_EXCHANGE) call, so at every instant `path` is either the complete old
directory or the complete new one, whatever kills the process. Elsewhere (or on a file system
without the exchange) it is two renames, old aside then new in, and a kill between them leaves
no directory at `path` but both complete copies beside it (hidden, named `.NAME.xxxxxxxx.old`
and `.new`). The replaced copy is deleted afterwards; a copy left by a kill is deleted by the
next writer that holds the output's lock (stepvar.run_lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import StepvarError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap the names a and b in one step; False where the system cannot (then nothing changed)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here; fall back
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(directory: Path) -> None:
    for p in directory.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _swap_in(new: Path, path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        os.rename(new, path)
    elif exchange(new, path):
        shutil.rmtree(new)  # it now holds the old contents
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rename(path, old)  # replaces the empty placeholder
        os.rename(new, path)
        shutil.rmtree(old)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh directory beside `path`; if the body succeeds it replaces `path` whole."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise StepvarError(f"{path} exists and is not a directory")
    parent = path.parent
    if not parent.is_dir():
        raise StepvarError(f"output directory does not exist: {parent}")
    try:
        new = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".new", dir=parent))
    except OSError as exc:
        raise StepvarError(f"cannot write beside {path}: {exc.strerror}") from None
    try:
        yield new
        os.chmod(new, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like any directory
        _fsync_tree(new)
        _swap_in(new, path)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
