"""The model's way out: ONNX export with parity, the onnxruntime backend, the photo-taking pyfunc (served for real),
registry versions and the promotion gate."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import SAMPLE, copy_trained, free_port, run_stage, shipped_params_file
from PIL import Image

from petseg.cli import main as petseg_main
from petseg.data.dataset import PreparedSplit
from petseg.deploy import pyfunc, quantize
from petseg.deploy.gate import promote
from petseg.deploy.onnx_export import export_onnx, parity
from petseg.deploy.onnx_runtime import OnnxPredictor
from petseg.deploy.pyfunc import PetsegSegmenter, segment_encoded, segment_request
from petseg.errors import PetsegError
from petseg.evaluation.predictor import Predictor
from petseg.models.checkpoint import load_checkpoint, save_checkpoint

NO_MLFLOW = {"PETSEG_MLFLOW": "0"}


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained):
    """The two trained tiny models, exported once."""
    project = tmp_path_factory.mktemp("exported") / "p"
    copy_trained(trained, project)
    result = run_stage("export", project, env=NO_MLFLOW)
    assert result.returncode == 0, result.stderr
    return project


def test_export_writes_onnx_that_agrees_with_pytorch(exported):
    for name in ("unet", "res34"):
        report = json.loads((exported / "reports" / "export" / f"{name}.json").read_text())
        assert report["opset"] == 18 and report["images"] == 8
        assert report["max_abs_logit_diff"] <= 1e-4 and report["mask_agreement"] >= 0.9999
        assert (exported / "models" / f"{name}.onnx").stat().st_size > 10_000
        int8 = report["int8"]
        assert int8["calibration_images"] == len(PreparedSplit(exported / "data" / "prepared", "valid"))
        assert int8["test_images"] == len(PreparedSplit(exported / "data" / "prepared", "test"))
        assert int8["kept"] == (int8["fp32_dice_per_image"] - int8["int8_dice_per_image"] <= 0.005)
        quantized = OnnxPredictor(exported / "models" / f"{name}.int8.onnx", check_gate=False)
        assert quantized.precision == "int8" and quantized.tta == "hflip" and quantized.threshold == 0.5
        size = (exported / "models" / f"{name}.int8.onnx").stat().st_size
        assert size < (exported / "models" / f"{name}.onnx").stat().st_size


@pytest.mark.parametrize("name", ["unet", "res34"])
def test_every_backend_masks_the_test_photos_as_pytorch_does(exported, name):
    """fp32 and int8 exports against the PyTorch checkpoint, on every test photo: >= 99.5 % of pixels the same."""
    photos = np.asarray(PreparedSplit(exported / "data" / "prepared", "test").images)
    eager = Predictor(exported / "models" / f"{name}.pt")
    expected = eager.probabilities(photos) > eager.threshold
    for file in (f"{name}.onnx", f"{name}.int8.onnx"):
        backend = OnnxPredictor(exported / "models" / file, check_gate=False)
        agreement = np.mean((backend.probabilities(photos) > backend.threshold) == expected)
        assert agreement >= 0.995, f"{file}: masks agree on {agreement:.4%} of pixels"


def test_an_int8_export_below_its_gate_is_written_but_refused_when_served(exported, tmp_path, monkeypatch, capsys):
    prepared = exported / "data" / "prepared"
    valid, test = PreparedSplit(prepared, "valid"), PreparedSplit(prepared, "test")
    scores = iter([0.80, 0.79])  # fp32, then int8: 0.01 below
    monkeypatch.setattr(quantize, "dice_per_image", lambda predictor, images, masks: next(scores))
    out = tmp_path / "res34.int8.onnx"
    report = quantize.quantize_int8(exported / "models" / "res34.onnx", out, valid.images, test.images, test.masks)
    assert report["kept"] is False and report["dice_drop"] == pytest.approx(0.01)
    expected = f"{out}: refused: its accuracy gate failed (test Dice 0.0100 below the fp32 export's); serve the fp32"
    with pytest.raises(PetsegError) as err:
        OnnxPredictor(out)
    assert str(err.value).startswith(expected)
    assert petseg_main(["predict", "--model", str(out), "--out", str(tmp_path / "masks"), str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"petseg: error: {expected}")


def with_serving(checkpoint: Path, out: Path, **serving) -> Path:
    """A copy of ``checkpoint`` that carries other serving settings (tta, threshold)."""
    ckpt = load_checkpoint(checkpoint)
    ckpt["serving"] = ckpt["serving"] | serving
    save_checkpoint(out, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    return out


def test_an_export_serves_its_checkpoints_tta_as_the_torch_predictor_does(exported, tmp_path, capsys):
    checkpoint = exported / "models" / "unet.pt"
    assert load_checkpoint(checkpoint)["serving"] == {"tta": "hflip", "threshold": 0.5}  # params.yaml's train.common
    photos = np.asarray(PreparedSplit(exported / "data" / "prepared", "test").images[:4])
    plain = with_serving(checkpoint, tmp_path / "plain.pt", tta="none")
    report = export_onnx(plain, tmp_path / "plain.onnx", photos)
    assert report["max_abs_logit_diff"] <= 1e-4 and report["mask_agreement"] >= 0.9999
    exports = {"hflip": (checkpoint, exported / "models" / "unet.onnx"), "none": (plain, tmp_path / "plain.onnx")}
    served = {}
    for tta, (source, path) in exports.items():
        onnx = OnnxPredictor(path)
        served[tta] = onnx.probabilities(photos)
        assert onnx.tta == Predictor(source).tta == tta
        assert np.allclose(served[tta], Predictor(source).probabilities(photos), atol=1e-5)
    assert not np.allclose(served["hflip"], served["none"], atol=1e-4)
    hflip_onnx = exports["hflip"][1]
    args = ["predict", "--backend", "onnxruntime", "--model", str(hflip_onnx), "--tta", "none", "x.jpg"]
    assert petseg_main(args) == 2
    assert capsys.readouterr().err == f"petseg: error: --tta none: {hflip_onnx} was exported with tta hflip, built in\n"


TORCH_FREE_PREDICT = """
import sys
from petseg.cli import main
from petseg.deploy.pyfunc import PetsegSegmenter
from types import SimpleNamespace
rc = main(sys.argv[1:])
segmenter = PetsegSegmenter()
segmenter.load_context(SimpleNamespace(artifacts={"checkpoint": sys.argv[3]}, model_config=None))
print(rc, type(segmenter.predictor).__name__, sorted({"torch", "torchvision"} & set(sys.modules)))
"""


def test_serving_an_onnx_export_never_imports_torch(exported, synthetic_tree, tmp_path):
    model = exported / "models" / "res34.onnx"
    photo = next((synthetic_tree / "images").iterdir())
    args = ["predict", "--model", str(model), "--out", str(tmp_path / "out"), str(photo)]
    result = subprocess.run([sys.executable, "-c", TORCH_FREE_PREDICT, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 OnnxPredictor []"
    assert (tmp_path / "out" / f"{photo.stem}.png").is_file()


def test_the_pyfunc_serves_the_checkpoints_own_tta_and_threshold(exported, tmp_path):
    shipped = exported / "models" / "res34.pt"
    for checkpoint, tta, threshold in (
        (shipped, "hflip", 0.5),
        (with_serving(shipped, tmp_path / "other.pt", tta="none", threshold=0.4), "none", 0.4),
    ):
        segmenter = PetsegSegmenter()
        segmenter.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint)}, model_config=None))
        assert (segmenter.predictor.tta, segmenter.threshold) == (tta, threshold)


def test_a_failed_export_never_replaces_the_good_one(exported, tmp_path, monkeypatch):
    good = exported / "models" / "res34.onnx"
    target = tmp_path / "res34.onnx"
    target.write_bytes(good.read_bytes())
    photos = np.asarray(PreparedSplit(exported / "data" / "prepared", "test").images[:2])

    def disagree(expected, got, threshold, where):
        raise PetsegError(f"{where}: ONNX Runtime disagrees with PyTorch")

    monkeypatch.setattr("petseg.deploy.onnx_export.parity", disagree)
    with pytest.raises(PetsegError, match="disagrees"):
        export_onnx(exported / "models" / "res34.pt", target, photos)
    assert target.read_bytes() == good.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["res34.onnx"]  # no temp file left either


def test_parity_is_relative_to_the_logits_scale(tmp_path):
    expected = np.full((1, 1, 4, 4), 1e7, dtype=np.float32)
    assert parity(expected, expected + 144.0, 0.5, tmp_path)["max_abs_logit_diff"] == 144.0  # 1.4e-5 of the scale
    with pytest.raises(PetsegError, match=r"max \|logit difference\| 2e\+04 \(allowed 1e\+03\)"):
        parity(expected, expected + 2e4, 0.5, tmp_path)


def test_parity_below_the_bar_fails_naming_the_numbers(tmp_path):
    expected = np.zeros((1, 1, 10, 10), dtype=np.float32)
    with pytest.raises(PetsegError, match=r"max \|logit difference\| 0.01 \(allowed 0.0001\), masks agree on 99\."):
        parity(expected, expected + np.where(np.arange(100).reshape(1, 1, 10, 10) == 0, 0.01, 0.0), 0.5, tmp_path)


def test_onnxruntime_backend_gives_the_same_masks(exported, synthetic_tree, tmp_path, capsys):
    photos = synthetic_tree / "images"
    for backend, model in (("torch", "res34.pt"), ("onnxruntime", "res34.onnx")):  # each serves its checkpoint's TTA
        out = tmp_path / backend
        args = ["predict", "--model", str(exported / "models" / model), "--out", str(out), "--device", "cpu"]
        assert petseg_main([*args, "--backend", backend, str(photos)]) == 0
    capsys.readouterr()
    torch_masks = sorted((tmp_path / "torch").iterdir())
    assert len(torch_masks) == 32
    for path in torch_masks:
        assert np.array_equal(
            np.asarray(Image.open(path)), np.asarray(Image.open(tmp_path / "onnxruntime" / path.name))
        )


def test_the_pyfunc_answers_each_row_and_a_bad_row_is_an_error_not_a_crash(exported, synthetic_tree):
    predictor = Predictor(exported / "models" / "unet.pt")
    photo = base64.b64encode((synthetic_tree / "images" / "Persian_1.jpg").read_bytes()).decode()
    good = segment_encoded(predictor, photo, 0.5)
    mask = decode_png(good["mask_png"])
    assert mask.shape == Image.open(synthetic_tree / "images" / "Persian_1.jpg").size[::-1]
    assert set(np.unique(mask)) <= {0, 255} and good["foreground_fraction"] == pytest.approx(np.mean(mask > 0))
    for bad in (base64.b64encode(b"not an image").decode(), "%%% not base64 %%%", 42):
        row = segment_encoded(predictor, bad, 0.5)
        assert row["mask_png"] == "" and row["error"].startswith(("not a readable image", "not a readable"))


def test_what_one_request_may_cost_is_bounded(exported, monkeypatch):
    predictor = Predictor(exported / "models" / "unet.pt")
    buffer = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buffer, format="PNG")  # a few KB that would decode to 90 MB of RGB
    bomb = base64.b64encode(buffer.getvalue()).decode()
    row = segment_encoded(predictor, bomb, 0.5)
    assert row["mask_png"] == "" and row["error"] == "not a readable image (6000x5000 is over the 25 Mpx limit)"
    small = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 60)).save(small, format="PNG")
    photo = base64.b64encode(small.getvalue()).decode()
    monkeypatch.setattr(pyfunc, "MAX_ROWS", 2)
    rows = segment_request(predictor, [photo] * 3, 0.5)
    assert len(rows) == 3 and all(
        r["error"].startswith("request too large (3 rows, 0 MiB; at most 2 rows") for r in rows
    )
    assert [r["error"] for r in segment_request(predictor, [photo] * 2, 0.5)] == ["", ""]


def _version(client, model: str, tags: dict) -> str:
    name = f"petseg-{model}"
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, "file:///nowhere", tags=tags).version)


def _tags(dice: float, cat: float, split: str = "a") -> dict:
    return {"test_dice_per_image": str(dice), "test_dice_per_image.cat": str(cat), "test_split_hash": split}


def test_the_promotion_gate_both_ways_and_idempotent(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = _version(client, "res34", _tags(0.80, 0.80))
    assert promote(client, "res34", 0.02).reason == "the first version"
    assert promote(client, "res34", 0.02).reason == "already the champion"  # twice: nothing changes
    worse = _version(client, "res34", _tags(0.79, 0.80))
    decision = promote(client, "res34", 0.02)
    assert (decision.version, decision.alias) == (worse, "challenger")
    assert decision.reason == f"test Dice 0.7900 is below 0.8000 (the champion, version {first})"
    assert str(client.get_model_version_by_alias("petseg-res34", "champion").version) == first
    species_drop = _version(client, "res34", _tags(0.85, 0.75))
    assert promote(client, "res34", 0.02).reason.startswith("cat test Dice drops by 0.0500")
    other_split = _version(client, "res34", _tags(0.95, 0.95, split="b"))
    assert promote(client, "res34", 0.02).reason.startswith("its test split differs")
    assert str(client.get_model_version_by_alias("petseg-res34", "challenger").version) == other_split != species_drop
    better = _version(client, "res34", _tags(0.82, 0.81))
    decision = promote(client, "res34", 0.02)
    assert (decision.alias, decision.reason) == ("champion", f"passed the gate against the champion, version {first}")
    assert str(client.get_model_version_by_alias("petseg-res34", "champion").version) == better


def registry(tmp_path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.parametrize(
    "tags,message",
    [
        (_tags(float("nan"), 0.9), "tag test_dice_per_image is 'nan'; only finite scores can be compared"),
        (_tags(0.9, float("nan")), "tag test_dice_per_image.cat is 'nan'; only finite scores can be compared"),
        (_tags(float("inf"), 0.9), "tag test_dice_per_image is 'inf'; only finite scores can be compared"),
        ({"test_split_hash": "a"}, "has no test_dice_per_image tag (its evaluate run did not finish registering it)"),
        ({}, "has no test_dice_per_image tag"),
        (_tags(0.9, 0.9) | {"test_dice_per_image": "high"}, "tag test_dice_per_image is 'high', not a number"),
        ({"test_dice_per_image": "0.9"}, "has no test_split_hash tag"),
    ],
)
def test_only_finite_complete_scores_can_win(tmp_path, monkeypatch, capsys, tags, message):
    client = registry(tmp_path)
    first = _version(client, "res34", _tags(0.80, 0.80))
    assert promote(client, "res34", 0.02).alias == "champion"
    newest = _version(client, "res34", tags)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert petseg_main(["promote", "--model", "res34", "--params", str(shipped_params_file())]) == 1
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("petseg")]  # not MLflow's INFO
    assert len(ours) == 1 and ours[0].startswith(f"petseg: error: petseg-res34 version {newest}") and message in ours[0]
    assert str(client.get_model_version_by_alias("petseg-res34", "champion").version) == first


def test_a_deleted_champion_leaves_the_gate_against_the_best_remaining_version(tmp_path):
    client = registry(tmp_path)
    _version(client, "res34", _tags(0.80, 0.80))
    best = _version(client, "res34", _tags(0.85, 0.85))
    assert promote(client, "res34", 0.02).alias == "champion"
    champion = _version(client, "res34", _tags(0.90, 0.90))
    assert promote(client, "res34", 0.02).version == champion
    client.delete_model_version("petseg-res34", champion)
    worse = _version(client, "res34", _tags(0.82, 0.82))
    decision = promote(client, "res34", 0.02)
    assert (decision.version, decision.alias) == (worse, "challenger")
    assert decision.reason == (
        f"test Dice 0.8200 is below 0.8500 (version {best}, the best earlier one (no version holds champion))"
    )


def test_promote_exit_codes_and_no_torch(tmp_path):
    """Champion 0, challenger 1, an equal Dice passes (0), no version at all 2; moving an alias imports no torch."""
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PETSEG_PROGRESS": "0"}
    script = (
        "import sys; from petseg.cli import main; code = main(sys.argv[1:]); "
        "print('torch' in sys.modules, 'torchvision' in sys.modules); sys.exit(code)"
    )
    params = str(shipped_params_file())

    def run():
        args = [sys.executable, "-c", script, "promote", "--model", "res34", "--params", params]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)

    result = run()
    assert result.returncode == 2 and "has no registered version yet" in result.stderr
    client = registry(tmp_path)
    _version(client, "res34", _tags(0.80, 0.80))
    assert (result := run()).returncode == 0 and result.stdout.endswith("False False\n"), result.stderr
    _version(client, "res34", _tags(0.80, 0.80))
    assert run().returncode == 0  # an equal Dice is no worse
    _version(client, "res34", _tags(0.70, 0.80))
    assert (result := run()).returncode == 1 and "stays challenger: test Dice 0.7000 is below 0.8000" in result.stdout


def test_promote_with_mlflow_down_is_one_warning(monkeypatch, capsys, tmp_path):

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert petseg_main(["promote", "--model", "unet", "--params", str(shipped_params_file())]) == 0
    err = capsys.readouterr().err
    assert err.startswith("petseg: warning: MLflow registry at http://127.0.0.1:") and err.count("\n") == 1
    assert err.rstrip().endswith("nothing promoted")


@pytest.mark.slow
def test_a_served_champion_answers_a_real_photo_like_petseg_predict(exported, tmp_path, capsys):
    project = tmp_path / "p"
    copy_trained(exported, project)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    assert run_stage("evaluate", project, env=env).returncode == 0
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    try:
        assert petseg_main(["promote", "--model", "res34", "--params", str(project / "params.yaml")]) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("petseg-res34", "champion")
    experiment = client.get_experiment_by_name("petseg").experiment_id
    (logged,) = client.search_logged_models([experiment], f"source_run_id = '{champion.run_id}'")
    scores = {metric.key: metric.value for metric in logged.metrics}
    details = json.loads((project / "reports" / "evaluate" / "details.json").read_text())["res34"]
    assert scores["test_dice_per_image"] == details["dice_per_image"]  # the Models view shows each model's score
    assert champion.tags["test_dice_per_image"] == f"{details['dice_per_image']:.6f}"
    photo = tmp_path / "photo.jpg"
    import tarfile

    with tarfile.open(SAMPLE / "images.tar.gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        photo.write_bytes(tar.extractfile(member).read())
    # Every way out serves what evaluate scored, with no flag: predict on the checkpoint and on its ONNX export, infer
    # (its masks are of the prepared test photos, compared in test_evaluate_infer), and the served registry model.
    masks = {}
    for model in ("res34.pt", "res34.onnx"):
        args = ["predict", "--model", str(project / "models" / model), "--out", str(tmp_path / model)]
        assert petseg_main([*args, str(photo)]) == 0
        masks[model] = np.asarray(Image.open(tmp_path / model / "photo.png"))
    expected = masks["res34.pt"]
    assert np.array_equal(masks["res34.onnx"], expected)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/petseg-res34@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=os.environ | env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("wb"),  # a file, not a pipe: reading a live server's pipe blocks
    )
    try:
        rows = [[base64.b64encode(photo.read_bytes()).decode()], [base64.b64encode(b"no photo").decode()]]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
        answer = _post(f"http://127.0.0.1:{port}/invocations", body, server, tmp_path / "serve.log")
    finally:
        server.terminate()
        server.wait(timeout=30)
    predictions = pd.DataFrame(answer["predictions"])
    assert np.array_equal(decode_png(predictions["mask_png"][0]), expected)
    assert predictions["error"][0] == "" and predictions["error"][1].startswith("not a readable image")


def _post(url: str, body: bytes, server: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + 120
    while True:
        try:
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError) as err:
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise AssertionError(f"mlflow models serve did not answer ({err}): {tail}") from None
            time.sleep(1)
