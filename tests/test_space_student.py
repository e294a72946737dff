"""The page's fast option: a consistency-distilled student beside the pipeline, run by the consistency sampler
(issue 29); every other sampler still runs the pipeline's own UNet, before and after the student was used."""

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `space/` sits next to the package

import gradio as gr
from conftest import STEMS, tiny_adapter, tiny_pipeline, tiny_unet

from mslddm.pipelines.lora import find_adapters
from space.handlers import Limits, Studio
from space.render import read_render
from space.ui import FAST_LABEL, build_demo


def tiny_student():
    """The tiny UNet with other weights (a distilled student is a copy of its teacher's UNet, trained further)."""
    unet = tiny_unet()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return unet


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    loras = tmp_path_factory.mktemp("loras")
    tiny_adapter(loras / "band")
    pipe = tiny_pipeline()
    studio = Studio(pipe, "tiny", Limits(max_duration_s=4, max_steps=10), workdir=str(tmp_path_factory.mktemp("s")),
                    loras=find_adapters(loras, STEMS, pipe.unet.config.in_channels), student=tiny_student(),
                    student_name="/somewhere/tiny-consistency")
    yield studio
    studio.close()


def run(studio, sampler, steps=2, **kwargs):
    return studio.generate({}, dict.fromkeys(STEMS, True), 1.0, steps, sampler, 0.0, "3", 1, **kwargs)


def direct(unet, sampler, steps=2):
    """The same request made in Python on a pipeline holding ``unet``."""
    pipe = tiny_pipeline()
    pipe.unet = unet
    return pipe(audio_length_in_s=1.0, num_inference_steps=steps, sampler=sampler, s_churn=0.0,
                generator=[torch.Generator().manual_seed(3)], output_type="np").stems[0]


def rendered(out) -> np.ndarray:
    return read_render(out.zip_path).stems[0][:, 0]  # the first variation's stems, mono


def test_the_consistency_sampler_runs_the_student_and_the_others_the_pipelines_unet(studio):
    teacher = studio.pipe.unet
    fast = run(studio, "consistency", steps=4)
    assert studio.pipe.unet is teacher  # put back after the call
    tolerance = 1e-4  # the render's 16-bit WAVs
    student, own = direct(studio.student, "consistency", 4), direct(tiny_unet(), "consistency", 4)
    assert np.abs(rendered(fast) - student).max() < tolerance < np.abs(student - own).max() / 10
    slow = run(studio, "dpmpp_2m")
    assert np.abs(rendered(slow) - direct(tiny_unet(), "dpmpp_2m")).max() < tolerance
    settings = json.loads(zipfile.ZipFile(fast.zip_path).read("settings.json"))
    assert settings["pipeline"] == "tiny-consistency"  # the folder's name, not the server's path
    assert json.loads(zipfile.ZipFile(slow.zip_path).read("settings.json"))["pipeline"] == "tiny"


def test_a_student_folder_brings_its_own_plan(tmp_path):
    """A student's pipeline carries its scheduler (the distillation recipe's student_sigma_min): the page samples
    the student with that plan, as `mslddm generate --pipeline STUDENT` does, and the pipeline's own afterwards."""
    from mslddm import EDMScheduler

    student = tiny_pipeline()
    student.unet = tiny_student()
    student.scheduler = EDMScheduler.from_config(student.scheduler.config, sampler="consistency", sigma_min=0.8)
    student.set_progress_bar_config(disable=True)
    studio = Studio(tiny_pipeline(), "tiny", Limits(max_duration_s=4, max_steps=10), workdir=str(tmp_path),
                    student=student, student_name="tiny-consistency")
    teacher_scheduler = studio.pipe.scheduler
    fast = rendered(run(studio, "consistency", steps=4))
    assert studio.pipe.scheduler is teacher_scheduler and studio.pipe.unet is not student.unet
    own_plan = student(audio_length_in_s=1.0, num_inference_steps=4, sampler="consistency", s_churn=0.0,
                       generator=[torch.Generator().manual_seed(3)], output_type="np").stems[0]
    teacher_plan = direct(student.unet, "consistency", 4)  # the same UNet on the teacher's plan (sigma_min 0.01)
    assert np.abs(fast - own_plan).max() < 1e-4 < np.abs(own_plan - teacher_plan).max() / 10
    studio.close()


