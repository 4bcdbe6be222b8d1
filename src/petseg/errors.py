"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable


class PetsegError(Exception):
    """A problem the user can fix (bad params, bad input, unreachable source, ...)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message as one line for a one-line error: its first line, or its type when it has none."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def exits_cleanly(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an entry point so user errors print one line and exit non-zero."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
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

    return wrapper
