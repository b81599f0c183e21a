"""One writer per output: a lock file holding the writer's PID, so two runs never share an --out.

`bench`, `compare` and `train` hold `output_lock(out_dir)` while they write into a directory;
`train export` holds `output_lock(parent, name)` while it replaces an export directory. A second
run on the same output is refused with one line naming the PID that holds it.

The lock is a `flock` on the lock file (POSIX): the kernel drops it when its holder dies, even
by SIGKILL, so a lock file left by a killed run is stale by construction and the next run takes
it over (and says so). Where `fcntl` is missing, the PID alone decides: a lock whose PID is not
running is stale.

Whoever holds the lock is the only writer, so temporary files that `stepvar.io.atomic_path`
left behind when an earlier run was killed mid-write are removed then (they were never renamed
into place, so nothing finished is lost).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import StepvarError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = ".stepvar.lock"
_PROBE_RETRIES = 5
# What atomic_path, atomic_directory and the writability probe of io.check_output_path name their
# temporaries: "." + name + "." + mkstemp's 8 characters.
_STALE_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|new|old|probe)$")


class OutputLocked(StepvarError):
    """Another live run is writing this output."""


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def _flock_briefly(fd: int) -> bool:
    """Take the exclusive lock, retrying for a moment: check_unlocked's probe holds it for microseconds."""
    for attempt in range(_PROBE_RETRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            time.sleep(0.01 * (attempt + 1))
    return False


def _acquire_flock(lock: Path, what: str) -> tuple[int, int | None]:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock_briefly(fd):
            os.close(fd)
            holder = _read_pid(lock)
            raise OutputLocked(f"{what} is being written by another stepvar run (pid {holder or '?'}); "
                               "wait for it to finish or choose another output") from None
        # The previous holder unlinks the file as it releases it: if it did so between our open and
        # our flock, we hold a lock on a name that no longer exists. Start again on the new file.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, _read_pid(lock)
        os.close(fd)


def _acquire_pid_only(lock: Path, what: str) -> tuple[int, int | None]:  # pragma: no cover - not POSIX
    previous = None
    for _ in range(2):
        try:
            return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), previous
        except FileExistsError:
            previous = _read_pid(lock)
            if previous is not None and _pid_running(previous):
                raise OutputLocked(f"{what} is being written by another stepvar run (pid {previous}); "
                                   "wait for it to finish or choose another output") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
    raise OutputLocked(f"{what}: could not take its lock {lock}")


def check_unlocked(directory: str | os.PathLike, name: str | None = None) -> None:
    """Refuse early (before any work) an output a live run holds; takes nothing."""
    directory = Path(directory)
    lock = directory / (LOCK_NAME if name is None else f".{name}.lock")
    what = str(directory if name is None else directory / name)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return  # no lock file (or none we can read): output_lock decides when the run starts
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                held = True
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                held = False
        else:  # pragma: no cover - not POSIX
            pid = _read_pid(lock)
            held = pid is not None and _pid_running(pid)
    finally:
        os.close(fd)
    if held:
        raise OutputLocked(f"{what} is being written by another stepvar run (pid {_read_pid(lock) or '?'}); "
                           "wait for it to finish or choose another output")


def remove_stale_temporaries(directory: Path, stem: str | None = None) -> list[Path]:
    """Delete the temporaries a killed writer left in `directory` (call only while holding its lock).

    `stem`: only those of that output name (an export directory's siblings), else every one.
    """
    removed = []
    for p in directory.iterdir():
        if not _STALE_TEMP.match(p.name) or (stem is not None and not p.name.startswith(f".{stem}.")):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.is_file():
                p.unlink()
            else:
                continue
        except OSError:
            continue
        removed.append(p)
    return removed


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike, name: str | None = None,
                on_note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock of output directory `directory` (or, with `name`, of `directory/name`, with the
    lock file beside it) for the body; refuse with OutputLocked if a live run holds it."""
    directory = Path(directory)
    lock = directory / (LOCK_NAME if name is None else f".{name}.lock")
    what = str(directory if name is None else directory / name)
    try:
        fd, previous = (_acquire_flock if fcntl is not None else _acquire_pid_only)(lock, what)
    except OSError as exc:
        raise StepvarError(f"cannot lock {what} ({lock}): {exc.strerror}") from None
    say = on_note or (lambda msg: None)
    try:
        if previous is not None and previous != os.getpid():
            say(f"took over the lock on {what} left by pid {previous}, which is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        removed = remove_stale_temporaries(directory, name)
        if removed:
            say(f"removed {len(removed)} unfinished temporary file(s) a killed run left in {directory}")
        yield directory if name is None else directory / name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # before the release: a waiting run then re-opens a fresh file
        os.close(fd)
