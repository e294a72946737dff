"""Recipes are checked when read: unknown keys named with the nearest known one, types and ranges, YAML errors with
file and line, --max_steps; every shipped recipe passes (issue 27, item 9)."""

import argparse
from pathlib import Path

import pytest

from mslddm.training.recipe_schema import RecipeError
from mslddm.training.recipes import RECIPE_DIR, load_recipe
from mslddm.training.runner import load_run_recipe


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
def test_every_shipped_recipe_passes(recipe):
    load_recipe(recipe)


@pytest.mark.parametrize("override, sentence", [
    ("msldm.max_stepz=3", "unknown key 'msldm.max_stepz'. Did you mean 'msldm.max_steps'?"),
    ("vae.learning_rat=1e-4", "unknown key 'vae.learning_rat'. Did you mean 'vae.learning_rate'?"),
    ("msldm.batch_size=0", "'msldm.batch_size' must be an integer >= 1, got 0"),
    ("msldm.checkpointing_steps=0", "'msldm.checkpointing_steps' must be an integer >= 1, got 0"),
    ("vae.log_every=0", "'vae.log_every' must be an integer >= 1, got 0"),
    ("msldm.batch_size=2.5", "must be an integer >= 1, got 2.5"),
    ("msldm.learning_rate=.nan", "'msldm.learning_rate' must be a finite number in [0.0, inf], got nan"),
    ("msldm.ema_decay=1.0", "'msldm.ema_decay' must be a finite number in [0.0, 1.0), got 1.0"),
    ("msldm.use_ema=yes please", "'msldm.use_ema' must be true or false"),
    ("msldm.conditioning.given_probability=2", "must be a finite number in [0.0, 1.0], got 2"),
    ("msldm.scheduler.sigma_dat=0.5", "Did you mean 'msldm.scheduler.sigma_data'?"),
    ("model=isdlm", "'model' must be one of ['msldm', 'isldm', 'mixldm', 'msdm'], got 'isdlm'"),
    ("vae.discriminator=3", "'vae.discriminator' must be a section (a mapping), got 3"),
])
def test_a_bad_value_is_one_sentence_naming_the_key(override, sentence):
    with pytest.raises(RecipeError) as error:
        load_recipe("tiny", [override])
    message = str(error.value)
    assert sentence in message and "tiny.yaml" in message and "--set" in message


def test_legitimate_values_pass():
    # learning rate 0 freezes a part (the conditioning-only test does it); null turns gradient clipping off
    load_recipe("tiny", ["msldm.learning_rate=0", "msldm.grad_clip=null", "msldm.model={channels: 8}",
                         "msldm.scheduler={sigma_data: null}", "vae.posterior_logvar_init=-6"])


def test_broken_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("preset: tiny\nmsldm:\n  batch_size: [1, 2\n  learning_rate: 1e-4\n")
    with pytest.raises(RecipeError, match=r"broken.yaml is not valid YAML at line \d+, column \d+"):
        load_recipe(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="must hold a mapping, got list"):
        load_recipe(bad)


def test_a_bad_key_in_a_base_recipe_is_found_through_its_child(tmp_path):
    (tmp_path / "parent.yaml").write_text("base: tiny\nmsldm:\n  lr_warmup_stesp: 3\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nseed: 1\n")
    with pytest.raises(RecipeError, match="Did you mean 'msldm.lr_warmup_steps'"):
        load_recipe(tmp_path / "child.yaml")


@pytest.mark.parametrize("steps", [0, -1])
def test_max_steps_below_one_is_refused(steps):
    args = argparse.Namespace(config="tiny", set=[], max_steps=steps, data_root=None)
    with pytest.raises(RecipeError, match=f"--max_steps must be at least 1, got {steps}"):
        load_run_recipe(args, "msldm")
    assert Path(RECIPE_DIR).is_dir()


def test_the_sigma80_recipe_is_the_ablation_row_it_names():
    """small-cpu-sigma80 (the accumulating run of issue 24) is train/run_ablations.sh's row `sigma-80`: the
    frame-rate recipe with these four overrides, so runs of either continue each other."""
    import re

    script = (Path(__file__).resolve().parents[1] / "train" / "run_ablations.sh").read_text()
    row = re.search(r'\[sigma-80\]="small-cpu-fullrate ([^"]*)"', script).group(1)
    overrides = re.findall(r"--set (\S+)", row)
    assert len(overrides) == 4
    named, row_recipe = load_recipe("small-cpu-sigma80"), load_recipe("small-cpu-fullrate", overrides)
    assert named["msldm"] == row_recipe["msldm"] and named["msldm"]["scheduler"]["sigma_max"] == 80
