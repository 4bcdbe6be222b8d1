from __future__ import annotations

import csv
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from helpers import RangeServer, make_tree, prepare_config, run_stage, write_params
from PIL import Image

from petseg.data.cache import prepare_dataset
from petseg.data.layout import SPLITS, sample_file
from petseg.data.lists import build_splits, parse_list_file, split_trainval
from petseg.data.photos import SampleError, load_sample, to_rgb8
from petseg.errors import PetsegError


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_stage_over_http_end_to_end(tmp_path, synthetic_archives, synthetic_tree):
    archives, digests = synthetic_archives
    with RangeServer(archives) as server:
        params = {
            "prepare": {
                "source": server.url,
                "image_size": 64,
                "checksums": {k: f"sha256:{v}" for k, v in digests.items()},
            }
        }
        write_params(tmp_path, params)
        result = run_stage("prepare", tmp_path, env={"PETSEG_MLFLOW": "0"})
    assert result.returncode == 0, result.stderr
    assert "prepare: train 22, valid 2, test 8 at 64px; skipped 0" in result.stdout
    prepared = tmp_path / "data" / "prepared"
    names = {
        split: [row["name"] for row in read_csv(prepared / f"{split}.csv")] for split in ("train", "valid", "test")
    }
    assert {len(v) for v in names.values()} == {22, 2, 8}
    assert not set(names["train"]) & set(names["valid"])
    assert not (set(names["train"]) | set(names["valid"])) & set(names["test"])
    rows = read_csv(prepared / "train.csv")
    assert {row["species"] for row in rows} == {"cat", "dog"} and {row["breed"] for row in rows} == {
        "Persian",
        "beagle",
    }
    original = Image.open(synthetic_tree / "images" / f"{rows[0]['name']}.jpg")
    assert (int(rows[0]["width"]), int(rows[0]["height"])) == original.size
    images = np.load(prepared / "train_images.npy", mmap_mode="r")
    masks = np.load(prepared / "train_masks.npy", mmap_mode="r")
    assert images.shape == (22, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (22, 64, 64) and set(np.unique(masks)) == {0, 1}
    report = json.loads((tmp_path / "reports" / "prepare.json").read_text())
    assert report["counts"] == {"train": 22, "valid": 2, "test": 8, "total": 32}
    assert report["species"]["test"] == {"cat": 4, "dog": 4}
    assert report["skipped"] == [] and 0.2 < report["foreground_fraction"]["train"] < 0.8


def test_split_is_seeded_disjoint_and_name_based(tmp_path):
    (tmp_path / "trainval.txt").write_text("".join(f"cat_{i} 1 1 1\n" for i in range(100)))
    entries = parse_list_file(tmp_path / "trainval.txt")
    train, valid = split_trainval(entries, 0.1, seed=7)
    assert (len(train), len(valid)) == (90, 10)
    assert not {e.name for e in train} & {e.name for e in valid}
    assert split_trainval(list(reversed(entries)), 0.1, seed=7) == (train, valid)
    assert split_trainval(entries, 0.1, seed=8) != (train, valid)


def test_malformed_list_line_names_file_and_line(tmp_path):
    path = tmp_path / "trainval.txt"
    path.write_text("#comment\nPersian_1 1 1 1\nPersian_2 1 x 1\n")
    with pytest.raises(PetsegError, match=r"trainval.txt:3: malformed line 'Persian_2 1 x 1'"):
        parse_list_file(path)
    path.write_text("Persian_1 1 3 1\n")
    with pytest.raises(PetsegError, match=r"trainval.txt:1: malformed line"):
        parse_list_file(path)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../../../../tmp/evil", "contains a path separator"),
        ("/etc/passwd", "contains a path separator"),
        ("..", "empty or a dot name"),
        ("a..b", "contains '..'"),
        ("C:evil", "a drive path"),
        ("sub\\evil", "contains a path separator"),
        ("evil\x00x", "contains a control character"),
        ("evil\x1bx", "contains a control character"),
    ],
)
def test_a_sample_name_that_could_leave_its_directory_is_refused_with_file_and_line(tmp_path, name, reason):
    path = tmp_path / "test.txt"
    path.write_text(f"Persian_1 1 1 1\n{name} 1 1 1\n")
    with pytest.raises(PetsegError) as err:
        parse_list_file(path)
    assert str(err.value) == f"{path}:2: refused sample name {name!r} ({reason}); a name is a plain file stem"


