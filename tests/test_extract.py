from __future__ import annotations

import shutil
import tarfile

import pytest
from helpers import add_member

from petseg.data.extract import extract_archive
from petseg.errors import PetsegError


@pytest.fixture
def archive(tmp_path, synthetic_archives):
    path = tmp_path / "annotations.tar.gz"
    shutil.copy(synthetic_archives[0] / "annotations.tar.gz", path)
    return path


def test_extracts_into_place_and_reuses(tmp_path, archive):
    dest = extract_archive(archive, tmp_path / "out" / "annotations", "digest-1")
    assert (dest / "annotations" / "trainval.txt").is_file()
    (dest / "annotations" / "trainval.txt").unlink()
    extract_archive(archive, dest, "digest-1")
    assert not (dest / "annotations" / "trainval.txt").exists()  # same archive: not extracted again
    extract_archive(archive, dest, "digest-2")
    assert (dest / "annotations" / "trainval.txt").is_file()  # another archive: replaced whole


@pytest.mark.parametrize(
    ("name", "kind", "linkname"),
    [
        ("../escaped.txt", tarfile.REGTYPE, ""),
        ("annotations/../../escaped.txt", tarfile.REGTYPE, ""),
        ("/tmp/petseg-absolute-escape.txt", tarfile.REGTYPE, ""),
        ("annotations/evil-link", tarfile.SYMTYPE, "../../../../etc/passwd"),
        ("annotations/abs-link", tarfile.SYMTYPE, "/etc/passwd"),
    ],
)
def test_hostile_members_are_refused_and_nothing_escapes(tmp_path, archive, name, kind, linkname):
    add_member(archive, name, kind=kind, linkname=linkname)
    dest = tmp_path / "box" / "out"
    with pytest.raises(PetsegError, match=rf"refused unsafe member '{name}'"):
        extract_archive(archive, dest, "x")
    assert not dest.exists()
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == []  # temp dir cleaned up
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "box" / "escaped.txt").exists()


def test_corrupt_archive_is_a_clear_error(tmp_path, archive):
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(PetsegError, match="not a readable tar.gz .* delete it and rerun"):
        extract_archive(archive, tmp_path / "out", "x")
    assert not (tmp_path / "out").exists()


def test_an_archive_bomb_is_refused_by_its_headers_before_a_byte_is_written(tmp_path, archive, monkeypatch):
    import gzip

    bomb = tmp_path / "images.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("images/huge.jpg")
        info.size = 200 * 2**20  # 200 MiB of zeros packs to about 200 KiB

        class Zeros:
            def read(self, n):
                return bytes(n)

        tar.addfile(info, Zeros())
    assert bomb.stat().st_size < 2**20
    with pytest.raises(PetsegError, match=r"refused member 'images/huge.jpg' of 200 MiB \(the limit for one file"):
        extract_archive(bomb, tmp_path / "out", "digest")
    assert not (tmp_path / "out").exists()
    # The members now add up past the ratio. Not 1x: the small synthetic archive unpacks to about its packed size, a
    # few bytes either way depending on the tar headers' timestamps.
    monkeypatch.setattr("petseg.data.extract.RATIO_FREE_BYTES", 0)
    monkeypatch.setattr("petseg.data.extract.MAX_RATIO", 0.5)
    with pytest.raises(PetsegError, match=r"refused: it unpacks to more than .* MiB \(at most 0.5x its packed size"):
        extract_archive(archive, tmp_path / "out2", "digest")
    assert not (tmp_path / "out2").exists()
