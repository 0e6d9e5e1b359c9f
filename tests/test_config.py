"""Run configs: YAML/JSON in, validation, overrides, round trip."""
import json

import pytest

from mudiff.config import RunConfig, load_config, replace
from mudiff.data.tasks import parse_task


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr_g: 1e-4\n  lr_min: 1e-06\n")
    cfg = load_config(path)
    assert cfg.train.lr_g == pytest.approx(1e-4) and cfg.train.lr_min == pytest.approx(1e-6)


def test_json_round_trip_and_overrides(tmp_path):
    cfg = load_config(None, ["model.channel_mult=[1, 2]", "train.epochs=3", "model.image_size=64"])
    assert cfg.model.channel_mult == (1, 2) and cfg.train.epochs == 3
    path = tmp_path / "config.json"
    cfg.save(path)
    assert load_config(path) == cfg
    assert RunConfig.from_dict(json.loads(path.read_text())) == cfg
    assert replace(cfg, model={"num_timesteps": 8}).model.num_timesteps == 8


def test_every_config_method_has_a_method_class_and_no_class_is_unreachable():
    from mudiff.config import METHODS
    from mudiff.methods import REGISTRY

    assert sorted(METHODS) == sorted(REGISTRY) and len(set(METHODS)) == len(METHODS)  # no method in two families


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "train.epochs"),
    ("train.precision=fp8", "precision"),
    ("model.mask_head=random", "mask_head"),
    ("model.image_size=100", "image_size"),
    ("model.base_channels=12", "multiples of 8"),
    ("train.use_critic=maybe", "true or false"),
    ("data.task=t1ce", "<target>_from_"),
    ("data.task=t1_from_t1_t2_flair", "cannot also be a source"),
    ("nonsense=1", "section.key=value"),
    ("optim.lr=1", "unknown config section"),
    ("train.lambda_s=-1", "train.lambda_s must be >= 0"),
    ("train.r1_gamma=-5", "train.r1_gamma must be >= 0"),
    ("train.lr_d=.nan", "train.lr_d must be a finite number"),
    ("model.guidance_scale=.nan", "finite"),
    ("model.beta_max=.inf", "finite"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: [1\n", "cannot be parsed"),  # a YAML syntax error
    ("data: slices\n", "section 'data' must be a mapping"),
])
def test_bad_config_files_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_an_empty_section_takes_overrides(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("train:\n")
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2


def test_parse_task():
    assert parse_task("t1ce_from_flair_t2_t1") == ("t1ce", ["flair", "t2", "t1"])
    with pytest.raises(ValueError, match="twice"):
        parse_task("t1ce_from_t2_t2")


def test_an_unknown_device_is_named():
    from mudiff.runtime import resolve_device

    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_ddpm_sampling_steps_bind_only_the_methods_that_sample_with_them():
    short = ["model.ddpm_timesteps=20"]  # below the default 100 DDIM steps
    zero_shot = ["model.method=midiffusion", "data.task=t1_from_t2", "model.num_sources=1"]
    assert load_config(None, [*short, *zero_shot]).model.ddpm_timesteps == 20
    for method in ("ddpm", "class_ddpm"):
        with pytest.raises(ValueError, match="ddpm_sampling_steps <= model.ddpm_timesteps"):
            load_config(None, [*short, f"model.method={method}"])