def test_a_hostile_test_list_writes_nothing_outside_the_project(tmp_path, synthetic_tree):
    tree = tmp_path / "tree"
    shutil.copytree(synthetic_tree, tree)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    with (tree / "annotations" / "test.txt").open("a") as handle:
        handle.write(f"../../../../..{victim.with_suffix('')} 1 1 1\n")
    with pytest.raises(PetsegError, match="test.txt:.*refused sample name"):
        prepare_dataset(tree / "images", tree / "annotations", tmp_path / "prepared", prepare_config(image_size=32))
    assert victim.read_bytes() == b"precious" and not (tmp_path / "prepared").exists()


def test_joining_a_name_to_a_directory_never_leaves_it(tmp_path):
    assert sample_file(tmp_path, "Persian_1", ".png") == tmp_path / "Persian_1.png"
    with pytest.raises(PetsegError, match=r"refused sample name '\.\./x'"):
        sample_file(tmp_path, "../x", ".png")


def test_a_list_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "trainval.txt"
    path.write_bytes(b"Persian_1 1 1 1\nPers\xffian_2 1 1 1\n")
    with pytest.raises(PetsegError, match=r"^.*trainval.txt:2: not UTF-8 text \(byte 0xff at column 5\)$"):
        parse_list_file(path)


def test_a_name_listed_twice_names_both_places(tmp_path):
    path = tmp_path / "trainval.txt"
    path.write_text("Persian_1 1 1 1\nPersian_2 1 1 1\nPersian_1 1 1 1\n")
    with pytest.raises(PetsegError, match=r"trainval.txt:3: Persian_1 is listed twice \(first on line 1\)$"):
        parse_list_file(path)
    (tmp_path / "trainval.txt").write_text("Persian_1 1 1 1\nPersian_2 1 1 1\nPersian_3 1 1 1\n")
    (tmp_path / "test.txt").write_text("beagle_1 2 2 1\nPersian_2 1 1 1\n")
    with pytest.raises(PetsegError, match=r"Persian_2 is listed in both trainval.txt:2 and test.txt:2"):
        build_splits(tmp_path, prepare_config())


