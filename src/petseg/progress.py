"""Progress: tqdm bars on stderr, quiet when stderr is not a terminal unless PETSEG_PROGRESS=1; lines on stdout."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Any = None, quiet: bool = False, **kwargs: Any) -> tqdm:
    forced = os.environ.get("PETSEG_PROGRESS")
    disable = quiet or (forced == "0" if forced is not None else not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=disable, file=sys.stderr, **kwargs)


def progress_line(message: str) -> None:
    """One line of progress on stdout, flushed: a log file or DVC's pipe shows it when it happens, not at exit."""
    print(message, flush=True)
