from __future__ import annotations

import errno
import hashlib
import shutil

import pytest
from helpers import RangeServer, add_member, prepare_config

from petseg.config import OFFICIAL_SOURCE
from petseg.data import download
from petseg.data.download import (
    Checksum,
    expected_checksum,
    fetch_and_extract,
    fetch_archive,
    file_digests,
    public_source,
)
from petseg.errors import PetsegError


@pytest.fixture
def served(tmp_path, synthetic_archives):
    archives, digests = synthetic_archives
    with RangeServer(archives) as server:
        yield server, archives, digests


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)


def test_http_download_verifies_and_is_not_repeated(tmp_path, served):
    server, archives, digests = served
    raw = tmp_path / "raw"
    expected = Checksum("sha256", digests["images.tar.gz"])
    path, got = fetch_archive(server.url, "images.tar.gz", raw, expected)
    assert path.read_bytes() == (archives / "images.tar.gz").read_bytes()
    assert got["sha256"] == digests["images.tar.gz"]
    fetch_archive(server.url, "images.tar.gz", raw, expected)
    assert len(server.requests) == 1  # the finished, verified archive is reused


def test_resumes_a_partial_download_with_range(tmp_path, served):
    server, archives, digests = served
    raw = tmp_path / "raw"
    raw.mkdir()
    data = (archives / "images.tar.gz").read_bytes()
    (raw / "images.tar.gz.part").write_bytes(data[: len(data) // 3])
    path, got = fetch_archive(server.url, "images.tar.gz", raw, Checksum("sha256", digests["images.tar.gz"]))
    assert server.requests == [{"path": "/images.tar.gz", "range": f"bytes={len(data) // 3}-"}]
    assert path.read_bytes() == data


def test_dropped_connection_is_resumed_within_the_run(tmp_path, served):
    server, archives, digests = served
    server.drop_after, server.drops_left = 5000, 2
    path, _ = fetch_archive(server.url, "images.tar.gz", tmp_path, Checksum("sha256", digests["images.tar.gz"]))
    assert path.read_bytes() == (archives / "images.tar.gz").read_bytes()
    assert [r["range"] for r in server.requests] == [None, "bytes=5000-", "bytes=10000-"]


def test_interrupted_download_fails_clearly_then_rerun_resumes(tmp_path, served):
    server, archives, digests = served
    server.drop_after, server.drops_left = 4000, download.ATTEMPTS
    expected = Checksum("sha256", digests["images.tar.gz"])
    with pytest.raises(PetsegError, match=r"download failed after 3 attempts .*12000 bytes kept, rerun to resume"):
        fetch_archive(server.url, "images.tar.gz", tmp_path, expected)
    assert (tmp_path / "images.tar.gz.part").stat().st_size == 12000
    assert not (tmp_path / "images.tar.gz").exists()
    path, _ = fetch_archive(server.url, "images.tar.gz", tmp_path, expected)
    assert server.requests[-1]["range"] == "bytes=12000-"
    assert path.read_bytes() == (archives / "images.tar.gz").read_bytes()


def test_checksum_mismatch_quarantines_and_rerun_downloads_again(tmp_path, served):
    server, archives, digests = served
    wrong = Checksum("md5", "0" * 32)
    real_md5 = hashlib.md5((archives / "annotations.tar.gz").read_bytes()).hexdigest()
    with pytest.raises(PetsegError) as err:
        fetch_archive(server.url, "annotations.tar.gz", tmp_path, wrong)
    message = str(err.value)
    assert message.startswith("annotations.tar.gz: md5 mismatch")
    assert f"expected {'0' * 32}, got {real_md5}" in message
    assert not (tmp_path / "annotations.tar.gz").exists()
    assert (tmp_path / "annotations.tar.gz.bad").exists()
    fetch_archive(server.url, "annotations.tar.gz", tmp_path, Checksum("md5", real_md5))
    assert len(server.requests) == 2  # downloaded again, not taken from the bad copy


def test_an_endless_stream_is_cut_off_and_not_kept(tmp_path, served, monkeypatch):
    server, _, _ = served
    server.endless = True
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 3 * download.CHUNK)
    with pytest.raises(PetsegError, match=r"/images.tar.gz: the server sent over 3 MiB, more than any dataset archive"):
        fetch_archive(server.url, "images.tar.gz", tmp_path, None)
    assert len(server.requests) == 1  # refused, not retried
    assert (tmp_path / "images.tar.gz.part").stat().st_size == 0 and not (tmp_path / "images.tar.gz").exists()


def test_a_resume_answered_from_another_offset_starts_over(tmp_path, served):
    server, archives, digests = served
    server.resume_from_zero = True  # the whole file again, labelled as the rest of it
    data = (archives / "images.tar.gz").read_bytes()
    (tmp_path / "images.tar.gz.part").write_bytes(data[:5000])
    path, _ = fetch_archive(server.url, "images.tar.gz", tmp_path, Checksum("sha256", digests["images.tar.gz"]))
    assert path.read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=5000-", None]


def test_a_full_disk_is_one_line_and_keeps_what_arrived(tmp_path, served, monkeypatch):
    server, _, _ = served
    real_open = download.Path.open

    def filling(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if path.name.endswith(".part") and "b" in mode and mode != "rb":
            writes = handle.write

            def write(block):
                if handle.tell() + len(block) > 6000:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return writes(block)

            handle.write = write
        return handle

    monkeypatch.setattr(download.Path, "open", filling)
    monkeypatch.setattr(download, "CHUNK", 4000)
    with pytest.raises(PetsegError, match=r"^http://\S+/images.tar.gz: disk full after 4000 bytes; free space and"):
        fetch_archive(server.url, "images.tar.gz", tmp_path, None)
    assert len(server.requests) == 1 and (tmp_path / "images.tar.gz.part").stat().st_size == 4000


def test_http_404_is_one_clear_error(tmp_path, served):
    server, _, _ = served
    with pytest.raises(PetsegError, match=r"/missing.tar.gz: HTTP 404 .* \(check prepare.source\)"):
        fetch_archive(server.url, "missing.tar.gz", tmp_path, None)


def test_unreachable_server_is_one_clear_error(tmp_path):
    with pytest.raises(PetsegError, match=r"download failed after 3 attempts") as err:
        fetch_archive("http://127.0.0.1:9", "images.tar.gz", tmp_path, None)
    assert str(err.value).endswith(
        "rerun to resume; offline? point prepare.source at a local copy of the two archives (the default, sample, is "
        "bundled)"
    )


@pytest.mark.parametrize("as_url", [False, True])
def test_local_directory_and_file_url_sources(tmp_path, synthetic_archives, as_url):
    archives, digests = synthetic_archives
    source = archives.as_uri() if as_url else str(archives)
    path, got = fetch_archive(source, "images.tar.gz", tmp_path / "raw", Checksum("sha256", digests["images.tar.gz"]))
    assert got["sha256"] == digests["images.tar.gz"]


def test_local_source_missing_archive(tmp_path):
    with pytest.raises(PetsegError, match=r"prepare.source: .*images.tar.gz not found"):
        fetch_archive(str(tmp_path), "images.tar.gz", tmp_path / "raw", None)


def test_changed_source_is_fetched_again(tmp_path, synthetic_archives):
    archives, _ = synthetic_archives
    other = tmp_path / "other"
    shutil.copytree(archives, other)
    fetch_archive(str(archives), "images.tar.gz", tmp_path / "raw", None)
    record = (tmp_path / "raw" / "images.tar.gz.json").read_text()
    fetch_archive(str(other), "images.tar.gz", tmp_path / "raw", None)
    assert (tmp_path / "raw" / "images.tar.gz.json").read_text() != record


def test_a_changed_archive_at_the_same_local_source_is_fetched_again(tmp_path, synthetic_archives):
    source = tmp_path / "source"
    shutil.copytree(synthetic_archives[0], source)
    _, first = fetch_archive(str(source), "annotations.tar.gz", tmp_path / "raw", None)
    add_member(source / "annotations.tar.gz", "annotations/extra.txt", b"new")
    _, second = fetch_archive(str(source), "annotations.tar.gz", tmp_path / "raw", None)
    assert second != first and second == file_digests(source / "annotations.tar.gz")


def test_a_changed_archive_on_the_server_is_fetched_again(tmp_path, synthetic_archives):
    served = tmp_path / "served"
    shutil.copytree(synthetic_archives[0], served)
    with RangeServer(served) as server:
        _, first = fetch_archive(server.url, "annotations.tar.gz", tmp_path / "raw", None)
        fetch_archive(server.url, "annotations.tar.gz", tmp_path / "raw", None)
        assert [r["path"] for r in server.requests] == ["/annotations.tar.gz"]  # unchanged (same ETag): reused
        add_member(served / "annotations.tar.gz", "annotations/extra.txt", b"new")
        _, second = fetch_archive(server.url, "annotations.tar.gz", tmp_path / "raw", None)
    assert second == file_digests(served / "annotations.tar.gz") != first


def test_an_archive_refused_by_extraction_is_not_served_from_the_cache(tmp_path, synthetic_archives):
    source = tmp_path / "source"
    shutil.copytree(synthetic_archives[0], source)
    good = (source / "annotations.tar.gz").read_bytes()
    add_member(source / "annotations.tar.gz", "../evil.txt", b"evil")
    cfg = prepare_config(source=str(source))
    with pytest.raises(PetsegError, match="refused unsafe member '../evil.txt'"):
        fetch_and_extract(cfg, "annotations.tar.gz", tmp_path / "raw")
    assert not (tmp_path / "raw" / "annotations.tar.gz").exists()
    assert (tmp_path / "raw" / "annotations.tar.gz.bad").exists() and not (tmp_path / "evil.txt").exists()
    (source / "annotations.tar.gz").write_bytes(good)  # the user puts the good archive back
    tree = fetch_and_extract(cfg, "annotations.tar.gz", tmp_path / "raw")
    assert (tree / "annotations" / "trainval.txt").is_file()


def test_official_source_uses_official_md5_and_user_checksums_win():
    official = prepare_config(source=OFFICIAL_SOURCE)
    assert expected_checksum(official, "images.tar.gz") == Checksum("md5", "5c4f3ee8e5d25df40f4fd59a7f44e54c")
    assert expected_checksum(official, "annotations.tar.gz") == Checksum("md5", "95a8c909bbe2e81eed6a22bccdf3f68f")
    mirror = prepare_config(source="https://mirror.example/pets", checksums={"images.tar.gz": "sha256:" + "a" * 64})
    assert expected_checksum(mirror, "images.tar.gz") == Checksum("sha256", "a" * 64)
    assert expected_checksum(mirror, "annotations.tar.gz") is None
    assert OFFICIAL_SOURCE.startswith("https://")


def test_public_source_hides_credentials_and_machine_paths():
    assert public_source("https://user:secret@host.example:8080/pets") == "https://host.example:8080/pets"
    assert public_source("/home/alice/datasets/pets") == "local:pets"
    assert public_source("../shared/data/oxford-pets-mini") == "../shared/data/oxford-pets-mini"
