"""The `petseg` command's benchmarks run and report (their numbers are never asserted: machines are noisy)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from helpers import make_params, shipped_params_file

from petseg.bench import accuracy
from petseg.bench.folds import fold_names, write_fold
from petseg.cli import main as petseg_main
from petseg.config import load_params
from petseg.data.dataset import PreparedSplit
from petseg.data.layout import SPLITS, images_path, list_path, read_split_csv
from petseg.models import model_from_weights
from petseg.models.checkpoint import load_checkpoint
from petseg.runtime import describe_machine, machine, native_amp
from petseg.training.trainer import Trainer, TrainPaths

PARAMS = ["--params", str(shipped_params_file())]  # the benchmarks run in a folder of their own


def test_bench_prepare_reports_a_ratio(tmp_path, synthetic_archives, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert petseg_main(["bench", "prepare", "--source", str(synthetic_archives[0]), "--size", "64", *PARAMS]) == 0
    out = capsys.readouterr().out
    assert "ratio (target >= 2)" in out
    result = json.loads((tmp_path / "reports" / "bench" / "prepare.json").read_text())
    assert result["images"] == 32 and result["size"] == 64
    assert result["ratio"] == pytest.approx(result["prepare_img_s"] / result["naive_img_s"], rel=0.01)
    assert json.loads(out.strip().splitlines()[-1]) == result
    # Every bench names the machine its figures hold for, in its table and its JSON.
    assert result["machine"] == machine() and f"petseg bench prepare on {describe_machine(machine())}\n" in out


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC 9R45
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: another
"""


