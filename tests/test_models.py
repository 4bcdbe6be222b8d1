from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet34

from petseg.data.layout import IGNORE
from petseg.errors import PetsegError
from petseg.evaluation.loop import evaluate_loader
from petseg.evaluation.metrics import confusion_counts
from petseg.models import build_model, model_from_weights, with_tta
from petseg.models import res34_unet as res34_module

# Parameter counts at full width, as in the reference report.
FULL_SIZE_PARAMETERS = {"unet": 31.03e6, "res34": 24.42e6}
# Small widths keep the shape tests fast.
SMALL = {"unet": {"base_channels": 8}, "res34": {}}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["unet", "res34"])
class TestModels:
    @pytest.fixture
    def model(self, name):
        torch.manual_seed(0)
        return build_model(name, **SMALL[name]).eval()

    @pytest.mark.parametrize("size", [(64, 64), (96, 96), (256, 256), (96, 160), (75, 121)])
    def test_output_shape_equals_input_shape(self, model, size):
        with torch.no_grad():
            out = model(torch.randn(2, 3, *size))
        assert out.shape == (2, 1, *size)
        assert torch.isfinite(out).all()

    def test_flip_tta_serves_a_mirror_symmetric_model(self, model):
        photos = torch.randn(2, 3, 64, 64)
        served = with_tta(model, "hflip")
        with torch.no_grad():
            plain, averaged, of_mirrored = model(photos), served(photos), served(photos.flip(-1))
        assert torch.allclose(of_mirrored, averaged.flip(-1), atol=1e-5)  # mirror the photo: the mask mirrors too
        expected = (plain + model(photos.flip(-1)).flip(-1)) / 2
        assert torch.allclose(averaged, expected, atol=1e-6) and not torch.allclose(averaged, plain, atol=1e-3)
        assert with_tta(model, "none") is model

    def test_one_evaluation_pass_scores_the_flip_tta_and_the_network_alone(self, model):
        torch.manual_seed(1)
        photos, masks = torch.randn(6, 3, 32, 32), torch.randint(0, 3, (6, 32, 32), dtype=torch.uint8)
        masks[masks == 2] = IGNORE
        loader = DataLoader(TensorDataset(photos, masks), batch_size=4)
        cpu = torch.device("cpu")
        served, alone = (evaluate_loader(m, loader, cpu, 0.5) for m in (with_tta(model, "hflip"), model))
        assert alone.plain_counts is None and torch.equal(served.plain_counts, alone.counts)
        with torch.no_grad():
            averaged = (model(photos) + model(photos.flip(-1)).flip(-1)) / 2
        assert torch.equal(served.counts, confusion_counts(torch.sigmoid(averaged) > 0.5, masks, IGNORE))

    def test_gradients_reach_every_parameter(self, model):
        model.train()
        loss = model(torch.randn(2, 3, 64, 64)).mean()
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert missing == []
        assert any(p.grad.abs().sum() > 0 for p in model.parameters())

    def test_parameter_count_matches_the_reference(self, name):
        count = count_parameters(build_model(name))
        print(f"{name}: {count / 1e6:.2f} M parameters")
        assert count == pytest.approx(FULL_SIZE_PARAMETERS[name], rel=0.005)

    def test_rebuild_from_weights_gives_identical_outputs(self, name, model):
        clone = model_from_weights(name, SMALL[name], model.state_dict())
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(model(x), clone(x))


def test_unet_width_and_batch_norm_options():
    plain = build_model("unet", base_channels=16)
    normed = build_model("unet", base_channels=16, batch_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in normed.modules()) == 18
    assert count_parameters(plain) == pytest.approx(31.03e6 / 16, rel=0.01)


def test_unknown_tta_is_a_clear_error():
    with pytest.raises(PetsegError, match=r"unknown test-time augmentation 'vflip' \(allowed: none, hflip\)"):
        with_tta(torch.nn.Identity(), "vflip")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(PetsegError, match=r"unknown model 'vgg' \(allowed: unet, res34\)"):
        build_model("vgg")


def test_res34_encoder_is_torchvision_resnet34_and_loads_local_weights(tmp_path):
    reference = resnet34()
    path = tmp_path / "resnet34.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("res34", pretrained="imagenet", weights_path=str(path))
    assert torch.equal(model.stem[0].weight, reference.conv1.weight)
    assert torch.equal(model.layers[3][2].conv2.weight, reference.layer4[2].conv2.weight)


def test_imagenet_weights_offline_is_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(res34_module.ResNet34_Weights.IMAGENET1K_V1, "get_state_dict", offline, raising=False)
    with pytest.raises(PetsegError) as err:
        build_model("res34", pretrained="imagenet")
    message = str(err.value)
    assert "cannot get https://download.pytorch.org/models/resnet34-b627a593.pth" in message
    assert "train.res34.weights_path" in message and "resnet34-b627a593.pth" in message


def test_bad_weights_file_is_one_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("not weights")
    with pytest.raises(PetsegError, match=r"train.res34.weights_path: cannot load"):
        build_model("res34", pretrained="imagenet", weights_path=str(path))
