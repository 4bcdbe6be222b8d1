from __future__ import annotations

import pytest
import yaml
from helpers import deep_merge, make_params, run_stage, shipped_params, shipped_params_file

from petseg.config import ConfigError, load_params, parse_params
from petseg.schema import set_dotted, to_flat_dict


def flatten(raw: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_repo_params_are_valid_and_complete():
    """params.yaml spells out every key, so no pipeline result hinges on a default hidden in code."""
    params = load_params(shipped_params_file())
    assert params.prepare.image_size == 64 and params.prepare.source == "sample"  # the bundled sample
    raw = yaml.safe_load(shipped_params_file().read_text())
    assert set(flatten(raw)) == set(to_flat_dict(params))


def test_model_params_are_the_architecture_keys():
    params = parse_params(shipped_params())
    assert params.train.res34.pretrained is False
    assert params.train.model("unet").model_params() == {"base_channels": 16, "batch_norm": True}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty (every section is required: prepare, train, evaluate, infer, promote, resources, tracking)"),
        ("prepare: {}\n", "train: missing (every key is required, as in the shipped params.yaml)"),
    ],
)
def test_an_empty_or_partial_file_is_one_line_naming_what_is_missing(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value) == f"{tmp_path / 'params.yaml'}: {message}"


@pytest.mark.parametrize(
    "key", ["train.unet.base_channels", "train.common.augment.hflip", "train.common.threshold", "tracking.experiment"]
)
def test_every_key_is_required(key):
    raw = shipped_params()
    *parents, leaf = key.split(".")
    section = raw
    for part in parents:
        section = section[part]
    del section[leaf]
    with pytest.raises(ConfigError, match=f"^params.yaml: {key}: missing"):
        parse_params(raw)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("key", ["train.unet.lr", "train.res34.weight_decay", "prepare.valid_fraction"])
def test_non_finite_floats_are_refused(tmp_path, key, value):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(shipped_params()))
    with pytest.raises(ConfigError, match=f"^{path}: {key}: must be a finite number"):
        load_params(path, {key: value})


def test_overrides_apply_on_top_of_the_file_and_are_validated():
    params = load_params(shipped_params_file(), {"prepare.image_size": 64, "train.common.device": "cpu"})
    assert params.prepare.image_size == 64 and params.train.common.device == "cpu"
    with pytest.raises(ConfigError, match="prepare.image_sise: unknown key"):
        load_params(shipped_params_file(), {"prepare.image_sise": 64})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prepare": {"image_size": 100}}, "prepare.image_size: must be a positive multiple of 32 (got 100)"),
        ({"prepare": {"image_size": -32}}, "prepare.image_size: must be a positive multiple of 32"),
        ({"prepare": {"image_size": "256"}}, "prepare.image_size: must be an integer (got '256')"),
        ({"prepare": {"valid_fraction": 1.0}}, "prepare.valid_fraction: must be in (0, 1)"),
        ({"prepare": {"boundary": "edge"}}, "prepare.boundary: must be one of 'pet', 'background', 'ignore'"),
        ({"prepare": {"checksums": {"images.tar.gz": "abc"}}}, "prepare.checksums.images.tar.gz"),
        ({"prepare": {"sorce": "x"}}, "prepare.sorce: unknown key (allowed under prepare: source,"),
        ({"trian": {}}, "trian: unknown key (allowed at the top level: prepare, train,"),
        ({"train": {"res34": {"lr": 0}}}, "train.res34.lr: must be > 0 (got 0.0)"),
        ({"train": {"unet": {"lr": -1e-3}}}, "train.unet.lr: must be > 0"),
        ({"train": {"unet": {"batch_size": 0}}}, "train.unet.batch_size: must be >= 1 (got 0)"),
        ({"train": {"unet": {"epochs": True}}}, "train.unet.epochs: must be an integer (got True)"),
        ({"train": {"unet": {"epochs": -1}}}, "train.unet.epochs: must be >= 0 (0 = until the time budget) (got -1)"),
        (
            {"train": {"res34": {"epochs": 0}}},
            "train.res34.epochs: must be >= 1, or 0 with a train.common.max_minutes (got 0)",
        ),
        ({"train": {"unet": {"epochs": 3, "warmup_epochs": 3}}}, "train.unet.warmup_epochs: must be in [0, epochs)"),
        ({"train": {"common": {"device": "tpu"}}}, "train.common.device: must be one of 'auto', 'cpu', 'cuda'"),
        ({"train": {"common": {"augment": {"crop_scale": [0.9, 0.1]}}}}, "train.common.augment.crop_scale"),
        ({"train": {"res34": {"pretrained": "yes"}}}, "train.res34.pretrained: must be one of false, 'imagenet'"),
        ({"train": {"res34": {"weights_path": "w.pth"}}}, "train.res34.weights_path: must be null unless"),
        ({"train": {"common": {"threshold": 1.5}}}, "train.common.threshold: must be in (0, 1)"),
        ({"train": ["unet"]}, "train: must be a mapping"),
    ],
)
def test_invalid_values_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_params(deep_merge(shipped_params(), raw))
    assert message in str(err.value)


def test_model_lookup_rejects_unknown_model():
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        make_params().train.model("vgg")


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  image_size: [1,\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line \d+: not valid YAML"):
        load_params(path)


@pytest.mark.parametrize("stage", ["prepare", "evaluate", "infer"])
def test_stage_refuses_bad_params_in_one_line_before_any_work(tmp_path, stage):
    bad = deep_merge(shipped_params(), {"prepare": {"image_size": 100}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    result = run_stage(stage, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "petseg: error: params.yaml: prepare.image_size: must be a positive multiple of 32 (got 100)"
    )
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()


def test_train_stage_refuses_unknown_model(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    result = run_stage("train", tmp_path, "--model", "vgg")
    assert result.returncode == 2
    assert "invalid choice: 'vgg'" in result.stderr


@pytest.mark.parametrize(
    "text,message",
    [
        ("prepare:\n  seed: 1\n  seed: 2\n", "line 3: not valid YAML (key 'seed' is written twice, first on line 2)"),
        ("tracking:\n  experiment: a\ntracking:\n  experiment: b\n", "line 3: not valid YAML (key 'tracking' is "),
    ],
)
def test_a_key_written_twice_is_refused_naming_it_and_its_lines(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'params.yaml'}: {message}")


@pytest.mark.parametrize("key", ["train.common.seed", "prepare.seed"])
@pytest.mark.parametrize("seed", [2**32, 2**64, -1])
def test_a_seed_torch_or_numpy_would_refuse_is_refused_at_load(key, seed):
    raw = shipped_params()
    set_dotted(raw, key, seed)
    with pytest.raises(ConfigError, match=rf"^params.yaml: {key}: must be in \[0, 2\*\*32\) \(got {seed}\)$"):
        parse_params(raw)
