from __future__ import annotations

import csv
import json
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import copy_trained, run_stage
from PIL import Image

from petseg.cli import main as petseg_main
from petseg.data.dataset import PreparedSplit
from petseg.data.photos import load_rgb
from petseg.errors import PetsegError
from petseg.evaluation.masks import mask_at_size
from petseg.evaluation.predictor import Predictor
from petseg.models.checkpoint import load_checkpoint, save_checkpoint
from petseg.runtime import describe_machine, machine

NO_MLFLOW = {"PETSEG_MLFLOW": "0"}


def test_evaluate_writes_metrics_per_model_species_and_breed(trained):
    result = run_stage("evaluate", trained, env=NO_MLFLOW)
    assert result.returncode == 0, result.stderr
    out = trained / "reports" / "evaluate"
    metrics = json.loads((out / "details.json").read_text())
    assert set(metrics) == {"unet", "res34"}
    tracked = ("dice_per_image", "iou_per_image", "boundary_dice_per_image", "dice_dataset")
    # `dvc exp show` reads metrics.json: the headline scores only, the same numbers as details.json's
    assert json.loads((out / "metrics.json").read_text()) == {
        name: {key: scores[key] for key in tracked} for name, scores in metrics.items()
    }
    per_image = list(csv.DictReader((out / "per_image.csv").open()))
    assert [(r["model"], r["species"]) for r in per_image[:1]] == [("unet", "cat")] and len(per_image) == 16
    for name, scores in metrics.items():
        dice = [float(r["dice"]) for r in per_image if r["model"] == name]
        assert np.mean(dice) == pytest.approx(scores["dice_per_image"], abs=1e-6)
    for scores in metrics.values():
        for key in (
            "dice_per_image",
            "iou_per_image",
            "dice_dataset",
            "iou_dataset",
            "accuracy_dataset",
            "precision_dataset",
            "recall_dataset",
        ):
            assert 0.0 <= scores[key] <= 1.0, key
        assert scores["images"] == 8
        assert set(scores["species"]) == {"cat", "dog"} and scores["species"]["cat"]["images"] == 4
        low, high = scores["dice_per_image_ci95"]
        assert low <= scores["dice_per_image"] <= high
        assert 0.0 <= scores["boundary_dice_per_image"] <= 1.0 and 0.0 <= scores["boundary_iou_per_image"] <= 1.0
        assert scores["empty_predictions"] + scores["full_predictions"] <= 8
    with (out / "per_breed.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["model"], r["breed"], r["species"]) for r in rows} == {
        (m, b, s) for m in ("unet", "res34") for b, s in (("Persian", "cat"), ("beagle", "dog"))
    }
    for png in ("comparison.png", "dice_hist.png"):
        assert Image.open(out / png).size[0] > 300
    meta = json.loads((trained / "data" / "prepared" / "meta.json").read_text())
    for name, scores in metrics.items():
        card = (trained / "reports" / "cards" / f"{name}.md").read_text()
        assert card.startswith(f"# petseg-{name}\n") and f"`{meta['split_lists']}`" in card
        assert f"| Dice per image (95 % bootstrap interval) | {scores['dice_per_image']:.4f} [" in card
        assert f"| `train.{name}.lr` | 0.003 |" in card  # the recipe, from the checkpoint
        for timed in ("evaluation (test split)", "training (mean over epochs)"):  # each speed names its machine
            assert re.search(
                rf"\| {re.escape(timed)} \| [\d.]+ img/s \| {re.escape(describe_machine(machine()))} \|", card
            )
    first = (out / "metrics.json").read_bytes()
    assert run_stage("evaluate", trained, env=NO_MLFLOW).returncode == 0
    assert (out / "metrics.json").read_bytes() == first  # bit-identical on a rerun


