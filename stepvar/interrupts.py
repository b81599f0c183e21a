"""SIGTERM (what `kill`, timeouts and schedulers send) stops a run the way Ctrl-C does.

Python's default SIGTERM ends the process at once, skipping every `finally`: a bench would then
leave its last report marked "running". Raised as KeyboardInterrupt instead, it runs the same
clean-up as Ctrl-C (the report is marked interrupted, temporary files are removed, locks freed).
SIGKILL cannot be caught; what survives it is what was already renamed into place.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


def _raise_interrupt(signum, frame):  # noqa: ARG001 - the signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the body, SIGTERM raises KeyboardInterrupt (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
