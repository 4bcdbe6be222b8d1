"""Progress bars: tqdm on stderr, quiet when stderr is not a terminal unless PETSEG_PROGRESS=1."""

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
