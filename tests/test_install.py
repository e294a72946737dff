"""A non-editable install (the wheel pip builds from this checkout) is complete: recipes ship as package data,
``mslddm generate`` runs, and a training script finds a recipe by name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install --no-deps --target SITE`` of the wheel of this checkout; its dependencies come from the
    running environment. Run with PYTHONPATH=SITE from outside the checkout, the installed copy is imported."""
    tmp = tmp_path_factory.mktemp("install")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(tmp / "wheel")],
                   check=True, capture_output=True, cwd=tmp)
    wheel = next((tmp / "wheel").glob("mslddm-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   capture_output=True, cwd=tmp)
    env = {**os.environ, "PYTHONPATH": str(tmp / "site"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return tmp, env


def run(cmd, tmp, env):
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_installed_copy_has_recipes_and_runs_generate(installed, saved_pipeline):
    tmp, env = installed
    code = ("import mslddm, json; from mslddm.training.recipes import load_recipe, RECIPE_DIR; "
            "print(json.dumps([mslddm.__file__, str(RECIPE_DIR), load_recipe('tiny')['preset'], "
            "load_recipe('small-cpu')['preset']]))")
    where, recipes, tiny, small = json.loads(run([sys.executable, "-c", code], tmp, env).stdout)
    assert where.startswith(str(tmp / "site")) and recipes.startswith(str(tmp / "site"))
    assert (tiny, small) == ("tiny", "small")
    run([sys.executable, "-m", "mslddm", "generate", "--pipeline", str(saved_pipeline), "--duration", "0.5",
         "--steps", "2", "--out", str(tmp / "out")], tmp, env)
    settings = json.loads(next((tmp / "out").glob("*/settings.json")).read_text())
    assert settings["steps"] == 2 and settings["sampler"] == "euler" and settings["s_churn"] == 20.0


def test_installed_copy_trains_a_recipe_by_name(installed, tmp_path):
    """The training script, copied out of the checkout, trains `--config tiny` (found in the installed package)
    for two steps on a small stem-folder dataset and exports the VAE."""
    import numpy as np
    import soundfile as sf
    from test_train_scripts import VAE_SET

    tmp, env = installed
    t = np.arange(2 * 22050) / 22050
    for split in ("train", "validation"):
        for k, stem in enumerate(("bass", "drums", "guitar", "piano")):
            folder = tmp_path / "data" / split / "Track1"
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"{stem}.wav", (0.2 * np.sin(2 * np.pi * 110 * (k + 1) * t)).astype(np.float32), 22050)
    script = tmp / "train_vae.py"
    script.write_text((REPO / "train" / "train_vae.py").read_text())
    cmd = [sys.executable, str(script), "--config", "tiny", "--output_dir", str(tmp_path / "run"), "--data_root",
           str(tmp_path / "data"), "--max_steps", "2"] + [a for s in VAE_SET for a in ("--set", s)]
    run(cmd, tmp, env)
    state = json.loads((tmp_path / "run" / "vae" / "training_state.json").read_text())
    assert state["step"] == 2 and state["recipe"]["name"] == "tiny"
