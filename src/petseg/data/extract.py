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
# Bounds checked from each member's header before a byte of it is written (a gzip bomb of 9 MB can hold 2 GB).
MAX_MEMBER_BYTES = 64 * 2**20  # the largest official photo is a few MB
MAX_TOTAL_BYTES = 8 * 2**30  # the official images archive unpacks to under 1 GB
MAX_RATIO = 50  # unpacked / packed bytes: photos and PNG trimaps hardly compress ...
RATIO_FREE_BYTES = 256 * 2**20  # ... but tiny files do (tar pads each to 512 bytes): the ratio counts beyond this


def check_member(archive: Path, member: tarfile.TarInfo, total: int, limit: int) -> None:
    """Refuse ``member`` by its header: absolute names, and sizes past the bounds (``total`` includes it)."""
    if member.name.startswith(("/", "\\")):
        # The data filter would quietly strip the slash; an absolute name is a red flag.
        raise tarfile.AbsolutePathError(member)
    if member.size > MAX_MEMBER_BYTES:
        raise PetsegError(
            f"{archive}: refused member {member.name!r} of {member.size / 2**20:.0f} MiB (the limit for one file is "
            f"{MAX_MEMBER_BYTES // 2**20} MiB); the archive is not the dataset's"
        )
    if total > limit:
        raise PetsegError(
            f"{archive}: refused: it unpacks to more than {limit / 2**20:.0f} MiB (at most {MAX_RATIO}x its "
            f"packed size beyond {RATIO_FREE_BYTES // 2**20} MiB, and {MAX_TOTAL_BYTES // 2**30} GiB in all); "
            "the archive is not the dataset's"
        )


def extract_archive(archive: Path, dest: Path, sha256: str) -> Path:
    """Extract ``archive`` into ``dest``; reuse ``dest`` if it holds this exact archive already.

    Members that would land outside ``dest`` (``../``, absolute paths, links pointing out) are
    refused by the ``data`` filter; nothing half-extracted is ever left at ``dest``.
    """
    marker = dest / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("sha256") == sha256:
        return dest
    limit = min(MAX_TOTAL_BYTES, RATIO_FREE_BYTES + MAX_RATIO * archive.stat().st_size)
    with atomic_dir(dest) as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                total = 0
                for member in progress(tar, desc=f"extract {archive.name}", unit=" files"):
                    total += member.size
                    check_member(archive, member, total, limit)
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
