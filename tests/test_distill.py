"""Consistency distillation (train/distill.py, docs/distillation.md): the loss's math on Gaussian data, and the script
end to end through real ``accelerate launch`` on a tiny teacher and its latents: checkpoints, exact resume, the
exported student (sampler consistency, 4 steps) with the teacher's folder untouched, and one sentence for a bad
teacher or latents made by another VAE."""

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import STEMS, accelerate_launch, tiny_pipeline
from safetensors.torch import load_file

from mslddm.training import consistency

REPO = Path(__file__).resolve().parents[1]
SR = 22050
SD = 0.4


# ------------------------------------------------------------------------------------------------------------------
# The loss on data ~ N(0, SD^2), where the ODE and its consistency function are known in closed form
# ------------------------------------------------------------------------------------------------------------------
def gaussian_denoiser(x, sigma):
    sigma = torch.as_tensor(sigma).reshape(-1, *([1] * (x.ndim - 1)))
    return x * SD**2 / (sigma**2 + SD**2)


def exact_consistency(sigma_min):
    """f(x, sigma): the end (at sigma_min) of the probability-flow ODE trajectory through x, x(s) ~ sqrt(SD^2 + s^2)."""
    def f(x, sigma):
        sigma = torch.as_tensor(sigma).reshape(-1, *([1] * (x.ndim - 1)))
        return x * math.sqrt(SD**2 + sigma_min**2) / (sigma**2 + SD**2).sqrt()
    return f


def test_teacher_steps_follow_the_closed_form_ode_with_their_local_order():
    """One step's error against x(s) ~ sqrt(SD^2 + s^2): halving the step divides it by about 2^(order + 1)."""
    x, high = torch.ones(3, 1, 1, dtype=torch.float64), torch.tensor([2.0, 1.0, 0.3], dtype=torch.float64)

    def error(solver, h):
        low = high - h * high
        exact = ((SD**2 + low**2) / (SD**2 + high**2)).sqrt()
        return (consistency.teacher_ode_step(gaussian_denoiser, x, high, low, solver).flatten() - exact).abs().max()

    assert 3 < error("euler", 0.1) / error("euler", 0.05) < 5
    assert 6 < error("heun", 0.1) / error("heun", 0.05) < 10
    assert error("heun", 0.1) < error("euler", 0.1) / 10


def test_the_exact_consistency_function_has_almost_no_loss_and_a_denoiser_has_some():
    sigmas = consistency.distillation_sigmas(40, 0.01, 3.0)
    assert len(sigmas) == 40 and sigmas[0] == pytest.approx(3.0) and sigmas[-1] == pytest.approx(0.01)
    x0 = SD * torch.randn(64, 2, 32, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    index = consistency.draw_pairs(64, len(sigmas), torch.Generator().manual_seed(2))
    assert index.min() >= 0 and index.max() == len(sigmas) - 2
    kwargs = dict(x0=x0, noise=noise, index=index, sigmas=sigmas, distance="l2")
    exact = consistency.distillation_loss(exact_consistency(0.01), gaussian_denoiser, **kwargs)
    denoiser = consistency.distillation_loss(gaussian_denoiser, gaussian_denoiser, **kwargs)
    assert exact < 1e-4 * denoiser and denoiser > 1e-5  # measured: 9e-10 and 1e-4


def test_distances_weights_and_known_channels():
    a, b = torch.zeros(2, 2, 4), torch.full((2, 2, 4), 0.1)
    torch.testing.assert_close(consistency.consistency_distance(a, b, "l2"), torch.full((2,), 0.01))
    huber = consistency.consistency_distance(a, b, "pseudo_huber", huber_c=0.03)
    torch.testing.assert_close(huber, torch.full((2,), math.sqrt(0.01 + 0.03**2) - 0.03))
    weight = torch.tensor([True, False])[None, :, None].expand(2, 2, 4)
    b[:, 1] = 5.0  # only the unweighted channel is wrong
    torch.testing.assert_close(consistency.consistency_distance(a, b, "l2", weight=weight), torch.full((2,), 0.01))
    sigmas = consistency.distillation_sigmas(8, 0.01, 3.0)
    w = consistency.pair_weights(sigmas, torch.arange(7), "inverse_step")
    assert w.mean().item() == pytest.approx(1.0) and (w.diff() > 0).all()  # the small steps near sigma_min weigh most


# ------------------------------------------------------------------------------------------------------------------
# train/distill.py end to end
# ------------------------------------------------------------------------------------------------------------------

def launch(out, teacher, latents, extra=(), sets=(), check=True):
    args = ["--config", "distill-tiny", "--output_dir", out, "--teacher", teacher, "--latents", latents,
            "--set", "distill.checkpointing_steps=2", *extra]
    for s in sets:
        args += ["--set", s]
    return accelerate_launch("distill.py", args, check=check)


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def teacher_and_latents(tmp_path_factory):
    """A tiny teacher pipeline, two 2-s train tracks and one validation track, and their latents."""
    from mslddm.cli import main

    root = tmp_path_factory.mktemp("distill")
    tiny_pipeline().save_pretrained(root / "teacher")
    t = np.arange(2 * SR) / SR
    for split, n in (("train", 2), ("validation", 1)):
        for i in range(n):
            folder = root / "data" / split / f"Track{split[0]}{i}"
            folder.mkdir(parents=True)
            for k, stem in enumerate(STEMS):
                tone = 0.2 * np.sin(2 * np.pi * (55 * (k + 1) + 10 * i) * t) * np.exp(-3 * (t % 0.5))
                sf.write(folder / f"{stem}.wav", tone.astype(np.float32), SR)
    assert main(["encode-latents", str(root / "data"), "--vae", str(root / "teacher"), str(root / "latents"),
                 "--quiet"]) == 0
    return root / "teacher", root / "latents"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_and_latents):
    """4 steps straight, and 2 steps + resume to 4; the teacher's folder hashed before and after."""
    teacher, latents = teacher_and_latents
    base = tmp_path_factory.mktemp("distill-runs")
    before = folder_hash(teacher)
    straight = launch(base / "straight", teacher, latents, ["--max_steps", "4"])
    launch(base / "split", teacher, latents, ["--max_steps", "2"])
    resumed = launch(base / "split", teacher, latents, ["--max_steps", "4", "--resume_from_checkpoint", "latest"])
    return base, straight, resumed, before == folder_hash(teacher)


