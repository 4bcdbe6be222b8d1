from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import TINY_PARAMS, make_params, run_stage

from petseg.data.device_augment import DeviceAugment
from petseg.errors import PetsegError
from petseg.fileio import exclusive_lock
from petseg.models import build_model, model_from_weights
from petseg.models.checkpoint import load_checkpoint, non_finite_count
from petseg.runtime import autocast_context, describe_machine, machine, native_amp
from petseg.training.loaders import progressive_size
from petseg.training.losses import BCEDiceLoss
from petseg.training.optim import WarmupCosine
from petseg.training.reports import epoch_line, write_training_reports
from petseg.training.state import TrainState, code_digest
from petseg.training.trainer import Trainer, TrainPaths

TIMING_FIELDS = ("epoch_seconds", "images_per_second")  # vary run to run


def run_training(project, name="unet", overrides=None, tracker=None):
    trainer = Trainer(name, make_params(overrides))
    paths = TrainPaths(best=project / "models" / f"{name}.pt", last=project / "models" / f"{name}.last.pt")
    state = trainer.fit(project / "data" / "prepared", paths, tracker)
    write_training_reports(state, name, project / "reports" / "train" / name)
    return state, trainer.best_weights


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history]


@pytest.mark.parametrize("name", ["unet", "res34"])
def test_stage_writes_every_output(project, name):
    result = run_stage("train", project, "--model", name, env={"PETSEG_MLFLOW": "0"})
    assert result.returncode == 0, result.stderr
    epochs = TINY_PARAMS["train"][name]["epochs"]
    assert f"train_{name}: epoch {epochs}/{epochs} train_loss" in result.stdout
    ckpt = load_checkpoint(project / "models" / f"{name}.pt")
    assert ckpt["model"]["name"] == name and ckpt["image_size"] == 32
    model = model_from_weights(name, ckpt["model"]["params"], ckpt["state_dict"])
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    out = project / "reports" / "train" / name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"best_epoch", "epochs_run", "stopped_by", "train_loss", "val_loss", "val_dice", "val_iou"}
    assert 0 <= metrics["val_dice"] <= 1 and metrics["epochs_run"] == epochs
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing) == {"total_seconds", "images_per_second", "machine"}
    assert timing["machine"] == describe_machine(machine())  # a speed names the machine it holds for
    history = (out / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,lr,augment_strength,epoch_seconds,images_per_second"
    assert len(history) == 1 + epochs
    validation = (out / "validation.csv").read_text().splitlines()
    assert validation[0] == "epoch,val_loss,val_dice,val_iou" and len(validation) == 1 + epochs
    for png in ("loss.png", "dice.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_params_give_bit_identical_metrics(tmp_path, project):
    first, _ = run_training(project)
    metrics_a = (project / "reports" / "train" / "unet" / "metrics.json").read_bytes()
    (project / "models" / "unet.last.pt").unlink()
    second, _ = run_training(project)
    assert without_timing(first.history) == without_timing(second.history)
    assert (project / "reports" / "train" / "unet" / "metrics.json").read_bytes() == metrics_a


class Interrupt(Exception):
    pass


class InterruptAfterEpoch:
    """Stands in for the MLflow tracker and 'crashes' once an epoch is fully saved."""

    def __init__(self, epoch):
        self.epoch = epoch

    def log_metrics(self, metrics, step=None):
        if step == self.epoch:
            raise Interrupt


@pytest.mark.parametrize("best_behind", [False, True], ids=["best-is-last", "best-epoch-behind"])
def test_resume_point_copies_the_best_weights_only_when_they_are_not_the_saved_ones(project, monkeypatch, best_behind):
    if best_behind:  # a falling validation Dice keeps epoch 1 the best
        validate = Trainer.validate
        monkeypatch.setattr(Trainer, "validate", lambda self, *a: validate(self, *a) | {"val_dice": 1 / a[1]})
    select_by = "dice" if best_behind else "last"
    overrides = {"train": {"common": {"select_by": select_by}, "unet": {"epochs": 3, "warmup_epochs": 1}}}
    run_training(project, overrides=overrides)
    saved = load_checkpoint(project / "models" / "unet.last.pt")
    best = load_checkpoint(project / "models" / "unet.pt")
    assert best["epoch"] == (1 if best_behind else 3)
    assert (saved["best_state_dict"] is not None) == best_behind
    kept = saved["best_state_dict"] if best_behind else saved["state_dict"]
    assert all(torch.equal(kept[key], value) for key, value in best["state_dict"].items())
    (project / "models" / "unet.pt").unlink()
    run_training(project, overrides=overrides)  # resumes after epoch 3: the best weights come from the file
    again = load_checkpoint(project / "models" / "unet.pt")
    assert all(torch.equal(again["state_dict"][key], value) for key, value in best["state_dict"].items())


def test_resume_points_wait_for_checkpoint_minutes_but_the_last_epoch_is_always_saved(project, capsys):
    overrides = {"resources": {"checkpoint_minutes": 60}, "train": {"unet": {"epochs": 3, "warmup_epochs": 1}}}
    with pytest.raises(Interrupt):
        run_training(project, overrides=overrides, tracker=InterruptAfterEpoch(2))
    assert not (project / "models" / "unet.last.pt").exists()  # an hour had not passed: nothing written yet
    run_training(project, overrides=overrides)
    assert load_checkpoint(project / "models" / "unet.last.pt")["train_state"]["epoch"] == 3
    run_training(project, overrides=overrides)
    assert "resuming after epoch 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("on_device", "schedule", "validate_every"),
    [(False, "plateau", 1), (True, "plateau", 1), (False, "cosine", 1), (False, "cosine", 2)],
    ids=["loader-augment", "device-augment", "warmup-cosine-adamw", "validate-every-2"],
)
def test_interrupted_run_resumes_to_identical_metrics(tmp_path, project, capsys, on_device, schedule, validate_every):
    recipe = {"epochs": 3, "schedule": schedule, "warmup_epochs": 1, "optimizer": "adamw"}
    common = {"augment": {"on_device": on_device}, "validate_every": validate_every}
    overrides = {"train": {"unet": recipe, "common": common}}
    uninterrupted, _ = run_training(project, overrides=overrides)
    reference = (project / "reports" / "train" / "unet" / "metrics.json").read_bytes()
    (project / "models" / "unet.last.pt").unlink()
    with pytest.raises(Interrupt):
        run_training(project, overrides=overrides, tracker=InterruptAfterEpoch(2))
    assert load_checkpoint(project / "models" / "unet.last.pt")["train_state"]["epoch"] == 2
    resumed, _ = run_training(project, overrides=overrides)
    assert "resuming after epoch 2" in capsys.readouterr().out
    assert without_timing(resumed.history) == without_timing(uninterrupted.history)
    assert (project / "reports" / "train" / "unet" / "metrics.json").read_bytes() == reference


def test_device_augmentation_gets_the_cached_uint8_batches(project, monkeypatch):
    seen = []
    real_call = DeviceAugment.__call__

    def spy(self, images, masks, generator=None):
        seen.append((images.dtype, masks.dtype, images.shape[1:], generator is not None))
        return real_call(self, images, masks, generator)

    monkeypatch.setattr(DeviceAugment, "__call__", spy)
    state, _ = run_training(project, overrides={"train": {"common": {"augment": {"on_device": True}}}})
    assert seen and set(seen) == {(torch.uint8, torch.uint8, (3, 32, 32), True)}
    assert len(seen) == 2 * state.epoch  # every training batch, no validation batch
    assert 0 <= state.history[-1]["val_dice"] <= 1


def test_checkpoint_from_other_params_is_not_resumed(project, capsys):
    run_training(project)
    state, _ = run_training(project, overrides={"train": {"unet": {"lr": 0.001}}})
    assert "is from other params, data or code; starting over" in capsys.readouterr().out
    assert state.epoch == 2 and len(state.history) == 2


def test_a_finished_run_of_other_code_is_trained_again_not_resumed(project, capsys, monkeypatch):
    run_training(project)
    run_training(project)
    assert "resuming after epoch 2" in capsys.readouterr().out  # the very same run: nothing to train
    monkeypatch.setattr("petseg.training.state.code_digest", lambda: "the digest after an edit to petseg's source")
    state, _ = run_training(project)
    assert "is from other params, data or code; starting over" in capsys.readouterr().out
    assert state.epoch == 2 and len(state.history) == 2


def test_code_digest_follows_every_source_file(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr("petseg.training.state.PACKAGE_DIR", tmp_path)
    before = code_digest()
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert code_digest() != before


def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(project, monkeypatch):
    real_forward = BCEDiceLoss.forward
    calls = []

    def nan_from_epoch_two(self, logits, target):
        calls.append(1)
        loss = real_forward(self, logits, target)
        return loss * float("nan") if len(calls) > 3 else loss  # epoch 1 = 2 train steps + 1 validation batch

    monkeypatch.setattr(BCEDiceLoss, "forward", nan_from_epoch_two)
    with pytest.raises(PetsegError, match=r"train_unet: loss became nan at epoch 2, step 1; lower train.unet.lr"):
        run_training(project)
    last = load_checkpoint(project / "models" / "unet.last.pt")
    assert last["train_state"]["epoch"] == 1 and len(last["train_state"]["history"]) == 1
    assert not (project / "models" / "unet.pt").exists()  # no half-finished run posing as a result


@pytest.mark.parametrize(
    ("bad_epoch", "kept"),
    [(2, r"Last good checkpoint kept: \S+unet.last.pt \(epoch 1\)"), (1, "No checkpoint of this run was written")],
)
def test_non_finite_weights_stop_training_and_are_never_saved(project, monkeypatch, bad_epoch, kept):
    real_epoch = Trainer.train_one_epoch

    def diverging(self, loader, epoch=0, augment=None, check_every=0):
        result = real_epoch(self, loader, epoch, augment, check_every)
        if epoch == bad_epoch:  # the loss was finite, but the step left an infinite weight behind
            with torch.no_grad():
                weight = next(self.model.parameters())
                weight[(0,) * weight.dim()] = float("inf")
        return result

    monkeypatch.setattr(Trainer, "train_one_epoch", diverging)
    with pytest.raises(PetsegError) as err:
        run_training(project)
    assert re.fullmatch(
        rf"train_unet: 1 of \d+ weights became NaN or infinite at epoch {bad_epoch}; lower train.unet.lr or check "
        rf"the data. {kept}",
        str(err.value),
    )
    assert not (project / "models" / "unet.pt").exists()
    last = project / "models" / "unet.last.pt"
    assert last.exists() == (bad_epoch == 2)
    if last.exists():
        assert non_finite_count(load_checkpoint(last)["state_dict"])[0] == 0


def test_non_finite_count_counts_exactly_and_a_huge_finite_weight_is_finite():
    weights = {"a": torch.ones(3, 4), "b": torch.full((5,), 3e38), "steps": torch.tensor(7)}  # b's norm overflows
    assert non_finite_count(weights) == (0, 17)
    weights["a"][0, :2], weights["b"][4] = float("nan"), float("-inf")
    assert non_finite_count(weights) == (3, 17)
    assert non_finite_count({"steps": torch.tensor(1)}) == (0, 0)


def test_a_non_finite_validation_loss_stops_training(project, monkeypatch):
    monkeypatch.setattr(
        Trainer, "validate", lambda self, loader, epoch: {"val_loss": float("nan"), "val_dice": 0.0, "val_iou": 0.0}
    )
    with pytest.raises(PetsegError, match=r"^train_unet: validation loss became nan at epoch 1; .* was written$"):
        run_training(project)
    assert not (project / "models" / "unet.pt").exists()


@pytest.mark.parametrize(
    ("check_every", "nan_step", "message"),
    [(1, 2, "step 2"), (4, 2, "steps 1-4"), (4, 6, "steps 5-6"), (4, None, None)],
)
def test_loss_is_read_every_check_every_steps(check_every, nan_step, message):
    # On a GPU the loss stays on the device between checks (no host sync per step); the error names the window.
    params = make_params({"train": {"common": {"device": "cpu"}, "unet": {"batch_norm": True, "lr": 1e-3}}})
    trainer = Trainer("unet", params)
    batches = [(torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 1, 32, 32), dtype=torch.uint8)) for _ in range(6)]
    if nan_step:
        batches[nan_step - 1][0][0, 0, 0, 0] = float("nan")
    real_loss, losses = trainer.loss_fn, []

    def recorded_loss(logits, target):
        losses.append(real_loss(logits, target))
        return losses[-1]

    trainer.loss_fn = recorded_loss

    def one_epoch():
        return trainer.train_one_epoch(batches, epoch=1, check_every=check_every)

    if message:
        with pytest.raises(PetsegError, match=f"^loss became nan at epoch 1, {message}$"):
            one_epoch()
    else:
        loss_sum, seen = one_epoch()
        assert seen == 12
        assert loss_sum == pytest.approx(sum(2 * loss.item() for loss in losses))


