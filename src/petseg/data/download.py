"""Fetch the dataset archives: HTTP(S) with resume, file:// URLs or a local directory; verify checksums."""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError

from petseg import __version__
from petseg.config import OFFICIAL_SOURCE, PrepareConfig
from petseg.data.extract import extract_archive
from petseg.errors import PetsegError
from petseg.progress import progress

ARCHIVES = ("images.tar.gz", "annotations.tar.gz")
OFFICIAL_MD5 = {
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}
CHUNK = 1 << 20
ATTEMPTS = 3
RETRY_WAIT_S = 1.0
TIMEOUT_S = 60
# Far beyond any dataset archive: a server that streams on without end is cut off here, not when the disk is full.
MAX_DOWNLOAD_BYTES = 16 * 2**30


def _resumed_at(resp) -> int | None:
    """Where a 206 answer's body starts by its Content-Range (-1: unreadable), or None for a whole file."""
    if resp.status != 206:
        return None
    first = (resp.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
    return int(first) if first.isdigit() else -1


def _receive(resp, writer, bar, url: str, start: int) -> None:
    """The body into ``writer``; an endless stream or a full disk is one error, not retried."""
    received = start
    while block := resp.read(CHUNK):
        received += len(block)
        if received > MAX_DOWNLOAD_BYTES:
            writer.truncate(0)  # nothing of it is worth keeping
            raise PetsegError(
                f"{url}: the server sent over {MAX_DOWNLOAD_BYTES / 2**20:g} MiB, more than any dataset archive; "
                "refused (check prepare.source)"
            )
        try:
            writer.write(block)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                kept = received - len(block)
                raise PetsegError(f"{url}: disk full after {kept} bytes; free space and rerun to resume") from None
            raise
        bar.update(len(block))


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "md5" or "sha256"
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algorithm, _, hexdigest = text.rpartition(":")
        algorithm = algorithm or ("md5" if len(hexdigest) == 32 else "sha256")
        return cls(algorithm.lower(), hexdigest.lower())


def expected_checksum(cfg: PrepareConfig, archive: str) -> Checksum | None:
    """The user's checksum if given, else the official md5 when the source is the official site."""
    if archive in cfg.checksums:
        return Checksum.parse(cfg.checksums[archive])
    if cfg.source.rstrip("/") == OFFICIAL_SOURCE:
        return Checksum("md5", OFFICIAL_MD5[archive])
    return None


def file_digests(path: Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _local_path(source: str) -> Path | None:
    """The directory a source names, or None for an http(s) URL."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise PetsegError(
            f"prepare.source: unsupported scheme {parsed.scheme!r} (use http(s)://, file:// or a directory)"
        )
    return Path(source).expanduser()


def public_source(source: str) -> str:
    """The source as safe to record: no credentials in URLs, no absolute machine paths."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        netloc = parsed.hostname or ""
        if parsed.port:
            netloc += f":{parsed.port}"
        return urllib.parse.urlunparse(parsed._replace(netloc=netloc))
    path = _local_path(source)
    return f"local:{path.name}" if path is not None and path.is_absolute() else source


def _copy_local(src: Path, part: Path) -> None:
    if not src.is_file():
        raise PetsegError(f"prepare.source: {src} not found (the directory must hold {' and '.join(ARCHIVES)})")
    with src.open("rb") as reader, part.open("wb") as writer:
        bar = progress(total=src.stat().st_size, desc=f"copy {src.name}", unit="B", unit_scale=True)
        while block := reader.read(CHUNK):
            writer.write(block)
            bar.update(len(block))
        bar.close()


def _http_download(url: str, part: Path) -> None:
    """Download to ``part``, resuming from its current size with an HTTP Range request."""
    last_error: Exception | None = None
    for attempt in range(ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": f"petseg/{__version__}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as resp:
                if have and _resumed_at(resp) not in (None, have):  # not the rest of our part: start over
                    part.unlink()
                    raise http.client.HTTPException(f"the server resumed at {resp.headers.get('Content-Range')}")
                resumed = have > 0 and resp.status == 206
                length = int(resp.headers.get("Content-Length") or 0)
                start = have if resumed else 0
                free = shutil.disk_usage(part.parent).free
                if length > free:
                    raise PetsegError(
                        f"{part.parent}: {length / 1e9:.2f} GB to download but only {free / 1e9:.2f} GB free"
                    )
                with part.open("ab" if resumed else "wb") as writer:
                    bar = progress(
                        total=(start + length) or None,
                        initial=start,
                        desc=f"download {part.stem}",
                        unit="B",
                        unit_scale=True,
                    )
                    _receive(resp, writer, bar, url, start)
                    bar.close()
                if length and part.stat().st_size != start + length:
                    raise http.client.IncompleteRead(b"", start + length - part.stat().st_size)
            return
        except HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the partial file is already whole
                return
            if err.code < 500:
                raise PetsegError(f"{url}: HTTP {err.code} {err.reason} (check prepare.source)") from None
            last_error = err
        except (URLError, OSError, http.client.HTTPException) as err:
            last_error = err
        if attempt + 1 < ATTEMPTS:
            time.sleep(RETRY_WAIT_S * 2**attempt)
    got = part.stat().st_size if part.exists() else 0
    reason = getattr(last_error, "reason", None) or last_error or "unknown error"
    hint = "rerun to resume"
    if isinstance(last_error, URLError) and not isinstance(last_error, HTTPError):
        hint += "; offline? point prepare.source at a local copy of the two archives (the default, sample, is bundled)"
    raise PetsegError(f"{url}: download failed after {ATTEMPTS} attempts ({reason}); {got} bytes kept, {hint}")


def source_stamp(location: str) -> dict | None:
    """What identifies the archive at ``location`` now: size and mtime of a local file, ETag and length over HTTP.
    None when it cannot be told (a server without HEAD, no network): the cached copy is then trusted."""
    local = _local_path(location)
    if local is not None:
        try:
            stat = local.stat()
        except OSError:
            return None
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    request = urllib.request.Request(location, method="HEAD", headers={"User-Agent": f"petseg/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            stamp = {"etag": resp.headers.get("ETag"), "length": resp.headers.get("Content-Length")}
    except (URLError, OSError, http.client.HTTPException, ValueError):
        return None
    return stamp if any(stamp.values()) else None


def discard_archive(raw_dir: Path, archive: str) -> Path:
    """An archive that failed extraction is never served from the cache again: moved to ``<archive>.bad``."""
    bad = raw_dir / f"{archive}.bad"
    (raw_dir / f"{archive}.json").unlink(missing_ok=True)
    if (raw_dir / archive).exists():
        os.replace(raw_dir / archive, bad)
    return bad


def fetch_archive(source: str, archive: str, raw_dir: Path, expected: Checksum | None) -> tuple[Path, dict[str, str]]:
    """Put ``archive`` from ``source`` into ``raw_dir``, verified; return its path and digests.

    A finished archive whose record says it came from the same source, unchanged there since (size and mtime, or
    ETag and length), and matching ``expected`` is reused. A checksum mismatch moves the file to ``<archive>.bad``
    so that a rerun downloads it again, and raises.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    dest, part, record = raw_dir / archive, raw_dir / f"{archive}.part", raw_dir / f"{archive}.json"
    location = source.rstrip("/") + "/" + archive
    stamp = source_stamp(location)
    if dest.exists() and record.exists():
        saved = json.loads(record.read_text())
        if (
            saved.get("source") == location
            and (stamp is None or saved.get("stamp") in (None, stamp))
            and (expected is None or saved.get("digests", {}).get(expected.algorithm) == expected.hexdigest)
        ):
            return dest, saved["digests"]

    local_dir = _local_path(source.rstrip("/"))
    if local_dir is not None:
        _copy_local(local_dir / archive, part)
    else:
        _http_download(location, part)

    digests = file_digests(part)
    if expected is not None and digests[expected.algorithm] != expected.hexdigest:
        bad = raw_dir / f"{archive}.bad"
        os.replace(part, bad)
        raise PetsegError(
            f"{archive}: {expected.algorithm} mismatch: expected {expected.hexdigest}, got "
            f"{digests[expected.algorithm]}; moved to {bad}. Check prepare.source / prepare.checksums and rerun "
            "to download it again"
        )
    os.replace(part, dest)
    record.write_text(json.dumps({"source": location, "stamp": stamp, "digests": digests}, indent=2))
    return dest, digests


def fetch_and_extract(cfg: PrepareConfig, archive: str, raw_dir: Path) -> Path:
    """The verified archive from ``cfg.source``, extracted under ``raw_dir``; an archive refused by the extraction
    (hostile members, unreadable) is discarded, so that the next run fetches it again."""
    path, digests = fetch_archive(cfg.source, archive, raw_dir, expected_checksum(cfg, archive))
    try:
        return extract_archive(path, raw_dir / archive.removesuffix(".tar.gz"), digests["sha256"])
    except PetsegError:
        discard_archive(raw_dir, archive)
        raise