@pytest.mark.slow
def test_resume_is_exact_for_the_student_and_its_ema(runs):
    base, _, resumed, _ = runs
    assert "Resumed from" in resumed.stderr
    a, b = base / "straight" / "checkpoint-4", base / "split" / "checkpoint-4"
    for name in ("model.safetensors", "unet_ema/diffusion_pytorch_model.safetensors"):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name


@pytest.mark.slow
def test_the_run_logs_progress_and_learns_away_from_the_teacher(runs, teacher_and_latents):
    base, straight, _, _ = runs
    assert "step 3/4" in straight.stderr and "ETA" in straight.stderr and "loss=" in straight.stderr
    state = json.loads((base / "straight" / "checkpoint-4" / "training_state.json").read_text())
    assert state["step"] == 4 and state["distillation"]["teacher"] == str(teacher_and_latents[0])
    assert all(math.isfinite(v) for v in state["validation"].values()) and "loss" in state["validation"]
    student = load_file(base / "straight" / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors")
    teacher = load_file(teacher_and_latents[0] / "unet" / "diffusion_pytorch_model.safetensors")
    assert student.keys() == teacher.keys() and any(not torch.equal(student[k], teacher[k]) for k in student)


@pytest.mark.slow
def test_the_export_is_a_consistency_pipeline_and_the_teacher_is_untouched(runs, teacher_and_latents):
    from mslddm import MultiSourceLatentPipeline

    base, _, _, teacher_untouched = runs
    assert teacher_untouched
    folder = base / "straight" / "pipeline"
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (config["sampler"], config["num_inference_steps"]) == ("consistency", 4)
    teacher_config = json.loads((teacher_and_latents[0] / "scheduler" / "scheduler_config.json").read_text())
    assert config["sigma_min"] == 0.4 and teacher_config["sigma_min"] == 0.01  # the student's plan stops at 0.4
    card = (folder / "README.md").read_text()
    assert str(teacher_and_latents[0]) in card and "Consistency distillation steps: 4" in card
    exported = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    ema = load_file(base / "straight" / "checkpoint-4" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    pipe = MultiSourceLatentPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(audio_length_in_s=0.5, generator=torch.Generator().manual_seed(0))
    assert out.sampling["sampler"] == "consistency" and out.sampling["model_evaluations"] == 4
    assert out.stems.shape == (1, 4, SR // 2) and np.isfinite(out.stems).all()
    given = pipe(stems={"bass": out.stems[0, 0]}, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(given.stems[0, 0], out.stems[0, 0])
    # `mslddm export` makes the same student from the run (here in float16, as the bundle ships)
    from mslddm.cli import main

    assert main(["export", str(base / "straight"), "--out", str(base / "half"), "--dtype", "float16"]) == 0
    weights = load_file(base / "half" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.float16 for w in weights.values())
    assert MultiSourceLatentPipeline.from_pretrained(base / "half").scheduler.config.sampler == "consistency"


def distill_script():
    """train/distill.py as a module (the checks of a bad teacher or latents run in this process: no launcher)."""
    import importlib.util

    if "distill_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("distill_script", REPO / "train" / "distill.py")
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up there
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["distill_script"]


def test_a_conditioned_teacher_and_its_student_read_the_same_given_stems():
    """A teacher trained with given stems (conditioning_channels > 0): every teacher and student evaluation of a
    step gets the same conditioning input, and the loss leaves the given channels out."""
    import types

    pipe = tiny_pipeline()
    config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    pipe.unet = type(pipe.unet).from_config({**config, "conditioning_channels": len(STEMS) * 5})
    student = type(pipe.unet).from_config(pipe.unet.config)
    seen = {"teacher": [], "student": []}
    for name, model in (("teacher", pipe.unet), ("student", student)):
        model.register_forward_hook(lambda m, args, kwargs, out, name=name: seen[name].append(kwargs["conditioning"]),
                                    with_kwargs=True)
    t = types.SimpleNamespace(teacher=pipe, student=student, accelerator=types.SimpleNamespace(unwrap_model=lambda m: m),
                              cfg={"conditioning": {"given_probability": 0.5, "total_probability": 0.0}},
                              sigmas=consistency.distillation_sigmas(8, 0.01, 3.0), sigma_data=0.4)
    generators = {n: torch.Generator().manual_seed(i) for i, n in enumerate(("sigma", "noise", "stems"))}
    loss = distill_script().batch_loss(t, torch.randn(4, len(STEMS) * 4, 16), generators)
    assert torch.isfinite(loss) and loss.requires_grad
    assert len(seen["teacher"]) == 2 and len(seen["student"]) == 2  # Heun: 2 teacher evaluations; online + target
    first = seen["teacher"][0]
    assert first.shape == (4, len(STEMS) * 5, 16) and first[:, -len(STEMS):].any()  # some stems are given
    assert all(torch.equal(c, first) for c in seen["teacher"] + seen["student"])


@pytest.mark.parametrize("case, sentence", [
    ("no teacher", "is not a pipeline folder (it has no model_index.json)"),
    ("other vae", "were encoded by another VAE than the teacher's"),
    ("other stems", "but the teacher generates ['bass', 'drums', 'guitar', 'piano']"),
    ("plan past sigma_max", "distill.student_sigma_min (5) must be below the teacher's sigma_max (3)"),
])
def test_a_bad_teacher_or_mismatched_latents_is_one_sentence(case, sentence, tmp_path, teacher_and_latents, capsys):
    from mslddm.training.runner import run_main

    teacher, latents = teacher_and_latents
    extra = []
    if case == "no teacher":
        teacher = tmp_path / "missing"
    elif case == "plan past sigma_max":
        extra = ["--set", "distill.student_sigma_min=5"]
    else:
        shutil.copytree(latents, tmp_path / "latents")
        latents = tmp_path / "latents"
        header = json.loads((latents / "latents.json").read_text())
        if case == "other vae":
            header["vae_fingerprint"] = [v + 0.5 for v in header["vae_fingerprint"]]
        else:
            header["stems"] = ["drums", "bass", "guitar", "piano"]
        (latents / "latents.json").write_text(json.dumps(header))
    argv = ["--config", "distill-tiny", "--output_dir", str(tmp_path / "run"), "--teacher", str(teacher),
            "--latents", str(latents), *extra]
    with pytest.raises(SystemExit) as stopped:
        run_main(distill_script().main, argv)
    assert stopped.value.code == 1
    err = capsys.readouterr().err  # the teacher's loading bar, then the sentence
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and sentence in last, err
    assert not (tmp_path / "run").exists()  # checked before anything was written


def test_the_benchmark_takes_a_students_steps_as_one_spec():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from benchmark_generation import sampler_specs
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert sampler_specs(["euler:50", "runs/student/@consistency:1/2/4/8"]) == [
        ("euler", 50, None), ("consistency", 1, "student"), ("consistency", 2, "student"), ("consistency", 4, "student"),
        ("consistency", 8, "student")]
    with pytest.raises(SystemExit, match="SAMPLER:STEPS"):
        sampler_specs(["consistency:4/0"])


def test_the_benchmark_has_a_decode_only_floor_and_reads_fad_from_an_evaluation(tmp_path):
    import json

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from benchmark_generation import fad_columns, sampler_specs
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert sampler_specs(["decode", "consistency:4"]) == [("decode", 0, None), ("consistency", 4, None)]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"total": {"fad_interval": {"mix": {"value": 30.654, "low": 28.06, "high": 33.45}}}}))
    assert fad_columns([f"euler:50={results}", f"runs/student/@consistency:4={results}"]) == {
        (None, "euler x50"): "30.65 [28.06, 33.45]", ("student", "consistency x4"): "30.65 [28.06, 33.45]"}
    with pytest.raises(SystemExit, match="no mix FAD"):
        fad_columns([f"euler:50={tmp_path / 'missing.json'}"])