def test_each_model_brings_its_own_level_calibration(tmp_path):
    """The teacher's stem_output_gains_db are the teacher's: the student is sampled with its own (here none), and
    the teacher's come back for the next sampler (calibrate-levels measures each pipeline with its sampler)."""
    from mslddm import EDMScheduler, MultiSourceLatentPipeline

    base = tiny_pipeline()
    teacher = MultiSourceLatentPipeline(vae=base.vae, unet=base.unet, scheduler=base.scheduler, stem_names=STEMS,
                                        stem_output_gains_db={"bass": 12.0, "piano": -6.0})
    student = tiny_pipeline()
    student.unet = tiny_student()
    student.scheduler = EDMScheduler.from_config(student.scheduler.config, sampler="consistency", sigma_min=0.8)
    studio = Studio(teacher, "tiny", Limits(max_duration_s=4, max_steps=10), workdir=str(tmp_path), student=student,
                    student_name="tiny-consistency")
    fast = rendered(run(studio, "consistency", steps=4))
    own = student(audio_length_in_s=1.0, num_inference_steps=4, sampler="consistency", s_churn=0.0,
                  generator=[torch.Generator().manual_seed(3)], output_type="np").stems[0]
    assert np.abs(fast - own).max() < 1e-4
    assert teacher.stem_output_gains_db == {"bass": 12.0, "piano": -6.0}  # back after the student's turn
    slow = rendered(run(studio, "dpmpp_2m"))
    plain = direct(tiny_unet(), "dpmpp_2m")
    bass = STEMS.index("bass")
    assert np.abs(slow[bass] - plain[bass] * 10 ** (12 / 20)).max() < 1e-3
    studio.close()


def test_an_adapter_with_the_student_is_a_sentence(studio):
    with pytest.raises(gr.Error, match="LoRA adapters are made for the pipeline's own UNet, not for the distilled"):
        run(studio, "consistency", lora="band", lora_scale=1.0)
    assert studio.pipe.unet is not studio.student
    run(studio, "dpmpp_2m", lora="band", lora_scale=1.0)  # the adapter still works with the pipeline's UNet


def test_the_menu_names_the_fast_option_only_when_there_is_a_student(studio, tmp_path):
    assert FAST_LABEL in json.dumps(build_demo(studio).config)
    plain = Studio(tiny_pipeline(), "tiny", workdir=str(tmp_path))
    assert FAST_LABEL not in json.dumps(build_demo(plain).config)
    plain.close()


def test_app_finds_the_student_beside_the_pipeline(tmp_path, capsys):
    import app

    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "mine")
    args = argparse.Namespace(student=None, pipeline=str(tmp_path / "mine"), device="cpu", dtype="float32",
                              compile="off")
    assert app._student(args, pipe) == (None, "")  # no mine-consistency folder: no fast option
    student = tiny_pipeline()
    student.unet = tiny_student()
    student.save_pretrained(tmp_path / "mine-consistency")
    found, folder = app._student(args, pipe)
    assert folder == str(tmp_path / "mine-consistency")
    torch.testing.assert_close(dict(found.unet.state_dict()), dict(student.unet.state_dict()))
    assert app._student(argparse.Namespace(**{**vars(args), "student": "none"}), pipe) == (None, "")
    other = tiny_pipeline(["bass", "drums", "keys"])
    other.save_pretrained(tmp_path / "other")
    assert app._student(argparse.Namespace(**{**vars(args), "student": str(tmp_path / "other")}), pipe) == (None, "")
    assert "its stems, latents or VAE differ from the pipeline's" in capsys.readouterr().err
