"""The distilled student bundled beside the pipeline (pipelines/mslddm-synth-small-consistency, issue 29): a complete
diffusers folder within the size budget, the bundle's VAE byte for byte, a scheduler that makes it a 4-step
consistency pipeline with its own plan, found by the page as its fast option, and a UNet that makes sound."""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mslddm.hub import BUNDLED_PIPELINE_NAME

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "pipelines" / BUNDLED_PIPELINE_NAME
STUDENT = REPO / "pipelines" / f"{BUNDLED_PIPELINE_NAME}-consistency"


def test_the_student_folder_is_complete_small_and_carries_the_bundles_vae():
    index = json.loads((STUDENT / "model_index.json").read_text())
    teacher_index = json.loads((BUNDLED / "model_index.json").read_text())
    assert {k: index[k] for k in ("vae", "unet", "scheduler", "stem_names")} == {
        k: teacher_index[k] for k in ("vae", "unet", "scheduler", "stem_names")}
    size = sum(f.stat().st_size for f in STUDENT.rglob("*") if f.is_file())
    assert size < 40 * 10**6, f"{STUDENT} holds {size / 10**6:.1f} MB (at most 40)"
    sums, teacher_sums = (json.loads((f / "checksums.json").read_text())["files"] for f in (STUDENT, BUNDLED))
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert sums[vae] == teacher_sums[vae]  # the teacher's VAE, unchanged
    assert sums["unet/diffusion_pytorch_model.safetensors"] != teacher_sums["unet/diffusion_pytorch_model.safetensors"]
    config = json.loads((STUDENT / "scheduler" / "scheduler_config.json").read_text())
    teacher_config = json.loads((BUNDLED / "scheduler" / "scheduler_config.json").read_text())
    assert (config["sampler"], config["num_inference_steps"]) == ("consistency", 4) and config["sigma_min"] == 0.8
    assert config["sigma_data"] == teacher_config["sigma_data"]
    card = (STUDENT / "README.md").read_text()
    assert BUNDLED_PIPELINE_NAME in card and "mix FAD" in card  # the teacher it was distilled from, and its numbers
    # The teacher's UNet, by sha256: the bundled one as it is now (then the plans agree), or a previous bundle that
    # the bundle's own card names as its student's teacher (a new bundle ships before its student is distilled again,
    # train/run_distill.sh). A bundle changed without either fails here.
    teacher_sha = re.search(r"Teacher UNet\s+\(sha256[^)]*\):\s+`([0-9a-f]{64})`", card)[1]
    bundle_sha = teacher_sums["unet/diffusion_pytorch_model.safetensors"]["sha256"]
    if teacher_sha == bundle_sha:
        assert config["sigma_max"] == teacher_config["sigma_max"]
    else:
        bundle_card, card = (" ".join(text.split()) for text in ((BUNDLED / "README.md").read_text(), card))
        assert f"student was distilled from the previous bundle (UNet sha256 `{teacher_sha}`)" in bundle_card
        assert "distilled from the previous bundled pipeline" in card


def test_the_page_finds_the_student_beside_the_bundle():
    pytest.importorskip("gradio")
    sys.path.insert(0, str(REPO))  # app.py sits at the top of the checkout
    import app

    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(BUNDLED, dtype=torch.float32)
    args = argparse.Namespace(student=None, pipeline=str(BUNDLED), device="cpu", dtype="float32", compile="off")
    student, folder = app._student(args, pipe)
    assert Path(folder) == STUDENT and student.scheduler.config.sampler == "consistency"


@pytest.mark.slow
def test_the_students_four_steps_make_sound():
    from mslddm import MultiSourceLatentPipeline

    student = MultiSourceLatentPipeline.from_pretrained(STUDENT, dtype=torch.float32)
    student.set_progress_bar_config(disable=True)
    out = student(audio_length_in_s=3.0, generator=torch.Generator().manual_seed(0))
    assert out.sampling["sampler"] == "consistency" and out.sampling["model_evaluations"] == 4
    assert np.isfinite(out.stems).all()
    rms = np.sqrt((out.stems[0] ** 2).mean(-1))
    assert (rms > 1e-3).all(), f"stem RMS {rms}: every stem should sound"