def test_tta_reports_its_effect_and_a_collapsed_model_is_flagged(trained, tmp_path):
    project = tmp_path / "p"
    copy_trained(trained, project)
    ckpt = load_checkpoint(project / "models" / "unet.pt")
    assert ckpt["serving"]["tta"] == "hflip"  # the shipped train.common.tta, which evaluate serves as it scores
    head_bias = next(key for key in reversed(list(ckpt["state_dict"])) if key.endswith("bias"))
    ckpt["state_dict"][head_bias] = torch.full_like(ckpt["state_dict"][head_bias], -1e4)  # predicts no pet at all
    save_checkpoint(project / "models" / "unet.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    result = run_stage("evaluate", project, env=NO_MLFLOW)
    assert result.returncode == 0, result.stderr
    assert "evaluate: warning: unet predicts no pet on 8 of 8 test images; it has collapsed" in result.stdout
    metrics = json.loads((project / "reports" / "evaluate" / "details.json").read_text())
    assert metrics["unet"]["empty_predictions"] == 8 and metrics["unet"]["precision_dataset"] == 0.0
    assert 0.0 <= metrics["res34"]["dice_per_image_no_tta"] <= 1.0
    card = (project / "reports" / "cards" / "res34.md").read_text()
    no_tta = metrics["res34"]["dice_per_image_no_tta"]
    assert f"| Dice per image without the flip TTA it is served with | {no_tta:.4f} |" in card
    assert "petseg predict --model models/res34.pt --out masks" in card  # the checkpoint carries its TTA


def test_infer_writes_original_size_masks_and_grids(trained):
    result = run_stage("infer", trained, env=NO_MLFLOW)
    assert result.returncode == 0, result.stderr
    with (trained / "data" / "prepared" / "test.csv").open() as handle:
        rows = {r["name"]: r for r in csv.DictReader(handle)}
    for name in ("unet", "res34"):
        masks = sorted((trained / "reports" / "infer" / name / "masks").glob("*.png"))
        assert len(masks) == 6  # infer.limit
        for path in masks:
            mask = np.asarray(Image.open(path))
            row = rows[path.stem]
            assert mask.shape == (int(row["height"]), int(row["width"]))  # original size, not 32 px
            assert set(np.unique(mask)) <= {0, 255}
        grid = Image.open(trained / "reports" / "infer" / name / "overlays.png")
        assert grid.size[1] > grid.size[0]  # 4 rows (2 best + 2 worst) of 3 panels
        # The masks are the checkpoint's, served as evaluate scored it (its TTA and threshold), like predict's.
        predictor = Predictor(trained / "models" / f"{name}.pt")
        test = PreparedSplit(trained / "data" / "prepared", "test")
        probabilities = predictor.probabilities(np.asarray(test.images[: len(masks)]))  # infer's one batch
        for row, probability in zip(test.rows, probabilities, strict=False):
            expected = mask_at_size(probability, int(row["width"]), int(row["height"]), predictor.threshold)
            written = trained / "reports" / "infer" / name / "masks" / f"{row['name']}.png"
            assert np.array_equal(np.asarray(Image.open(written)), expected)


def test_infer_grids_show_the_worst_case_of_the_whole_split_not_of_the_masks_written(trained, tmp_path):
    project = tmp_path / "p"
    copy_trained(trained, project)
    per_image = project / "reports" / "evaluate" / "per_image.csv"
    with per_image.open() as handle:
        rows = list(csv.DictReader(handle))
    last = rows[7]["name"]  # the 8th test photo; infer.limit writes masks for the first 6 only
    for row in rows:
        row["dice"] = "0.0" if row["name"] == last else "0.9"
    with per_image.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_stage("infer", project, env=NO_MLFLOW)
    assert result.returncode == 0, result.stderr
    for name in ("unet", "res34"):
        assert f"infer: {name}: 6 masks in reports/infer/{name}/masks" in result.stdout
        assert f"(worst case: {last}, Dice 0.000)" in result.stdout
    per_image.unlink()
    result = run_stage("infer", project, env=NO_MLFLOW)
    assert result.returncode == 2
    assert result.stderr == (
        "petseg: error: reports/evaluate/per_image.csv: missing; the evaluate stage writes it (dvc repro evaluate)\n"
    )


def test_evaluate_refuses_a_foreign_or_code_carrying_checkpoint(trained, tmp_path):
    project = tmp_path / "p"
    copy_trained(trained, project)
    torch.save({"weights": torch.zeros(2)}, project / "models" / "unet.pt")
    result = run_stage("evaluate", project, env=NO_MLFLOW)
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "petseg: error: models/unet.pt: not a petseg checkpoint (train one with "
        "`dvc repro` or `python -m stages.train`)"
    )

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    with (project / "models" / "unet.pt").open("wb") as handle:
        pickle.dump({"format": "petseg-checkpoint", "x": Payload()}, handle)
    result = run_stage("evaluate", project, env=NO_MLFLOW)
    assert result.returncode == 2 and "code ran" not in result.stdout
    assert result.stderr.startswith("petseg: error: models/unet.pt: refused: not a plain-tensor checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1


def _hostile_checkpoints(trained, folder):
    """Files a user might hand over as a model, each with the one line petseg must answer."""
    good = load_checkpoint(trained / "models" / "unet.pt")
    res34 = load_checkpoint(trained / "models" / "res34.pt")
    cases = {
        "text.pt": (b"just some text\n", "not a checkpoint at all"),
        "empty.pt": (b"", "not a checkpoint at all"),
        "header.pt": ((trained / "models" / "unet.pt").read_bytes()[:64], "not a readable checkpoint"),
    }
    for name, data in cases.items():
        (folder / name).write_bytes(data[0])
    nan_weights = {k: v.clone() for k, v in good["state_dict"].items()}
    next(v for v in nan_weights.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    payloads = {
        "nan.pt": ({"state_dict": nan_weights}, "refused: 1 of "),
        "other-model.pt": ({"state_dict": res34["state_dict"]}, "weights do not fit a unet model"),
        "other-width.pt": ({"model": {"name": "unet", "params": {"base_channels": 8, "batch_norm": False}}}, "fit"),
        "huge-width.pt": ({"model": {"name": "unet", "params": {"base_channels": 10**6, "batch_norm": False}}}, "fit"),
        "absurd-size.pt": ({"image_size": 131072}, "image_size 131072 is not a model input size"),
        "resume-point.pt": ({"model": None}, "not a model checkpoint"),
        "nan-mean.pt": ({"normalization": {"mean": [float("nan")] * 3, "std": [0.5] * 3}}, "is not three finite"),
        "huge-mean.pt": ({"normalization": {"mean": [1e39] * 3, "std": [0.5] * 3}}, "is not three finite"),
        "denormal-std.pt": ({"normalization": {"mean": [0.5] * 3, "std": [1e-45] * 3}}, "three stds in [0.001, 10]"),
        "text-mean.pt": ({"normalization": {"mean": ["a", "b", "c"], "std": [0.5] * 3}}, "is not three finite"),
        "two-stds.pt": ({"normalization": {"mean": [0.5] * 3, "std": [0.5] * 2}}, "is not three finite"),
        "nan-threshold.pt": ({"serving": {"tta": "none", "threshold": float("nan")}}, "threshold nan is not a number"),
        "odd-tta.pt": ({"serving": {"tta": "vflip", "threshold": 0.5}}, "serving tta 'vflip' is not none or hflip"),
        "old-format.pt": ({"serving": None}, "not a model checkpoint"),
    }
    for name, (change, message) in payloads.items():
        save_checkpoint(folder / name, {k: v for k, v in good.items() if k not in ("format", "version")} | change)
        cases[name] = (b"", message)
    return {name: message for name, (_, message) in cases.items()}


def test_every_bad_checkpoint_is_one_line_before_any_work(trained, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, message in _hostile_checkpoints(trained, folder).items():
        assert predict(folder / name, tmp_path / "out", trained / "data") == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"petseg: error: {folder / name}: ") and message in err, (name, err)
        assert len(err.strip().splitlines()) == 1 and "weights_only=False" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluate_and_infer_refuse_non_finite_weights(trained, tmp_path):
    project = tmp_path / "p"
    copy_trained(trained, project)
    ckpt = load_checkpoint(project / "models" / "res34.pt")
    ckpt["state_dict"] = {
        k: v.float() * float("inf") if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()
    }
    save_checkpoint(project / "models" / "res34.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    for stage in ("evaluate", "infer"):
        result = run_stage(stage, project, env=NO_MLFLOW)
        assert result.returncode == 2
        assert (
            result.stderr.startswith("petseg: error: models/res34.pt: refused: ") and "NaN or infinite" in result.stderr
        )


def test_an_empty_test_split_is_one_line_and_leaves_earlier_outputs_alone(trained, tmp_path):
    project = tmp_path / "p"
    copy_trained(trained, project)
    assert run_stage("infer", project, env=NO_MLFLOW).returncode == 0
    masks = sorted(path.name for path in (project / "reports" / "infer" / "unet" / "masks").iterdir())
    prepared = project / "data" / "prepared"
    size = np.load(prepared / "test_images.npy").shape[1]
    np.save(prepared / "test_images.npy", np.zeros((0, size, size, 3), np.uint8))
    np.save(prepared / "test_masks.npy", np.zeros((0, size, size), np.uint8))
    (prepared / "test.csv").write_text("index,name,species,breed,class_id,width,height\n")
    for stage, purpose in (("evaluate", "evaluate"), ("infer", "infer")):
        result = run_stage(stage, project, env=NO_MLFLOW)
        assert result.returncode == 2
        assert result.stderr == (
            f"petseg: error: data/prepared: the test split is empty, nothing to {purpose} (see reports/prepare.json)\n"
        )
    assert sorted(path.name for path in (project / "reports" / "infer" / "unet" / "masks").iterdir()) == masks


def test_checkpoint_round_trip_and_missing_file(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"state_dict": {"w": torch.ones(2)}})
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["state_dict"]["w"], torch.ones(2))
    with pytest.raises(PetsegError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def predict(model, out, *inputs) -> int:
    """`petseg predict` on the CPU; inputs are paths or extra flags."""
    return petseg_main(["predict", "--model", str(model), "--out", str(out), "--device", "cpu", *map(str, inputs)])


@pytest.fixture
def photos(tmp_path, synthetic_tree):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(synthetic_tree / "images" / "Persian_1.jpg", folder / "cat.jpg")
    Image.open(synthetic_tree / "images" / "beagle_2.jpg").save(folder / "dog.png")
    Image.open(synthetic_tree / "images" / "beagle_3.jpg").convert("L").save(folder / "gray.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_mixed_inputs(trained, photos, tmp_path, capsys):
    out = tmp_path / "masks"
    code = predict(trained / "models" / "res34.pt", out, photos, "--overlays")
    captured = capsys.readouterr()
    assert code == 1  # one input failed
    assert f"petseg: error: {photos / 'notes.txt'}: not a readable image" in captured.err
    assert "predict: 3 masks written" in captured.out and "1 failed" in captured.out
    for stem, source in (("cat", "cat.jpg"), ("dog", "dog.png"), ("gray", "gray.jpg")):
        mask = np.asarray(Image.open(out / f"{stem}.png"))
        assert mask.shape == Image.open(photos / source).size[::-1]
        assert set(np.unique(mask)) <= {0, 255}
        assert Image.open(out / f"{stem}_overlay.png").mode == "RGB"


def test_predict_never_overwrites_a_mask_and_predicts_a_file_once(trained, photos, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos / "dog.png", other / "cat.png")  # same stem as photos/cat.jpg: same mask name
    out = tmp_path / "masks"
    code = predict(trained / "models" / "unet.pt", out, photos / "cat.jpg", photos, other / "cat.png")
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("petseg: error:") == 2  # notes.txt, and the second cat
    assert (
        f"petseg: error: {other / 'cat.png'}: its mask would overwrite {photos / 'cat.jpg'}'s (cat.png); "
        "use another --out for it" in captured.err
    )
    assert "predict: 3 masks written" in captured.out  # cat.jpg named twice, predicted once
    assert Image.open(out / "cat.png").size == Image.open(photos / "cat.jpg").size
    assert not list(out.glob(".*.tmp"))  # written through temp files, none left behind


@pytest.mark.parametrize("form", ["directory", "file"])
def test_predict_never_writes_into_a_folder_that_holds_an_input(trained, photos, capsys, form):
    before = {path.name: path.read_bytes() for path in photos.iterdir()}
    given = photos if form == "directory" else photos / "dog.png"
    assert predict(trained / "models" / "unet.pt", photos, given) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"petseg: error: --out {photos}: holds the input {photos}/")
    assert err.rstrip().endswith("outputs there could replace your photos (choose another --out)")
    assert {path.name: path.read_bytes() for path in photos.iterdir()} == before


def test_an_overlay_name_never_collides_with_another_photos_mask(trained, synthetic_tree, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(synthetic_tree / "images" / "Persian_1.jpg", folder / "x.jpg")
    shutil.copy(synthetic_tree / "images" / "beagle_1.jpg", folder / "x_overlay.jpg")
    out = tmp_path / "out"
    assert predict(trained / "models" / "unet.pt", out, folder, "--overlays") == 1
    err = capsys.readouterr().err
    assert err == (
        f"petseg: error: {folder / 'x_overlay.jpg'}: its mask would overwrite {folder / 'x.jpg'}'s overlay "
        "(x_overlay.png); use another --out for it\n"
    )
    assert sorted(path.name for path in out.iterdir()) == ["x.png", "x_overlay.png"]
    assert Image.open(out / "x_overlay.png").mode == "RGB"  # x.jpg's overlay, not x_overlay.jpg's mask


def test_photos_over_the_pixel_limit_are_refused_and_overlays_stay_bounded(
    trained, synthetic_tree, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(synthetic_tree / "images" / "Persian_1.jpg").resize((300, 200)).save(folder / "big.jpg")
    Image.open(synthetic_tree / "images" / "beagle_1.jpg").resize((90, 60)).save(folder / "small.png")
    monkeypatch.setattr("petseg.data.photos.MAX_PIXELS", 20_000)
    monkeypatch.setattr("petseg.data.photos.PREVIEW_SIDE", 64)
    out = tmp_path / "out"
    assert predict(trained / "models" / "unet.pt", out, folder, "--overlays") == 1
    assert capsys.readouterr().err == (
        f"petseg: error: {folder / 'big.jpg'}: not a readable image (300x200 is over the 0.02 Mpx limit)\n"
    )
    assert Image.open(out / "small.png").size == (90, 60)  # the mask: always at the photo's own size
    assert Image.open(out / "small_overlay.png").size == (64, 43)  # the overlay: at most PREVIEW_SIDE long


def test_predict_respects_exif_orientation(trained, synthetic_tree, tmp_path, capsys):
    image = Image.open(synthetic_tree / "images" / "Persian_2.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    code = predict(trained / "models" / "unet.pt", tmp_path / "o", tmp_path / "rotated.jpg")
    assert code == 0
    assert Image.open(tmp_path / "o" / "rotated.png").size == (image.height, image.width)


def test_predict_unreadable_path_and_empty_directory(trained, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = predict(trained / "models" / "unet.pt", tmp_path / "o", tmp_path / "empty", tmp_path / "nope.jpg")
    err = capsys.readouterr().err
    assert code == 1
    assert f"{tmp_path / 'empty'}: empty directory, nothing to predict" in err
    assert f"{tmp_path / 'nope.jpg'}: no such file or directory" in err


def test_predict_with_a_missing_model_is_one_line(tmp_path, capsys):
    code = petseg_main(["predict", "--model", str(tmp_path / "none.pt"), str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"petseg: error: {tmp_path / 'none.pt'}: checkpoint not found"


def test_overlays_are_at_the_photos_own_size_and_do_not_change_the_mask(trained, synthetic_tree, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(synthetic_tree / "images" / "Persian_1.jpg").resize((400, 383)).save(folder / "cat.jpg")
    assert predict(trained / "models" / "unet.pt", tmp_path / "plain", folder) == 0
    assert predict(trained / "models" / "unet.pt", tmp_path / "drawn", folder, "--overlays") == 0
    assert Image.open(tmp_path / "drawn" / "cat_overlay.png").size == (400, 383)  # not the reduced decode's
    assert (tmp_path / "drawn" / "cat.png").read_bytes() == (tmp_path / "plain" / "cat.png").read_bytes()


def test_predict_writes_the_same_bytes_whatever_the_batching(trained, synthetic_tree, tmp_path, capsys):
    """Decoding and writing overlap the model in threads: outputs equal a plain photo-by-photo computation."""
    images = synthetic_tree / "images"
    for batch_size in (1, 3, 32):
        assert (
            predict(trained / "models" / "res34.pt", tmp_path / str(batch_size), images, "--batch-size", batch_size)
            == 0
        )
    predictor = Predictor(trained / "models" / "res34.pt")
    for path in sorted(images.iterdir())[:4]:
        photo = load_rgb(path, predictor.image_size)
        prob = predictor.probabilities(photo.resized[None])[0]
        expected = mask_at_size(prob, photo.width, photo.height, predictor.threshold)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "1" / f"{path.stem}.png")), expected)
    for path in (tmp_path / "1").iterdir():
        assert (
            path.read_bytes() == (tmp_path / "3" / path.name).read_bytes() == (tmp_path / "32" / path.name).read_bytes()
        )


def test_a_name_too_long_is_that_inputs_error_and_the_rest_are_written(trained, synthetic_tree, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    long_stem = "p" * 250  # fits as an input name (.jpg), not as "<stem>_overlay.png"
    shutil.copy(synthetic_tree / "images" / "Persian_1.jpg", folder / f"{long_stem}.jpg")
    shutil.copy(synthetic_tree / "images" / "beagle_1.jpg", folder / "dog.jpg")
    assert predict(trained / "models" / "unet.pt", tmp_path / "out", folder, "--overlays") == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"petseg: error: {folder / long_stem}.jpg: its output name ppp")
    assert captured.err.rstrip().endswith("is over 255 bytes; rename it") and captured.err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dog.png", "dog_overlay.png"]


def test_an_unusable_out_is_one_line_before_any_work(trained, synthetic_tree, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    photo = synthetic_tree / "images" / "Persian_1.jpg"
    assert predict(trained / "models" / "unet.pt", loop, photo) == 2
    assert capsys.readouterr().err.startswith(f"petseg: error: --out {loop}: not a usable folder (")
    (tmp_path / "file").write_text("x")
    assert predict(trained / "models" / "unet.pt", tmp_path / "file", photo) == 2
    assert capsys.readouterr().err == f"petseg: error: --out {tmp_path / 'file'}: exists and is not a folder\n"