def test_early_stopping(project, capsys):
    recipe = {"epochs": 5, "lr": 1e-12, "early_stop_patience": 2, "schedule": "plateau", "plateau_patience": 10}
    overrides = {"train": {"common": {"select_by": "dice"}, "unet": recipe}}
    state, _ = run_training(project, overrides=overrides)
    assert "early stop, no improvement in 2 validations" in capsys.readouterr().out
    assert state.epoch == 3 and state.best_epoch == 1


def test_one_batch_overfits():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    masks = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    masks[:, :, 8:24, 10:20] = 1
    model = build_model("unet", base_channels=8, batch_norm=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = BCEDiceLoss(ignore_index=255)
    losses = []
    for _ in range(60):
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


def test_a_second_training_of_the_same_model_is_refused_naming_the_holder(project):
    with exclusive_lock(project / "models" / ".unet.lock", "training of unet"):
        result = run_stage("train", project, "--model", "unet", env={"PETSEG_MLFLOW": "0"})
    assert result.returncode == 2
    assert re.fullmatch(
        rf"petseg: error: training of unet is already running \(pid {os.getpid()}, started [0-9: -]+\); "
        r"wait for it to finish or stop it\n",
        result.stderr,
    )
    assert not (project / "models" / "unet.last.pt").exists()  # refused before any work


def test_a_time_budget_stops_after_the_epoch_that_crosses_it(project, capsys):
    overrides = {"train": {"common": {"max_minutes": 1e-6, "validate_every": 5}, "unet": {"epochs": 5}}}
    state, _ = run_training(project, overrides=overrides)
    assert state.epoch == 1 and state.stopped_by == "time budget"
    assert 0 <= state.history[-1]["val_dice"] <= 1  # the budget's last epoch is validated, whatever validate_every
    out = capsys.readouterr().out
    assert re.search(r"train_unet: epoch 1/5 \([0-9.]+/1e-06 min\) train_loss", out)  # however long the epoch took
    assert re.search(r"train_unet: time budget reached: [0-9.]+ of 0\.0 minutes, 1 epochs", out)
    metrics = json.loads((project / "reports" / "train" / "unet" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["stopped_by"] == "time budget"
    assert (project / "models" / "unet.pt").exists()


def test_epochs_0_trains_until_the_budget_ends_it(project, capsys):
    overrides = {"train": {"common": {"max_minutes": 0.04}, "unet": {"epochs": 0, "warmup_epochs": 1}}}
    state, _ = run_training(project, overrides=overrides)
    assert state.stopped_by == "time budget" and state.epoch >= 1
    assert state.elapsed_seconds >= 0.04 * 60  # no epoch count ended it: only the epoch that crossed the budget
    assert re.search(r"train_unet: epoch 1 \([0-9.]+/0.04 min\) train_loss", capsys.readouterr().out)


def test_an_epoch_line_shows_the_cap_and_the_budget_that_can_end_training():
    row = {"epoch": 3, "train_loss": 0.5, "lr": 1e-3, "epoch_seconds": 2.0, "images_per_second": 90.0}
    state = TrainState(elapsed_seconds=90.0, best_epoch=3)
    assert epoch_line(row, 40, state, 0, "dice").startswith("epoch 3/40 train_loss 0.5000 lr")
    assert epoch_line(row, 40, state, 600, "dice").startswith("epoch 3/40 (1.5/10 min) train_loss")
    bench = epoch_line(row, 40, state, 233.8, "dice")  # a bench's budget
    assert bench.startswith("epoch 3/40 (1.5/3.9 min) train_loss")
    line = epoch_line(row | {"val_dice": 0.8}, 0, state, 600, "dice")  # epochs 0: the budget alone
    assert line.startswith("epoch 3 (1.5/10 min) train_loss 0.5000 val_dice 0.8000 lr") and line.endswith("*best")


def test_an_epoch_line_marks_the_best_epoch_only_where_validation_chooses_it():
    row = {"epoch": 3, "train_loss": 0.5, "lr": 1e-3, "epoch_seconds": 2.0, "images_per_second": 90.0, "val_dice": 0.8}
    state = TrainState(elapsed_seconds=90.0, best_epoch=3)
    marked = [epoch_line(row, 40, state, 0, by).endswith("*best") for by in ("dice", "loss", "last")]
    assert marked == [True, True, False]
    assert not epoch_line(row | {"epoch": 4}, 40, state, 0, "dice").endswith("*best")


def test_progress_lines_reach_a_log_file_when_said_not_at_exit():
    # os._exit skips the flush at exit: a line still in stdout's buffer (a file or DVC's pipe) would be lost.
    said = (
        "import os, types; from petseg.training.trainer import Trainer; "
        "Trainer.say(types.SimpleNamespace(name='unet', context=types.SimpleNamespace(is_main=True)), 'epoch 1'); "
        "os._exit(0)"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", said], capture_output=True, text=True, env=env, check=True)
    assert done.stdout == "train_unet: epoch 1\n"


@pytest.mark.parametrize(("select_by", "best_epoch"), [("last", 5), ("dice", 2)])
def test_validation_runs_every_nth_epoch_and_after_the_last(project, capsys, monkeypatch, select_by, best_epoch):
    validated = []
    validate = Trainer.validate  # a falling validation Dice: the first validated epoch is the best
    monkeypatch.setattr(
        Trainer, "validate", lambda self, *a: validated.append(a[1]) or validate(self, *a) | {"val_dice": 1 / a[1]}
    )
    overrides = {"train": {"common": {"validate_every": 2, "select_by": select_by}, "unet": {"epochs": 5}}}
    state, _ = run_training(project, overrides=overrides)
    assert validated == [2, 4, 5] and state.best_epoch == best_epoch
    assert load_checkpoint(project / "models" / "unet.pt")["epoch"] == best_epoch
    lines = [line for line in capsys.readouterr().out.splitlines() if " train_loss " in line]
    assert ["val_dice" in line for line in lines] == [False, True, False, True, True]
    out = project / "reports" / "train" / "unet"
    assert [row.split(",")[0] for row in (out / "history.csv").read_text().splitlines()[1:]] == list("12345")
    validation = [row.split(",") for row in (out / "validation.csv").read_text().splitlines()[1:]]
    assert [(row[0], float(row[2])) for row in validation] == [("2", 0.5), ("4", 0.25), ("5", 0.2)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == best_epoch and metrics["val_dice"] == pytest.approx(1 / best_epoch)


def test_select_by_last_keeps_the_final_epoch(project):
    state, _ = run_training(project, overrides={"train": {"common": {"select_by": "last"}, "unet": {"epochs": 3}}})
    assert state.best_epoch == 3 and load_checkpoint(project / "models" / "unet.pt")["epoch"] == 3


def test_warmup_cosine_follows_steps_and_the_time_budget():
    parameter = torch.nn.Parameter(torch.zeros(1))

    def lrs(total, warmup, budget_s, elapsed):
        optimizer = torch.optim.SGD([parameter], lr=1.0)
        schedule = WarmupCosine(optimizer, total, warmup, budget_s)
        seen = [optimizer.param_groups[0]["lr"]]
        for step in range(total or 10):
            schedule.step(elapsed(step))
            seen.append(optimizer.param_groups[0]["lr"])
        return seen

    by_steps = lrs(10, 2, 0.0, lambda step: 0.0)
    assert by_steps[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # linear warm-up
    assert by_steps[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)])  # cosine to 0
    by_time = lrs(10, 0, 100.0, lambda step: 50.0 * (step + 1))  # the budget runs out after 2 of 10 steps
    assert by_time[1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5))) and by_time[2:] == pytest.approx([0.0] * 9)
    until_budget = lrs(0, 2, 100.0, lambda step: 10.0 * (step + 1))  # no steps planned (epochs 0): by time
    assert until_budget[:2] == pytest.approx([1 / 3, 2 / 3])  # the warm-up still runs, by steps
    assert until_budget[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(2, 11)])


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"), [(True, True, "bf16"), (False, True, "bf16"), (False, False, False)]
)
def test_amp_auto_is_bf16_only_on_a_cpu_that_runs_it_natively(monkeypatch, amx, avx512_bf16, expected):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert native_amp("auto", cpu) == expected
    assert native_amp("fp16", cpu) == "fp16" and native_amp(False, cpu) is False
    with autocast_context(cpu, native_amp("auto", cpu)):
        assert torch.is_autocast_enabled("cpu") == bool(expected)
        assert not expected or torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(KeyError):  # resolve "auto" first: an unresolved one must not turn into fp16
        autocast_context(cpu, "auto")


