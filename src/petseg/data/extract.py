"""Safe archive extraction: tarfile's "data" filter, into a temp dir renamed into place."""

from __future__ import annotations

import gzip
import json
import tarfile
import zlib
from pathlib import Path

from petseg.errors import PetsegError
from petseg.fileio import atomic_dir
from petseg.progress import progress

MARKER = ".petseg-extracted.json"


def extract_archive(archive: Path, dest: Path, sha256: str) -> Path:
    """Extract ``archive`` into ``dest``; reuse ``dest`` if it holds this exact archive already.

    Members that would land outside ``dest`` (``../``, absolute paths, links pointing out) are
    refused by the ``data`` filter; nothing half-extracted is ever left at ``dest``.
    """
    marker = dest / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("sha256") == sha256:
        return dest
    with atomic_dir(dest) as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in progress(tar, desc=f"extract {archive.name}", unit=" files"):
                    if member.name.startswith(("/", "\\")):
                        # The data filter would quietly strip the slash; an absolute name is a red flag.
                        raise tarfile.AbsolutePathError(member)
                    tar.extract(member, tmp, filter="data")
        except tarfile.FilterError as err:
            raise PetsegError(
                f"{archive}: refused unsafe member {err.tarinfo.name!r} ({err}); the archive is not trustworthy"
            ) from None
        except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise PetsegError(
                f"{archive}: not a readable tar.gz ({err}); delete it and rerun to download it again"
            ) from None
        except OSError as err:
            raise PetsegError(f"{dest}: cannot extract {archive.name} there ({err.strerror or err})") from None
        (tmp / MARKER).write_text(json.dumps({"archive": archive.name, "sha256": sha256}))
    return dest