def test_machine_names_the_cpu_its_widest_vector_extension_and_cores(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    found = machine(cpuinfo)
    assert found["cpu"] == "AMD EPYC 9R45" and found["cpu_family"] == "26" and found["cpu_isa"] == "AVX-512 bf16"
    assert found["cores"] == len(os.sched_getaffinity(0)) and ("gpu" in found) == torch.cuda.is_available()
    cpuinfo.write_text(CPUINFO.replace(" avx512f avx512_bf16 avx512_vnni", "").replace("AMD EPYC 9R45", "AMD EPYC"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # how performance.md emulates an AVX2-only CPU's convolutions
    found = machine(cpuinfo)
    assert found["cpu_isa"] == "AVX2" and found["onednn_max_cpu_isa"] == "AVX2"
    line = f"AMD EPYC (family 26), {found['cores']} cores, AVX2, oneDNN held to AVX2"
    assert describe_machine(found) == line + (f", GPU {found['gpu']}" if "gpu" in found else "")
    elsewhere = machine(tmp_path / "absent")  # macOS, Windows: no /proc/cpuinfo
    assert elsewhere["cpu"] and elsewhere["cpu_isa"] == "unknown" and "cpu_family" not in elsewhere
    assert describe_machine(elsewhere).startswith(f"{elsewhere['cpu']}, {elsewhere['cores']} cores, unknown")


@pytest.mark.slow
def test_bench_train_reports_ratio_and_efficiency(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["bench", "train", "--model", "res34", "--size", "32", "64", "--batch-size", "2", "--steps", "2", *PARAMS]
    assert petseg_main([*args, "--no-augment-on-device"]) == 0
    out = capsys.readouterr().out
    for size in (32, 64):
        result = json.loads((tmp_path / "reports" / "bench" / f"train-res34-{size}.json").read_text())
        assert result["size"] == size and result["augment"] == "in the loader" and result["device"] == "cpu"
        # Ratios are computed from unrounded rates: compared relatively, they hold on a slow, busy machine too.
        loop_vs_plain = result["model_only_img_s"] / result["plain_pytorch_img_s"]
        assert result["loop_vs_plain"] == pytest.approx(loop_vs_plain, rel=0.01)
        assert result["ratio"] == pytest.approx(result["data_path_img_s"] / result["model_only_img_s"], rel=0.01)
        achieved = result["gflop_per_image"] * result["model_only_img_s"]
        assert result["fraction_of_peak"] == pytest.approx(achieved / result["matmul_peak_gflop_s"], rel=0.01)
    assert out.count("fraction of peak (target >= 0.75 on CPU)") == 2


@pytest.mark.slow
def test_bench_train_measures_the_gpu_options_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["bench", "train", "--model", "unet", "--size", "32", "--batch-size", "2", "--steps", "1", *PARAMS]
    assert petseg_main([*args, "--augment-on-device", "--channels-last", "--amp", "bf16"]) == 0
    result = json.loads((tmp_path / "reports" / "bench" / "train-unet-32.json").read_text())
    assert result["augment"] == "on the device" and result["amp"] == "bf16" and result["channels_last"] is True
    assert result["steps"] == 1 and result["batch_size"] == 2
    # The yardstick is the bf16 matmul only where the CPU runs it natively (AMX, AVX-512 bf16); elsewhere emulated.
    peak = "bfloat16" if native_amp("auto", torch.device("cpu")) == "bf16" else "float32"
    assert f"{peak} matmul peak" in capsys.readouterr().out


def test_bench_train_measures_params_settings_unless_a_flag_is_given(monkeypatch):
    calls = []
    monkeypatch.setattr("petseg.bench.train.bench_train", lambda *args: calls.append(args))
    assert petseg_main(["bench", "train", "--size", "32", *PARAMS]) == 0
    shipped = load_params(shipped_params_file())
    assert [(name, batch) for name, _, batch, _, _ in calls] == [
        (name, shipped.train.model(name).batch_size) for name in ("unet", "res34")
    ]
    assert calls[0][4].train.common == shipped.train.common and calls[0][4].resources == shipped.resources

    calls.clear()
    flags = ["--no-channels-last", "--no-augment-on-device", "--amp", "off", "--workers", "1", "--batch-size", "4"]
    assert petseg_main(["bench", "train", "--model", "res34", "--size", "32", *flags, *PARAMS]) == 0
    ((_, _, batch, _, params),) = calls
    common = params.train.common
    assert batch == 4 and params.resources.num_workers == 1
    assert (common.channels_last, common.augment.on_device, common.amp) == (False, False, False)
    assert shipped.train.common.channels_last and shipped.train.common.augment.on_device  # so the flags changed them


def test_bench_prepare_with_a_wrong_source_is_one_line(tmp_path, capsys):
    assert petseg_main(["bench", "prepare", "--source", str(tmp_path), *PARAMS]) == 2
    assert capsys.readouterr().err.startswith("petseg: error: --source: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("bench", [["train"], ["accuracy", "--source", "sample"]])
def test_bench_on_cuda_without_a_gpu_is_one_line(bench, capsys):
    assert petseg_main(["bench", *bench, "--device", "cuda"]) == 2
    expected = "petseg: error: --device cuda: no CUDA device is available here (use auto or cpu)\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("amp", ["bf16"])
def test_mixed_precision_and_channels_last_paths_train_on_cpu(project, amp):
    params = make_params({"train": {"common": {"amp": amp, "channels_last": True}}})
    paths = TrainPaths(best=project / "models" / "unet.pt", last=project / "models" / "unet.last.pt")
    state = Trainer("unet", params).fit(project / "data" / "prepared", paths)
    assert state.epoch == 2 and all(0 <= row["val_dice"] <= 1 for row in state.history)
    assert paths.best.exists()


def test_compiled_training_saves_weights_an_eager_model_loads(project):
    params = make_params({"train": {"common": {"compile": True}}})
    paths = TrainPaths(best=project / "models" / "unet.pt", last=project / "models" / "unet.last.pt")
    state = Trainer("unet", params).fit(project / "data" / "prepared", paths)
    assert state.epoch == 2 and all(0 <= row["val_dice"] <= 1 for row in state.history)
    saved = load_checkpoint(paths.best)
    model = model_from_weights("unet", saved["model"]["params"], saved["state_dict"])  # no torch.compile prefixes
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_bench_infer_and_baseline_report_ratios(project, synthetic_tree, synthetic_archives, monkeypatch, capsys):
    params = make_params()
    paths = TrainPaths(best=project / "models" / "unet.pt", last=project / "models" / "unet.last.pt")
    Trainer("unet", params).fit(project / "data" / "prepared", paths)
    monkeypatch.chdir(project)
    args = [
        "bench",
        "infer",
        "--model",
        str(paths.best),
        "--images",
        str(synthetic_tree / "images"),
        "--size",
        "32",
        "64",
    ]
    assert petseg_main(args) == 0
    infer = json.loads((project / "reports" / "bench" / "infer.json").read_text())
    assert infer["images"] == 32 and infer["model"] == "unet" and set(infer["sizes"]) == {"32", "64"}
    assert infer["test_images"] == len(PreparedSplit(project / "data" / "prepared", "test"))
    for rows in infer["sizes"].values():
        assert set(rows) == {"torch", "onnxruntime", "onnxruntime-int8"}
        for row in rows.values():
            assert set(row) == {"file_mb", "model_img_s", "predict_img_s", "dice_per_image"}
            assert row["model_img_s"] > 0 and row["predict_img_s"] > 0 and 0 <= row["dice_per_image"] <= 1
        assert rows["torch"]["file_mb"] == pytest.approx(paths.best.stat().st_size / 2**20, rel=1e-3)
        assert rows["onnxruntime"]["dice_per_image"] == pytest.approx(rows["torch"]["dice_per_image"], abs=0.01)
        assert rows["onnxruntime-int8"]["file_mb"] < rows["onnxruntime"]["file_mb"]
    table = capsys.readouterr().out
    number = r" +[0-9.]+"
    assert re.search(rf"^ +64  onnxruntime-int8{number * 6} +[+-][0-9.]+$", table, re.M)
    args = [
        "bench",
        "baseline",
        "--source",
        str(synthetic_archives[0]),
        "--model",
        "res34",
        "--size",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "2",
        *PARAMS,
    ]
    assert petseg_main(args) == 0
    baseline = json.loads((project / "reports" / "bench" / "baseline.json").read_text())
    assert baseline["images"] == 4 and baseline["size"] == 32
    assert baseline["ratio"] == pytest.approx(baseline["petseg_img_s"] / baseline["reference_img_s"], rel=0.01)
    assert "reference data path (PIL per item, v1, 0 workers)" in capsys.readouterr().out


def test_bench_accuracy_trains_both_recipes_and_scores_them_alike(tmp_path, synthetic_archives, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    served = []
    with_tta, trainer = accuracy.with_tta, accuracy.Trainer
    monkeypatch.setattr(accuracy, "with_tta", lambda model, tta: served.append(tta) or with_tta(model, tta))
    caps = []
    monkeypatch.setattr(
        accuracy, "Trainer", lambda name, params: caps.append(params.train.res34) or trainer(name, params)
    )
    args = ["bench", "accuracy", "--source", str(synthetic_archives[0]), "--model", "res34", "--size", "32"]
    recipe = [
        "--set",
        "train.res34.batch_size=8",
        "--set",
        "train.res34.epochs=1",
        "--set",
        "train.res34.warmup_epochs=0",
        "--set",
        "train.common.tta=hflip",
    ]
    assert petseg_main([*args, "--budget", "2", "--runs", "2", *PARAMS, *recipe]) == 0
    assert served == ["none", "hflip"] * 2  # the reference as the report scored it, petseg per train.common.tta
    result = json.loads((tmp_path / "reports" / "bench" / "accuracy-res34-32.json").read_text())
    # Both sides train until the budget ends them: petseg's epochs (1 in its params) do not stop it first.
    assert [cap.epochs for cap in caps] == [0, 0] and caps[0].warmup_epochs == 0
    assert [run["seed"] for run in result["runs"]] == [42, 43] and {run["on"] for run in result["runs"]} == {
        "test split"
    }
    for run in result["runs"]:
        for side in ("reference", "petseg"):
            figures = run[side]
            assert figures["ci95"][0] <= figures["dice_per_image"] <= figures["ci95"][1]
            assert figures["epochs"] >= 1 and figures["images_seen"] == figures["epochs"] * 16  # 22 photos, batch 8/16
            assert figures["images_per_second"] > 0
        assert run["dice_gain"] == pytest.approx(run["petseg"]["dice_per_image"] - run["reference"]["dice_per_image"])
        assert 0 <= run["petseg"]["dice_per_image_no_tta"] <= 1
    gains = [run["dice_gain"] for run in result["runs"]]
    assert result["dice_gain"] == pytest.approx(sum(gains) / 2) and result["dice_gain_min"] == min(gains)
    out = capsys.readouterr().out
    assert re.search(r"reference_res34: epoch 1 \(\d+\.\d/0\.03 min\) train_loss \d\.\d{4} [\d.]+s [\d.]+ img/s", out)
    assert "seed 43, test split: petseg - reference, test Dice per image" in out
    assert (
        "seed 42, test split: reference epochs / images seen" in out and "petseg - reference over 2 comparisons" in out
    )


def test_reference_epochs_make_the_time_they_took_petseg_s_budget(tmp_path, synthetic_archives, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    budgets, devices, trainer, reference = [], [], accuracy.Trainer, accuracy.train_reference
    monkeypatch.setattr(
        accuracy,
        "Trainer",
        lambda name, params: budgets.append(params.train.common.max_minutes) or trainer(name, params),
    )
    monkeypatch.setattr(accuracy, "train_reference", lambda *args: devices.append(args[5]) or reference(*args))
    args = ["bench", "accuracy", "--source", str(synthetic_archives[0]), "--model", "res34", "--size", "32"]
    recipe = ["--set", "train.res34.batch_size=8", "--set", "train.res34.warmup_epochs=0"]
    assert petseg_main([*args, "--reference-epochs", "2", "--device", "cpu", *PARAMS, *recipe]) == 0
    assert devices == [torch.device("cpu")]  # --device: where both sides train
    result = json.loads((tmp_path / "reports" / "bench" / "accuracy-res34-32.json").read_text())
    assert result["reference_epochs"] == 2 and "budget_s" not in result
    (run,) = result["runs"]
    assert run["reference"]["epochs"] == 2 and run["reference"]["images_seen"] == 2 * 16
    assert run["budget_s"] == run["reference"]["seconds"] and budgets == [pytest.approx(run["budget_s"] / 60)]
    assert run["petseg"]["seconds"] >= run["budget_s"]  # until the epoch that crosses it, as the reference did before
    out = capsys.readouterr().out
    assert f"reference epochs / images seen / seconds           2 / 32 / {run['budget_s']:.0f} s" in out
    assert "over 1 comparisons" not in out  # one run: no mean, lowest and highest of one figure
    # The reference side prints a line per epoch as petseg's does, so a long run's log shows where it is.
    assert re.findall(r"reference_res34: epoch (\d)/2 \(\d+\.\d min\) train_loss \d\.\d{4} ", out) == ["1", "2"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "60"], "argument --budget: not allowed with argument --reference-epochs"),
        (["--no-reference"], "--reference-epochs: the reference sets the budget, so it cannot be left out"),
    ],
)
def test_reference_epochs_need_the_reference_and_no_budget(extra, message, synthetic_archives, capsys):
    args = ["bench", "accuracy", "--source", str(synthetic_archives[0]), *PARAMS, "--reference-epochs", "3", *extra]
    try:
        code = petseg_main(args)
    except SystemExit as exited:  # argparse's own errors
        code = exited.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_bench_accuracy_without_the_reference_trains_petseg_alone_on_each_fold(
    tmp_path, synthetic_archives, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(accuracy, "train_reference", lambda *args: pytest.fail("the reference was trained"))
    args = ["bench", "accuracy", "--source", str(synthetic_archives[0]), "--model", "res34", "--size", "32"]
    recipe = ["--set", "train.res34.batch_size=4", "--set", "train.res34.warmup_epochs=0"]
    assert petseg_main([*args, "--budget", "1", "--folds", "2", "--no-reference", *PARAMS, *recipe]) == 0
    result = json.loads((tmp_path / "reports" / "bench" / "accuracy-res34-32-2fold-petseg.json").read_text())
    assert [run["on"] for run in result["runs"]] == ["fold 1/2", "fold 2/2"]
    assert all(set(run) == {"seed", "on", "budget_s", "petseg"} for run in result["runs"]) and "reference" not in result
    dices = [run["petseg"]["dice_per_image"] for run in result["runs"]]
    assert result["petseg"]["dice_per_image"] == pytest.approx(sum(dices) / 2)
    out = capsys.readouterr().out
    assert "petseg over 2 runs: mean held-out Dice per image" in out
    assert "seed 42, fold 2/2: petseg held-out Dice per image" in out and "test Dice" not in out


def test_folds_never_mix_photos_and_leave_the_test_split_out(tmp_path, prepared_project):
    prepared = prepared_project / "data" / "prepared"
    trainval = {row["name"] for split in ("train", "valid") for row in read_split_csv(list_path(prepared, split))}
    official_test = {row["name"] for row in read_split_csv(list_path(prepared, "test"))}
    held_out = []
    for k in range(3):
        fold = write_fold(prepared, tmp_path / f"f{k}", 3, k, seed=42, valid_fraction=0.1)
        names = {split: [row["name"] for row in read_split_csv(list_path(fold, split))] for split in SPLITS}
        assert not set(names["test"]) & (set(names["train"]) | set(names["valid"]))
        assert set(names["train"]) | set(names["valid"]) | set(names["test"]) == trainval  # the test split is not in it
        assert not official_test & set(names["test"])
        images = np.load(images_path(fold, "test"))
        source = {row["name"]: i for i, row in enumerate(read_split_csv(list_path(prepared, "train")))}
        for i, name in enumerate(names["test"]):  # each row is its own photo
            if name in source:
                assert np.array_equal(images[i], np.load(images_path(prepared, "train"), mmap_mode="r")[source[name]])
        held_out += names["test"]
    assert sorted(held_out) == sorted(trainval)  # every trainval photo is held out exactly once
    assert fold_names(sorted(trainval), 3, 42) == fold_names(sorted(trainval), 3, 42)


def test_folds_must_be_zero_or_at_least_two(capsys):
    with pytest.raises(SystemExit) as exited:
        petseg_main(["bench", "accuracy", "--source", "x", "--folds", "1"])
    assert exited.value.code == 2
    assert "argument --folds: must be 0 (the test split) or >= 2, got 1" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf"])
def test_the_budget_must_be_some_seconds(budget, capsys):
    with pytest.raises(SystemExit) as exited:
        petseg_main(["bench", "accuracy", "--source", "x", "--budget", budget])
    assert exited.value.code == 2
    assert f"argument --budget: must be a number of seconds > 0, got {budget}" in capsys.readouterr().err


def test_a_train_split_smaller_than_the_reference_s_batch_is_one_line(synthetic_archives, monkeypatch, capsys):
    monkeypatch.setattr(accuracy, "REFERENCE_BATCH", 64)  # the synthetic set's train split has 22 photos
    args = ["bench", "accuracy", "--source", str(synthetic_archives[0]), *PARAMS, "--budget", "1"]
    assert petseg_main(args) == 2
    assert "the train split has 22 photos, fewer than the reference's batch of 64" in capsys.readouterr().err


def test_bench_set_needs_key_and_value(tmp_path, synthetic_archives, capsys):
    args = ["bench", "accuracy", "--source", str(synthetic_archives[0]), *PARAMS, "--set", "train.res34.lr"]
    assert petseg_main(args) == 2
    assert "--set train.res34.lr: expected KEY=VALUE" in capsys.readouterr().err