@pytest.fixture
def awkward_tree(tmp_path):
    """A tree with every real-world quirk and fault the stage must survive."""
    root = tmp_path / "tree"
    make_tree(root, per_breed=12, test_per_breed=2)
    images, trimaps = root / "images", root / "annotations" / "trimaps"
    data = (images / "Persian_1.jpg").read_bytes()
    (images / "Persian_1.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (images / "Persian_2.jpg").write_bytes(b"")  # zero bytes
    (trimaps / "Persian_3.png").unlink()  # image without trimap
    bad = np.asarray(Image.open(trimaps / "Persian_4.png")).copy()
    bad[0, 0] = 7
    Image.fromarray(bad).save(trimaps / "Persian_4.png")  # value outside {1, 2, 3}
    Image.open(trimaps / "Persian_5.png").resize((20, 20)).save(trimaps / "Persian_5.png")  # size mismatch
    (images / "beagle_1.jpg").unlink()  # trimap without image
    Image.open(images / "Persian_6.jpg").convert("RGBA").save(images / "Persian_6.jpg", format="PNG")
    Image.open(images / "Persian_7.jpg").convert("P").save(images / "Persian_7.jpg", format="GIF")
    Image.open(images / "Persian_8.jpg").convert("L").save(images / "Persian_8.jpg", format="JPEG")
    Image.open(images / "Persian_9.jpg").convert("CMYK").save(images / "Persian_9.jpg", format="JPEG")
    return root


def test_bad_samples_are_skipped_and_listed_and_odd_formats_decoded(tmp_path, awkward_tree):
    cfg = prepare_config(image_size=32)
    out = tmp_path / "prepared"
    report = prepare_dataset(awkward_tree / "images", awkward_tree / "annotations", out, cfg, workers=2)
    reasons = {row["name"]: row["reason"] for row in report["skipped"]}
    assert set(reasons) == {"Persian_1", "Persian_2", "Persian_3", "Persian_4", "Persian_5", "beagle_1"}
    assert reasons["Persian_1"].startswith("image cannot be decoded")
    assert reasons["Persian_2"].startswith("image cannot be decoded")
    assert reasons["Persian_3"] == "trimap missing"
    assert reasons["Persian_4"] == "trimap has values [7] outside {1, 2, 3}"
    assert reasons["Persian_5"].startswith("trimap size 20x20 differs from image")
    assert reasons["beagle_1"] == "image file missing"
    assert report["skipped_count"] == 6
    kept = {row["name"] for split in ("train", "valid", "test") for row in read_csv(out / f"{split}.csv")}
    assert {"Persian_6", "Persian_7", "Persian_8", "Persian_9"} <= kept
    assert report["counts"]["total"] == 28 - 6
    for split in ("train", "valid", "test"):
        assert (
            len(np.load(out / f"{split}_images.npy")) == report["counts"][split] == len(read_csv(out / f"{split}.csv"))
        )


def test_every_cached_row_holds_its_csv_sample_after_skips(tmp_path, awkward_tree):
    # Rows are written by worker processes and compacted around the skipped samples of every split.
    out = tmp_path / "prepared"
    cfg = prepare_config(image_size=32)
    prepare_dataset(awkward_tree / "images", awkward_tree / "annotations", out, cfg, workers=2)
    checked = 0
    for split in SPLITS:
        images, masks = np.load(out / f"{split}_images.npy"), np.load(out / f"{split}_masks.npy")
        for row in read_csv(out / f"{split}.csv"):
            name, index = row["name"], int(row["index"])
            image, mask, width, height = load_sample(
                awkward_tree / "images" / f"{name}.jpg",
                awkward_tree / "annotations" / "trimaps" / f"{name}.png",
                32,
                "pet",
            )
            np.testing.assert_array_equal(images[index], image, err_msg=f"{split} row {index} ({name})")
            np.testing.assert_array_equal(masks[index], mask, err_msg=f"{split} row {index} ({name})")
            assert (int(row["width"]), int(row["height"])) == (width, height)
            checked += 1
    assert checked == 28 - 6


@pytest.mark.parametrize(("boundary", "values"), [("pet", {0, 1}), ("background", {0, 1}), ("ignore", {0, 1, 255})])
def test_boundary_rule(tmp_path, synthetic_tree, boundary, values):
    out = tmp_path / "prepared"
    report = prepare_dataset(
        synthetic_tree / "images",
        synthetic_tree / "annotations",
        out,
        prepare_config(image_size=64, boundary=boundary),
        workers=1,
    )
    masks = np.load(out / "train_masks.npy")
    assert set(np.unique(masks)) == values
    assert report["boundary"] == boundary


def test_boundary_as_pet_has_more_foreground_than_as_background(tmp_path, synthetic_tree):
    fractions = {}
    for boundary in ("pet", "background"):
        report = prepare_dataset(
            synthetic_tree / "images",
            synthetic_tree / "annotations",
            tmp_path / boundary,
            prepare_config(image_size=64, boundary=boundary),
            workers=1,
        )
        fractions[boundary] = report["foreground_fraction"]["train"]
    assert fractions["pet"] > fractions["background"]


def test_real_photos_through_the_whole_stage(tmp_path, real_data):
    sums = dict(line.split()[::-1] for line in (real_data / "SHA256SUMS").read_text().splitlines())
    params = {
        "prepare": {
            "source": real_data.as_uri(),
            "image_size": 64,
            "checksums": {name: f"sha256:{digest}" for name, digest in sums.items()},
        }
    }
    write_params(tmp_path, params)
    result = run_stage("prepare", tmp_path, env={"PETSEG_MLFLOW": "0"})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "reports" / "prepare.json").read_text())
    assert report["counts"] == {"train": 180, "valid": 20, "test": 198, "total": 398}
    assert report["skipped"] == []
    assert report["species"]["test"] == {"cat": 98, "dog": 100}
    prepared = tmp_path / "data" / "prepared"
    test_names = [row["name"] for row in read_csv(prepared / "test.csv")]
    assert "Abyssinian_5" in test_names  # an RGBA PNG named .jpg in the official archive, kept by the sample
    masks = np.load(prepared / "test_masks.npy")
    assert set(np.unique(masks)) == {0, 1}
    index = test_names.index("Abyssinian_5")
    assert np.load(prepared / "test_images.npy")[index].std() > 10  # real content, not a blank
    shutil.rmtree(tmp_path / "data" / "raw")


def test_meta_identifies_the_split_so_training_never_resumes_on_another(tmp_path, synthetic_tree):
    def split_id(seed: int, name: str) -> str:
        prepare_dataset(
            synthetic_tree / "images",
            synthetic_tree / "annotations",
            tmp_path / name,
            prepare_config(image_size=32, seed=seed),
            workers=1,
        )
        return json.loads((tmp_path / name / "meta.json").read_text())["split_lists"]

    assert split_id(1, "a") == split_id(1, "b") != split_id(2, "c")


