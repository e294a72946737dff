"""The training scripts end to end through real ``accelerate launch`` on CPU, with the tiny recipe shrunk further
by ``--set`` overrides: checkpoints, exact resume, export, and a 2-process run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from conftest import accelerate_launch

pytestmark = pytest.mark.slow  # real subprocesses / servers: seconds each

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
STEMS = ["bass", "drums", "guitar", "piano"]
SR = 22050

VAE_SET = [
    "vae.model={encoder_dim: 4, decoder_dim: 16, latent_channels: 4}",
    "vae.discriminator={periods: [2, 3], period_widths: [2, 2, 2, 2, 2], fft_sizes: [512], stft_channels: 2}",
    "vae.batch_size=2", "vae.clip_seconds=0.25", "vae.validation_seconds=0.5", "vae.validation_segments=1",
    "vae.checkpointing_steps=2", "vae.validate_every=100", "vae.log_every=1", "vae.checkpoints_total_limit=5",
    "vae.discriminator_start_step=1",  # step 0 is the adversarial warm-up (mel + KL only); resume crosses neither
    "vae.posterior_logvar_init=-4",
]
UNET_SET = [
    "msldm.model={channels: 16, patch_factor: 2, multipliers: [1, 2, 1], factors: [2, 2], num_blocks: [1, 1], "
    "attentions: [false, true], attention_heads: 2, attention_features: 8, resnet_groups: 4}",
    "msldm.batch_size=2", "msldm.segment_frames=16", "msldm.validation_seconds=0.5", "msldm.validation_segments=1",
    "msldm.validation_steps=2", "msldm.checkpointing_steps=2", "msldm.validate_every=100", "msldm.log_every=1",
    "msldm.checkpoints_total_limit=5", "msldm.ema_decay=0.9",
]


def launch(script, out, data, extra=(), sets=(), processes=1, check=True):
    args = ["--config", "tiny", "--output_dir", out, "--data_root", data, *extra]
    for s in sets:
        args += ["--set", s]
    return accelerate_launch(script, args, processes, check)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two train tracks and one validation track of 2 s, four stems of decaying tones and noise bursts."""
    root = tmp_path_factory.mktemp("stems")
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    for split, n in (("train", 2), ("validation", 1)):
        for i in range(n):
            folder = root / split / f"Track{split[0]}{i}"
            folder.mkdir(parents=True)
            for k, stem in enumerate(STEMS):
                tone = 0.2 * np.sin(2 * np.pi * (55 * (k + 1) + 10 * i) * t) * np.exp(-3 * (t % 0.5))
                audio = tone + 0.02 * rng.standard_normal(t.size) * (k == 1)
                sf.write(folder / f"{stem}.wav", audio.astype(np.float32), SR)
    return root


@pytest.fixture(scope="module")
def vae_runs(tmp_path_factory, data):
    """VAE: 4 steps straight, and 2 steps + resume to 4."""
    base = tmp_path_factory.mktemp("vae")
    straight = launch("train_vae.py", base / "straight", data, ["--max_steps", "4"], VAE_SET)
    launch("train_vae.py", base / "split", data, ["--max_steps", "2"], VAE_SET)
    resumed = launch("train_vae.py", base / "split", data, ["--max_steps", "4", "--resume_from_checkpoint", "latest"],
                     VAE_SET)
    return base, resumed, straight


def _same_tensors(a: Path, b: Path):
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{a.name}: {key} differs"


def test_vae_checkpoints_and_export(vae_runs):
    base, *_ = vae_runs
    run = base / "straight"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list(run.glob(".checkpoint-*"))
    state = json.loads((run / "checkpoint-4" / "training_state.json").read_text())
    assert state["step"] == 4 and state["kind"] == "vae" and state["stem_names"] == STEMS
    assert set(state["validation"]) >= {"mel_distance/mean", "si_sdr/mean", "si_sdr/bass", "mel_distance/piano"}
    from mslddm import SourceVAE

    vae = SourceVAE.from_pretrained(run / "vae")
    assert vae.config.latent_channels == 4
    logvar_bias = vae.encoder.block[-1].bias[4:]  # set by posterior_logvar_init, moved by 4 small steps only
    assert torch.allclose(logvar_bias, torch.full_like(logvar_bias, -4.0), atol=0.05)
    assert (run / "vae" / "training_state.json").is_file()
    assert list((run / "logs").rglob("events.out.tfevents.*"))


