"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable


class PetsegError(Exception):
    """A problem the user can fix (bad params, bad input, unreachable source, ...)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message as one line for a one-line error: its first line, or its type when it has none."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM (`kill`, `timeout`, a scheduler) raised in the main process, so temp folders and locks are cleaned up."""


@contextlib.contextmanager
def _sigterm_unwinds():
    if threading.current_thread() is not threading.main_thread():  # Python only lets the main thread set handlers
        yield
        return
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked worker (a pool's, a loader's) dies as it did before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exits_cleanly(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an entry point so user errors print one line and exit non-zero."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            with _sigterm_unwinds():
                return main(*args, **kwargs) or 0
        except PetsegError as err:
            print(f"petseg: error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" writing {err.filename}" if err.filename else ""
            print(f"petseg: error: no space left on the device{where}; free some space and rerun", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("petseg: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Terminated:
            print("petseg: terminated", file=sys.stderr)
            return EXIT_TERMINATED

    return wrapper