def _png16(path, pixels: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


GREY = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))  # 32 x 64, every 4th grey level
COLOUR = np.stack([GREY, GREY[::-1], np.full_like(GREY, 90)], axis=-1)


def _mode_cases(folder):
    """(file, expected 8-bit RGB, tolerance) for every mode Pillow opens, each made by hand from GREY/COLOUR."""
    grey_rgb = np.repeat(GREY[..., None], 3, axis=-1)
    cases = {}

    def save(name, image, expected, tolerance=0, **kwargs):
        image.save(folder / name, **kwargs)
        cases[name] = (expected, tolerance)

    save("i16.png", Image.fromarray(GREY.astype(np.uint16) * 257), grey_rgb)
    save("i16b.tiff", Image.frombytes("I;16B", (64, 32), (GREY.astype(">u2") * 257).tobytes()), grey_rgb)
    save("i32_16bit.tiff", Image.fromarray(GREY.astype(np.int32) * 257), grey_rgb)
    save("i32_8bit.tiff", Image.fromarray(GREY.astype(np.int32)), grey_rgb)
    save("f_unit.tiff", Image.fromarray(GREY.astype(np.float32) / 255), grey_rgb)
    save("f_255.tiff", Image.fromarray(GREY.astype(np.float32)), grey_rgb)
    save("la.png", Image.fromarray(np.stack([GREY, np.full_like(GREY, 7)], -1), "LA"), grey_rgb)
    binary = GREY >= 128
    save("one.png", Image.fromarray(binary), np.repeat(np.where(binary, 255, 0)[..., None], 3, -1).astype(np.uint8))
    save("cmyk.tiff", Image.fromarray(COLOUR).convert("CMYK"), COLOUR, 1)
    save("ycbcr.jpg", Image.fromarray(COLOUR).convert("YCbCr"), COLOUR, 12, quality=100)
    _png16(folder / "rgb16.png", COLOUR.astype(np.uint16) * 257)
    cases["rgb16.png"] = (COLOUR, 0)
    return cases


def test_every_pillow_mode_becomes_the_right_8bit_photo(tmp_path):
    trimap = tmp_path / "trimap.png"
    Image.fromarray(np.full(GREY.shape, 1, np.uint8)).save(trimap)
    for name, (expected, tolerance) in _mode_cases(tmp_path).items():
        image, _, width, height = load_sample(tmp_path / name, trimap, 64, "pet")  # 64 x 32 -> 64 x 64: rows double
        assert (width, height) == (64, 32), name
        got = image[::2].astype(int)
        assert np.abs(got - expected.astype(int)).max() <= tolerance + 1, (name, np.abs(got - expected).max())


def test_palette_with_alpha_keeps_its_colours():
    palette = Image.fromarray(COLOUR).convert("P")
    with_alpha = palette.convert("PA")  # no file format stores PA; it arises from decoders
    assert with_alpha.mode == "PA"
    assert np.array_equal(np.asarray(to_rgb8(with_alpha)), np.asarray(palette.convert("RGB")))


def test_a_mode_pillow_cannot_turn_into_rgb_is_a_listed_skip(tmp_path):
    trimap = tmp_path / "trimap.png"
    Image.fromarray(np.full((8, 8), 1, np.uint8)).save(trimap)
    Image.fromarray(np.full((8, 8), -5.0, np.float32)).save(tmp_path / "negative.tiff")
    with pytest.raises(SampleError, match=r"image cannot be decoded \(F pixels outside 0..65535\)"):
        load_sample(tmp_path / "negative.tiff", trimap, 32, "pet")


def test_a_prepare_with_no_usable_sample_fails_and_keeps_the_previous_cache(tmp_path, synthetic_tree):
    tree = tmp_path / "tree"
    shutil.copytree(synthetic_tree, tree)
    out = tmp_path / "prepared"
    prepare_dataset(tree / "images", tree / "annotations", out, prepare_config(image_size=32), workers=1)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    for photo in (tree / "images").iterdir():
        photo.write_bytes(b"\0" * 1000)  # what an archive of empty or broken photos extracts to
    with pytest.raises(PetsegError, match=r"^prepare: no usable train or test sample \(32 skipped; most common "):
        prepare_dataset(tree / "images", tree / "annotations", out, prepare_config(image_size=32), workers=1)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