def test_vae_resume_is_exact(vae_runs):
    base, resumed, _ = vae_runs
    assert "Resumed from" in resumed.stderr
    for name in ("model.safetensors", "model_1.safetensors"):  # the VAE and the discriminator
        _same_tensors(base / "straight" / "checkpoint-4" / name, base / "split" / "checkpoint-4" / name)
    straight = torch.load(base / "straight" / "checkpoint-4" / "optimizer.bin", weights_only=False)
    split = torch.load(base / "split" / "checkpoint-4" / "optimizer.bin", weights_only=False)
    for sa, sb in zip(straight["state"].values(), split["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


# post-hoc EMA snapshots every 2 steps and the loss's sigma band ride along in the shared runs (no extra launches)
POSTHOC_SET = ["msldm.posthoc_ema={sigma_rels: [0.1, 0.2], snapshot_steps: 2}",
               "msldm.sigma_band_weight={low: 0.5, high: 3.0, weight: 4.0}"]


@pytest.fixture(scope="module")
def msldm_runs(tmp_path_factory, data, vae_runs):
    base = tmp_path_factory.mktemp("msldm")
    sets = UNET_SET + POSTHOC_SET + [f"msldm.vae={vae_runs[0] / 'straight' / 'vae'}"]
    launch("train_msldm.py", base / "straight", data, ["--max_steps", "4"], sets)
    launch("train_msldm.py", base / "split", data, ["--max_steps", "2"], sets)
    launch("train_msldm.py", base / "split", data, ["--max_steps", "4", "--resume_from_checkpoint", "latest"], sets)
    return base


def test_vae_adversarial_warm_up(vae_runs):
    """Before discriminator_start_step the discriminator neither runs nor learns; from it on, both GAN terms count."""
    log = vae_runs[2].stderr
    warm_up = next(line for line in log.splitlines() if "step 1: " in line)
    assert "loss_d=0 " in warm_up and "adversarial=" not in warm_up and "feature=" not in warm_up
    for step in (2, 3, 4):
        line = next(line for line in log.splitlines() if f"step {step}: " in line)
        assert "adversarial=" in line and "feature=" in line and "loss_d=0 " not in line


def test_msldm_resume_is_exact_for_weights_and_ema(msldm_runs):
    a, b = msldm_runs / "straight" / "checkpoint-4", msldm_runs / "split" / "checkpoint-4"
    _same_tensors(a / "model.safetensors", b / "model.safetensors")
    _same_tensors(a / "unet_ema" / "diffusion_pytorch_model.safetensors",
                  b / "unet_ema" / "diffusion_pytorch_model.safetensors")
    ema = load_file(a / "unet_ema" / "diffusion_pytorch_model.safetensors")
    raw = load_file(a / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(ema[k], raw[k]) for k in raw), "EMA weights should lag the raw weights"
    # unet_ema/ is a plain UNet folder: EMAModel's own bookkeeping (decay, optimization_step) stays out of its config
    config = json.loads((a / "unet_ema" / "config.json").read_text())
    assert config == json.loads((a / "unet" / "config.json").read_text())


def test_msldm_export_loads_and_generates(msldm_runs, data, tmp_path):
    from mslddm import MultiSourceLatentPipeline
    from mslddm.cli import main

    final = msldm_runs / "straight" / "pipeline"
    card = (final / "README.md").read_text()
    assert "Diffusion training steps: 4" in card and "| diffusion | loss |" in card and "si_sdr/mean" in card
    for flag, weights in (("--ema", "unet_ema"), ("--no-ema", "unet")):
        out = tmp_path / flag
        assert main(["export", str(msldm_runs / "straight"), "--out", str(out), flag]) == 0
        exported = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
        source = load_file(msldm_runs / "straight" / "checkpoint-4" / weights / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(exported[k], source[k]) for k in source)
    pipe = MultiSourceLatentPipeline.from_pretrained(tmp_path / "--ema")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(audio_length_in_s=0.5, num_inference_steps=2, sampler="dpmpp_2m", generator=torch.Generator().manual_seed(0))
    assert out.stems.shape == (1, 4, SR // 2) and np.isfinite(out.stems).all()
    assert pipe.stem_names == STEMS
    from mslddm.data.datasets import measure_stem_levels

    assert pipe.stem_levels_dbfs == measure_stem_levels(data, "train", STEMS, SR)  # measured on its training audio
    assert all(-60 < level < 0 for level in pipe.stem_levels_dbfs.values())
    m = pipe.unet.length_multiple  # the run's window: its 0.5-s validation clips (longer than its 16-frame segments)
    assert pipe.unet.config.window_frames == max(16, math.ceil(0.5 * SR / pipe.vae.hop_length / m) * m) == 40
    assert out.sampling["windows"] == 1  # a clip of the validation length is one window, not two


def test_export_refuses_a_vae_checkpoint(vae_runs, tmp_path):
    from mslddm.cli import main

    with pytest.raises(SystemExit, match="without a UNet"):
        main(["export", str(vae_runs[0] / "straight" / "checkpoint-4"), "--out", str(tmp_path / "x")])


def test_two_process_ddp_run(tmp_path, data, vae_runs):
    """2 CPU processes (gloo DDP): each process draws its own share of the batch; checkpoints and export work."""
    sets = UNET_SET + [f"msldm.vae={vae_runs[0] / 'straight' / 'vae'}", "msldm.batch_size=1"]
    result = launch("train_msldm.py", tmp_path / "ddp", data, ["--max_steps", "2"], sets, processes=2, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "ddp" / "checkpoint-2" / "random_states_1.pkl").is_file()
    assert (tmp_path / "ddp" / "pipeline" / "model_index.json").is_file()


def test_spectral_vae_trains_with_init_from_and_a_time_budget(tmp_path, data, vae_runs):
    """The frame-rate VAE through the same script; a time budget of 0 stops after one step with a full export;
    --init_from starts from trained weights (a fresh run whose first weights are the given ones)."""
    sets = [s for s in VAE_SET if not s.startswith("vae.model")] + [
        "preset=small",
        "vae.model={latent_channels: 4, encoder_dim: 8, encoder_blocks: 1, decoder_dim: 8, decoder_blocks: 1}"]
    first = tmp_path / "spectral"
    launch("train_vae.py", first, data, ["--max_steps", "3"], sets)
    from mslddm.data.latents import load_vae
    from mslddm.models.autoencoder_spectral import SpectralSourceVAE

    trained = load_vae(str(first / "vae"))
    assert type(trained) is SpectralSourceVAE
    state = json.loads((first / "vae" / "training_state.json").read_text())
    assert state["model_class"] == "SpectralSourceVAE" and state["timing"]["run_steps"] == 3
    budget = launch("train_vae.py", tmp_path / "budget", data,
                    ["--max_steps", "50", "--time_budget_minutes", "0", "--init_from", str(first / "vae")],
                    sets + ["vae.learning_rate=0"])
    assert "Initialised the VAE from" in budget.stderr
    assert [p.name for p in (tmp_path / "budget").glob("checkpoint-*")] == ["checkpoint-1"]
    # learning rate 0 keeps the initial weights: they are exactly the --init_from ones
    _same_tensors(first / "vae" / "diffusion_pytorch_model.safetensors",
                  tmp_path / "budget" / "vae" / "diffusion_pytorch_model.safetensors")


def test_msldm_measures_sigma_data_and_continues_a_pipeline(tmp_path, data, msldm_runs):
    """sigma_data null: the RMS of the training latents; --init_from a pipeline: its VAE and UNet weights, and its
    default sampler settings (the recipe sets none)."""
    import shutil

    pipeline = tmp_path / "start"
    shutil.copytree(msldm_runs / "straight" / "pipeline", pipeline)
    config_path = pipeline / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config.update(sampler="euler", num_inference_steps=7, s_churn=3.0)  # a bundle's chosen defaults
    config_path.write_text(json.dumps(config))
    sets = UNET_SET + ["msldm.scheduler={sigma_data: null}", "msldm.learning_rate=0", "msldm.use_ema=false"]
    result = launch("train_msldm.py", tmp_path / "more", data, ["--max_steps", "1", "--init_from", str(pipeline)],
                    sets)
    assert "Initialised the UNet from" in result.stderr
    continued = json.loads((tmp_path / "more" / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert (continued["sampler"], continued["num_inference_steps"], continued["s_churn"]) == ("euler", 7, 3.0)
    sigma_data = continued["sigma_data"]
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(pipeline)
    audio = torch.from_numpy(np.stack([sf.read(data / "train" / "Trackt0" / f"{s}.wav")[0] for s in STEMS]))
    rms = pipe.encode_stems(audio[None].float()).pow(2).mean().sqrt().item()
    assert sigma_data == pytest.approx(rms, rel=0.15) and sigma_data != 0.4
    _same_tensors(pipeline / "unet" / "diffusion_pytorch_model.safetensors",
                  tmp_path / "more" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


def test_msldm_learns_trained_conditioning_from_an_unconditioned_pipeline(tmp_path, data, msldm_runs):
    """msldm.conditioning: --init_from an imputation-only pipeline adds the zero-initialised conditioning input,
    trains it on random stem masks, validates accompaniment (loss_given_one) and exports a conditioned pipeline."""
    pipeline = msldm_runs / "straight" / "pipeline"
    # The UNet at rate 0, its new conditioning input at its own rate: only the conditioning learns
    sets = UNET_SET + ["msldm.conditioning={given_probability: 0.5, total_probability: 0.0, "
                       "continuation_probability: 0.5, learning_rate: 1.0e-2}", "msldm.use_ema=false",
                       "msldm.learning_rate=0", "msldm.lr_warmup_steps=0"]
    launch("train_msldm.py", tmp_path / "cond", data, ["--max_steps", "2", "--init_from", str(pipeline)], sets)
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(tmp_path / "cond" / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.conditioning_channels == len(STEMS) * (pipe.latent_channels + 1)
    assert pipe.unet.to_cond.weight.abs().max() > 0  # zero at the start, learnt in two steps
    trained = load_file(tmp_path / "cond" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    base = load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(trained) - set(base) == {"to_cond.weight"} and all(torch.equal(trained[k], base[k]) for k in base)
    state = json.loads((tmp_path / "cond" / "checkpoint-2" / "training_state.json").read_text())
    validation = state["validation"]
    assert validation["loss_given_one"] > 0 and math.isfinite(validation["loss_given_one"])
    bass = (0.3 * np.sin(2 * np.pi * 55 * np.arange(SR // 2) / SR)).astype(np.float32)
    out = pipe(stems={"bass": bass}, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.generated == STEMS[1:] and np.isfinite(out.stems).all()
    np.testing.assert_array_equal(out.stems[0, 0], bass)


def test_msldm_grows_a_frame_rate_path_on_a_pipeline(tmp_path, data, msldm_runs):
    """msldm.model.full_rate_channels with --init_from: the pipeline's UNet gets the zero-initialised frame-rate
    path, every old weight kept; the path trains, and the exported pipeline loads and generates with it."""
    pipeline = msldm_runs / "straight" / "pipeline"
    sets = UNET_SET + ["msldm.model={full_rate_channels: 8}", "msldm.use_ema=false", "msldm.lr_warmup_steps=0"]
    result = launch("train_msldm.py", tmp_path / "fr", data, ["--max_steps", "2", "--init_from", str(pipeline)],
                    sets)
    assert "Added a frame-rate path of 8 channels" in result.stderr
    trained = load_file(tmp_path / "fr" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    base = load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(trained) - set(base) and all(k.startswith("full_rate.") for k in set(trained) - set(base))
    assert trained["full_rate.to_out.weight"].abs().max() > 0  # zero at the start, learnt in two steps
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(tmp_path / "fr" / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.full_rate_channels == 8
    out = pipe(num_inference_steps=2, audio_length_in_s=0.5, generator=torch.Generator().manual_seed(0))
    assert np.isfinite(out.stems).all()


def test_non_finite_loss_stops_before_the_weights_change(tmp_path, data, vae_runs):
    """Infinite training sigmas (log-normal mean 200) make the loss NaN at the first step after a resume: the run
    stops with one sentence naming the step and the last good checkpoint, which is left as it was."""
    sets = UNET_SET + [f"msldm.vae={vae_runs[0] / 'straight' / 'vae'}"]
    out = tmp_path / "nan"
    launch("train_msldm.py", out, data, ["--max_steps", "2"], sets)
    before = (out / "checkpoint-2" / "model.safetensors").read_bytes()
    bad = sets + ["msldm.scheduler={training_sigma_distribution: log_normal, training_log_normal_mean: 200}"]
    result = launch("train_msldm.py", out, data, ["--max_steps", "4", "--resume_from_checkpoint", "latest"], bad,
                    check=False)
    assert result.returncode != 0
    assert "Non-finite training values at step 3 (loss" in result.stderr
    assert f"the last good checkpoint is {out / 'checkpoint-2'}" in result.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "checkpoint-2" / "model.safetensors").read_bytes() == before


def test_a_killed_export_never_leaves_a_half_pipeline(msldm_runs, tmp_path):
    """`mslddm export` killed (SIGKILL) while it writes: the folder is the previous complete export, every time."""
    import signal
    import time

    from mslddm import MultiSourceLatentPipeline
    from mslddm.cli import main

    checkpoint, out = msldm_runs / "straight" / "checkpoint-4", tmp_path / "pipeline"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0  # EMA weights
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "raw"), "--no-ema"]) == 0
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    complete = {weights.read_bytes(), (tmp_path / "raw" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()}
    partial, killed = tmp_path / ".pipeline.partial", 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "mslddm", "export", str(checkpoint), "--out", str(out),
                                 "--no-ema", "--overwrite"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not (partial.is_dir() and any(partial.rglob("*.json"))):
            time.sleep(0.0005)
        finished = proc.poll() == 0
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        pipe = MultiSourceLatentPipeline.from_pretrained(out)  # always loads: the old export or the new one
        assert pipe.stem_names == STEMS and weights.read_bytes() in complete
    assert killed >= 1, "every export finished before it could be killed"


def _checkpoint_tensors_equal(a: Path, b: Path, sub: str):
    _same_tensors(a / sub / "diffusion_pytorch_model.safetensors", b / sub / "diffusion_pytorch_model.safetensors")


def test_isldm_trains_resumes_exports_and_generates(tmp_path, data, vae_runs):
    """The ISLDM baseline through the same script (model: isldm): one IndependentSourceUNet1DModel with a UNet per
    stem, exact resume of weights and EMA, export, generation."""
    from mslddm import IndependentSourceUNet1DModel, MultiSourceLatentPipeline

    sets = UNET_SET + [f"msldm.vae={vae_runs[0] / 'straight' / 'vae'}", "model=isldm"]
    launch("train_msldm.py", tmp_path / "straight", data, ["--max_steps", "4"], sets)
    launch("train_msldm.py", tmp_path / "split", data, ["--max_steps", "2"], sets)
    launch("train_msldm.py", tmp_path / "split", data, ["--max_steps", "4", "--resume_from_checkpoint", "latest"], sets)
    for sub in ("unet", "unet_ema"):
        _checkpoint_tensors_equal(tmp_path / "straight" / "checkpoint-4", tmp_path / "split" / "checkpoint-4", sub)
    state = json.loads((tmp_path / "straight" / "checkpoint-4" / "training_state.json").read_text())
    assert state["kind"] == "isldm" and "loss" in state["validation"]
    pipe = MultiSourceLatentPipeline.from_pretrained(tmp_path / "straight" / "pipeline")
    assert isinstance(pipe.unet, IndependentSourceUNet1DModel) and len(pipe.unet.sources) == len(STEMS)
    assert "ISLDM baseline" in (tmp_path / "straight" / "pipeline" / "README.md").read_text()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(stems={"drums": np.sin(np.arange(SR // 2) / 5.0).astype(np.float32) * 0.1}, audio_length_in_s=0.5,
               num_inference_steps=2, sampler="dpmpp_2m", generator=torch.Generator().manual_seed(0))
    assert out.stems.shape == (1, 4, SR // 2) and np.isfinite(out.stems).all() and out.generated == [
        "bass", "guitar", "piano"]


def test_mixldm_trains_a_mixture_vae_and_a_mixture_unet(tmp_path, data):
    """The MixLDM baseline: train_vae.py on mixes (model: mixldm -> vae.source mix, stems x C latent channels),
    encode-latents on mixes (detected from the VAE's training state), train_msldm.py on them, a mixture pipeline."""
    from mslddm import MixtureLatentPipeline, MultiSourceLatentPipeline
    from mslddm.cli import main

    vae_set = [s for s in VAE_SET if not s.startswith("vae.model=")] + [
        "vae.model={encoder_dim: 4, decoder_dim: 16}", "model=mixldm"]
    launch("train_vae.py", tmp_path / "vae", data, ["--max_steps", "2"], vae_set)
    vae_state = json.loads((tmp_path / "vae" / "vae" / "training_state.json").read_text())
    assert vae_state["source"] == "mix" and set(vae_state["validation"]) >= {"mel_distance/mix", "si_sdr/mix"}
    config = json.loads((tmp_path / "vae" / "vae" / "config.json").read_text())
    assert config["latent_channels"] == len(STEMS) * 16  # the tiny preset's C = 16, times the 4 stems
    assert main(["encode-latents", str(data), "--vae", str(tmp_path / "vae" / "vae"), str(tmp_path / "latents"),
                 "--quiet", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "latents" / "latents.json").read_text())["stems"] == ["mix"]
    sets = UNET_SET + [f"msldm.vae={tmp_path / 'vae' / 'vae'}", f"msldm.latents={tmp_path / 'latents'}",
                       "model=mixldm"]
    launch("train_msldm.py", tmp_path / "unet", data, ["--max_steps", "2"], sets)
    pipe = MultiSourceLatentPipeline.from_pretrained(tmp_path / "unet" / "pipeline")
    assert isinstance(pipe, MixtureLatentPipeline) and pipe.mixture_of == STEMS
    assert pipe.unet.config.in_channels == len(STEMS) * 16
    pipe.set_progress_bar_config(disable=True)
    out = pipe(audio_length_in_s=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.mixture.shape == (1, SR // 2) and np.isfinite(out.mixture).all()
    # stem latents are refused by a mixldm recipe, and mixture latents by an msldm one
    bad = launch("train_msldm.py", tmp_path / "bad", data, ["--max_steps", "2"],
                 UNET_SET + [f"msldm.vae={tmp_path / 'vae' / 'vae'}", f"msldm.latents={tmp_path / 'latents'}"],
                 check=False)
    assert bad.returncode == 1 and "mixldm recipe" in bad.stderr


def test_msdm_trains_on_waveforms_resumes_exports_generates_and_separates(tmp_path, data):
    """MSDM through the same script (model: msdm): no VAE, raw-audio segments, MSDM's EDM settings, exact resume of
    weights and EMA, export of a waveform pipeline that generates and separates from the CLI."""
    from mslddm import MultiSourceLatentPipeline
    from mslddm.cli import main
    from mslddm.pipelines.pipeline_multisource_diffusion import MultiSourceDiffusionPipeline

    sets = ["model=msdm", "msldm.segment_frames=4096", "msldm.batch_size=2", "msldm.validation_seconds=0.5",
            "msldm.validation_segments=1", "msldm.validation_steps=2", "msldm.checkpointing_steps=2",
            "msldm.validate_every=100", "msldm.log_every=1", "msldm.checkpoints_total_limit=5", "msldm.ema_decay=0.9",
            "msldm.scheduler={sigma_min: 1.0e-4, sigma_max: 20.0, sigma_data: 0.2, training_sigma_distribution: "
            "log_normal, training_log_normal_mean: -3.0, training_log_normal_std: 1.0, clip_denoised: 1.0}"]
    launch("train_msldm.py", tmp_path / "straight", data, ["--max_steps", "4"], sets)
    launch("train_msldm.py", tmp_path / "split", data, ["--max_steps", "2"], sets)
    launch("train_msldm.py", tmp_path / "split", data, ["--max_steps", "4", "--resume_from_checkpoint", "latest"], sets)
    for sub in ("unet", "unet_ema"):
        _checkpoint_tensors_equal(tmp_path / "straight" / "checkpoint-4", tmp_path / "split" / "checkpoint-4", sub)
    assert not (tmp_path / "straight" / "checkpoint-4" / "vae").exists()
    state = json.loads((tmp_path / "straight" / "checkpoint-4" / "training_state.json").read_text())
    assert state["kind"] == "msdm" and "loss" in state["validation"]
    pipe = MultiSourceLatentPipeline.from_pretrained(tmp_path / "straight" / "pipeline")
    assert isinstance(pipe, MultiSourceDiffusionPipeline) and pipe.unet.config.in_channels == 4
    assert pipe.scheduler.config.clip_denoised == 1.0 and pipe.scheduler.config.sigma_data == 0.2
    mix = data / "validation" / "Trackv0" / "bass.wav"
    assert main(["separate", str(mix), "--pipeline", str(tmp_path / "straight" / "pipeline"), "--steps", "3",
                 "--out", str(tmp_path / "sep"), "--device", "cpu"]) == 0
    assert (tmp_path / "sep" / "seed0" / "piano.wav").is_file()
    assert main(["generate", "--pipeline", str(tmp_path / "straight" / "pipeline"), "--duration", "0.5",
                 "--steps", "2", "--out", str(tmp_path / "gen"), "--device", "cpu"]) == 0
    assert (tmp_path / "gen" / "sample_000_seed0" / "drums.wav").is_file()
    bad = launch("train_msldm.py", tmp_path / "bad", data, ["--max_steps", "1"], sets + ["msldm.vae=some/vae"],
                 check=False)
    assert bad.returncode == 1 and "takes no msldm.vae" in bad.stderr



def test_posthoc_snapshots_are_written_and_resume_exactly(msldm_runs):
    from mslddm.training.posthoc_ema import list_snapshots

    straight, split = (list_snapshots(msldm_runs / name / "posthoc_ema") for name in ("straight", "split"))
    assert [(step, rel) for step, rel, _ in straight] == [(2, 0.1), (2, 0.2), (4, 0.1), (4, 0.2)]
    for (_, _, a), (_, _, b) in zip(straight, split):
        _same_tensors(a, b)


def test_export_builds_the_posthoc_average_and_it_generates(msldm_runs, tmp_path):
    from mslddm import MultiSourceLatentPipeline
    from mslddm.cli import main
    from mslddm.training.posthoc_ema import reconstruct

    run = msldm_runs / "straight"
    out = tmp_path / "posthoc"
    assert main(["export", str(run / "checkpoint-4"), "--out", str(out), "--posthoc-ema", "0.15"]) == 0
    exported = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    expected, report = reconstruct(run / "posthoc_ema", 0.15, step=4)
    assert len(report["snapshots"]) == 4
    for name, tensor in expected.items():
        torch.testing.assert_close(exported[name], tensor, rtol=1e-5, atol=1e-6)
    ema = load_file(run / "checkpoint-4" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.allclose(exported[k], ema[k]) for k in expected)
    assert "post-hoc EMA (EDM2) of the UNet weights, sigma_rel 0.15 at step 4" in (out / "README.md").read_text()
    pipe = MultiSourceLatentPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    audio = pipe(audio_length_in_s=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).stems
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_posthoc_export_refusals_name_the_problem(msldm_runs, tmp_path):
    import shutil

    from mslddm.cli import main

    bare = tmp_path / "run"  # a run trained without snapshots: its checkpoint alone
    shutil.copytree(msldm_runs / "straight" / "checkpoint-4", bare / "checkpoint-4")
    with pytest.raises(SystemExit, match="holds no post-hoc EMA snapshots"):
        main(["export", str(bare / "checkpoint-4"), "--out", str(tmp_path / "a"), "--posthoc-ema", "0.1"])
    with pytest.raises(SystemExit, match="sigma_rel must lie in"):
        main(["export", str(msldm_runs / "straight" / "checkpoint-4"), "--out", str(tmp_path / "b"),
              "--posthoc-ema", "0.5"])
    shutil.copytree(msldm_runs / "straight" / "posthoc_ema", bare / "posthoc_ema")
    for late in bare.joinpath("posthoc_ema").glob("step-00000004-*"):
        late.unlink()  # snapshots that end before the checkpoint
    with pytest.raises(SystemExit, match="snapshots end before checkpoint-4"):
        main(["export", str(bare / "checkpoint-4"), "--out", str(tmp_path / "c"), "--posthoc-ema", "0.1"])
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.parametrize("setting, sentence", [
    ("msldm.sigma_band_weight={low: 3.0, high: 0.5, weight: 4.0}", "sigma_band_weight needs 0 <= low < high"),
    ("msldm.posthoc_ema={sigma_rels: [0.05]}", "msldm.posthoc_ema needs sigma_rels, snapshot_steps; it lacks "
                                               "snapshot_steps"),
])
def test_a_bad_band_or_posthoc_setting_is_named_before_the_data_is_read(tmp_path, data, vae_runs, setting, sentence):
    sets = UNET_SET + [f"msldm.vae={vae_runs[0] / 'straight' / 'vae'}", setting]
    result = launch("train_msldm.py", tmp_path / "bad", data, ["--max_steps", "2"], sets, check=False)
    assert result.returncode != 0 and sentence in result.stderr
    assert "tracks in" not in result.stderr


def test_msldm_trains_the_transformer_from_a_recipe_and_exports_it(tmp_path, data, vae_runs):
    """msldm.unet_class: MultiSourceTransformer1DModel trains through the same script, checkpoints with its EMA,
    and the exported pipeline loads and generates with the transformer."""
    sets = [s for s in UNET_SET if not s.startswith("msldm.model=")] + [
        "msldm.unet_class=MultiSourceTransformer1DModel",
        "msldm.model={patch_frames: 2, width: 16, depth: 2, heads: 2}",
        f"msldm.vae={vae_runs[0] / 'straight' / 'vae'}"]
    launch("train_msldm.py", tmp_path / "tf", data, ["--max_steps", "2"], sets)
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(tmp_path / "tf" / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.unet).__name__ == "MultiSourceTransformer1DModel"
    assert pipe.unet.config.window_frames == max(16, math.ceil(0.5 * SR / pipe.vae.hop_length / 2) * 2)  # 36
    ema = load_file(tmp_path / "tf" / "checkpoint-2" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert "blocks.0.to_qkv.weight" in ema
    out = pipe(num_inference_steps=2, audio_length_in_s=0.5, generator=torch.Generator().manual_seed(0))
    assert np.isfinite(out.stems).all()
    bad = launch("train_msldm.py", tmp_path / "bad", data, ["--max_steps", "1"],
                 sets[:-2] + ["msldm.unet_class=Transformer", sets[-1]], check=False)
    assert bad.returncode != 0 and "msldm.unet_class" in bad.stderr