@pytest.mark.parametrize(
    ("full_strength_epochs", "enabled", "strength"), [(0, True, 1.0), (4, True, 0.5), (2, True, 1.0), (4, False, 1.0)]
)
def test_augmentation_strength_follows_the_epochs_the_run_trains(
    project, capsys, full_strength_epochs, enabled, strength
):
    augment = {"full_strength_epochs": full_strength_epochs, "enabled": enabled}
    overrides = {"train": {"common": {"augment": augment}}}
    state, _ = run_training(project, overrides=overrides)  # 2 epochs
    assert [row["augment_strength"] for row in state.history] == [strength, strength]
    lines = re.findall(r"train_unet: epoch \d/2 .*", capsys.readouterr().out)
    assert len(lines) == 2 and all(("augment x0.50 " in line) == (strength < 1) for line in lines)


def test_under_a_time_budget_the_planned_epochs_come_from_the_speed_so_far():
    overrides = {"train": {"common": {"max_minutes": 1.0}, "unet": {"epochs": 0}}}
    trainer = Trainer("unet", make_params(overrides))
    assert trainer.planned_epochs() == math.inf  # before the first epoch: unknown
    trainer.state = TrainState(epoch=5, elapsed_seconds=10.0)
    assert trainer.planned_epochs() == pytest.approx(30.0)  # 5 done in 10 s, 50 s left at 2 s each
    trainer.state = TrainState(epoch=8, elapsed_seconds=61.0)
    assert trainer.planned_epochs() == 8  # the budget is spent
    capped = Trainer("unet", make_params({"train": {"common": {"max_minutes": 1.0}, "unet": {"epochs": 12}}}))
    assert capped.budget_s == 60
    capped.state = TrainState(epoch=5, elapsed_seconds=10.0)
    assert capped.planned_epochs() == 12  # the epochs end it before the budget would


