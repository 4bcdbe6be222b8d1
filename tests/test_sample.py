"""The bundled sample: rebuilt from the official archives byte for byte, small, attributed, and what prepare reads."""

from __future__ import annotations

import hashlib
import tarfile

from helpers import REPO, make_tree, pack
from PIL import Image

from petseg.cli import main as petseg_main
from petseg.config import load_params
from petseg.data.cache import prepare_dataset
from petseg.data.download import ARCHIVES
from petseg.data.extract import extract_archive

SAMPLE = REPO / "sample"


def test_the_same_archives_give_the_same_bytes_and_photos_stay_small(tmp_path, capsys):
    tree = tmp_path / "tree"
    make_tree(tree, per_breed=6, test_per_breed=2)
    for photo in (tree / "images").glob("Persian_*.jpg"):  # larger than the sample's side, and one not RGB
        Image.open(photo).resize((400, 300)).convert("L").save(photo, format="PNG")  # a PNG named .jpg, as in the wild
    pack(tree, tmp_path / "official")
    for out in ("a", "b"):
        assert petseg_main(["sample", "--source", str(tmp_path / "official"), "--out", str(tmp_path / out)]) == 0
    assert "sample: 16 photos" in capsys.readouterr().out
    for name in (*ARCHIVES, "SHA256SUMS", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with tarfile.open(tmp_path / "a" / "images.tar.gz") as tar:
        sizes = [Image.open(tar.extractfile(m)).size for m in tar.getmembers() if m.isfile()]
    assert len(sizes) == 16 and max(max(size) for size in sizes) == 256  # the 400 px photos, downscaled


def test_per_breed_keeps_the_first_photos_of_each_breed_and_filters_the_lists(tmp_path, synthetic_archives):
    args = ["sample", "--source", str(synthetic_archives[0]), "--out", str(tmp_path / "s"), "--per-breed", "2"]
    assert petseg_main(args) == 0
    tree = extract_archive(tmp_path / "s" / "annotations.tar.gz", tmp_path / "x", "d") / "annotations"
    listed = {name: (tree / name).read_text().split("\n") for name in ("trainval.txt", "test.txt")}
    names = {
        name: [line.split()[0] for line in lines if line and not line.startswith("#")] for name, lines in listed.items()
    }
    assert names == {
        "trainval.txt": ["Persian_1", "Persian_10", "beagle_1", "beagle_10"],  # by name, as the sample sorts them
        "test.txt": ["Persian_13", "Persian_14", "beagle_13", "beagle_14"],
    }


def test_the_committed_sample_is_attributed_small_and_prepares(tmp_path):
    sums = dict(line.split()[::-1] for line in (SAMPLE / "SHA256SUMS").read_text().splitlines())
    for archive in ARCHIVES:
        assert hashlib.sha256((SAMPLE / archive).read_bytes()).hexdigest() == sums[archive]
    assert sum((SAMPLE / name).stat().st_size for name in ARCHIVES) < 8 * 2**20
    readme = (SAMPLE / "README.md").read_text()
    assert "CC BY-SA 4.0" in readme and "Parkhi" in readme
    trees = {archive: extract_archive(SAMPLE / archive, tmp_path / archive, "sample") for archive in ARCHIVES}
    cfg = load_params(REPO / "params.yaml").prepare
    report = prepare_dataset(
        trees["images.tar.gz"] / "images", trees["annotations.tar.gz"] / "annotations", tmp_path / "prepared", cfg
    )
    assert report["skipped_count"] == 0 and report["counts"]["test"] == 198
    assert set(report["species"]["test"]) == {"cat", "dog"}