def test_progressive_resizing_trains_small_first_by_epochs_or_by_the_budget():
    common = make_params({"train": {"common": {"progressive_scale": 0.5, "progressive_until": 0.3}}}).train.common
    assert [progressive_size(128, common, p) for p in (0.0, 0.29, 0.3, 0.9)] == [64, 64, 0, 0]
    assert progressive_size(32, common, 0.0) == 0  # never below 32 px, nor at the prepared size itself
    assert progressive_size(96, common, 0.0) == 64  # a multiple of 32
    budget = {"train": {"common": {"max_minutes": 1.0}, "unet": {"epochs": 10}}}
    trainer = Trainer("unet", make_params(budget))
    assert trainer._progress(2) == pytest.approx(0.1)  # 1 of 10 epochs done
    trainer.state = TrainState(epoch=1, elapsed_seconds=30.0)
    assert trainer._progress(2) == pytest.approx(0.5)  # half the budget spent: the budget ends it first


@pytest.mark.parametrize("clock_jump_s", [0.0, 1000.0])
def test_a_budget_runs_learning_rates_within_an_epoch_never_read_this_process_clock(monkeypatch, clock_jump_s):
    # Under torchrun each process has its own clock; a learning rate read off it would differ between the replicas,
    # which then drift apart. Within an epoch the schedule reads the agreed start time plus steps at the last pace.
    overrides = {"train": {"common": {"max_minutes": 1.0}, "unet": {"epochs": 0, "warmup_epochs": 0}}}
    trainer = Trainer("unet", make_params(overrides))
    trainer.schedule = WarmupCosine(trainer.optimizer, total_steps=0, warmup_steps=0, budget_s=60.0)
    batch = trainer.cfg.batch_size
    trainer.state = TrainState(epoch=1, elapsed_seconds=20.0, history=[{"images_per_second": batch / 2}])
    assert trainer.state.step_seconds(batch) == 2.0  # the last epoch's pace: 2 s per step
    ticks = iter(range(10_000))
    monkeypatch.setattr("time.perf_counter", lambda: next(ticks) * (1 + clock_jump_s))
    used = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: used.append(optimizer.param_groups[0]["lr"]))
    batches = [(torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 32, 32, dtype=torch.uint8))] * 4
    trainer.train_one_epoch(batches, epoch=2)
    lr = trainer.cfg.lr
    expected = [lr * 0.5 * (1 + math.cos(math.pi * (20 + 2 * step) / 60)) for step in range(1, 4)]
    assert used[1:] == pytest.approx(expected)  # 22 s, 24 s, 26 s of the 60 s budget, whatever the clock says
