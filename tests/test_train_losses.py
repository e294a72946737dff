"""Training building blocks: losses, discriminator, per-step seeding, recipes, checkpoint files."""

import json
import math

import numpy as np
import pytest
import torch

from mslddm.training import losses
from mslddm.training.checkpointing import STATE_FILE, list_checkpoints, resolve_checkpoint
from mslddm.training.discriminator import SourceDiscriminator
from mslddm.training.recipes import apply_overrides, load_recipe
from mslddm.training.seeding import StepBatchSampler, StepIndexedDataset, step_generator


def test_mel_filterbank_matches_slaney_reference_values():
    fb = losses.mel_filterbank(22050, 2048, 80)
    assert fb.shape == (80, 1025) and (fb >= 0).all()
    # Slaney normalisation: each triangle peaks at 2 / bandwidth, so its area in Hz is 1 (triangles wider than
    # a few FFT bins, i.e. all but the lowest).
    area = fb.double().sum(1) * (22050 / 2048)
    assert torch.allclose(area[10:], torch.ones(70, dtype=torch.float64), atol=0.02)
    # Linear below 1 kHz, logarithmic above: 1000 Hz is mel 15 on Slaney's scale.
    assert math.isclose(losses._hz_to_mel(torch.tensor(1000.0)).item(), 15.0, rel_tol=1e-6)
    assert math.isclose(losses._mel_to_hz(losses._hz_to_mel(torch.tensor(4000.0))).item(), 4000.0, rel_tol=1e-5)


def test_multiscale_mel_loss():
    loss = losses.MultiScaleMelLoss()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8000) * 0.1
    assert loss(x, x).item() == 0.0
    quieter, noise = loss(0.5 * x, x).item(), loss(torch.randn_like(x) * 0.1, x).item()
    # A gain of 0.5 shifts every log10 mel bin by log10(0.5) wherever the clamp does not bite: 7 scales.
    assert math.isclose(quieter, 7 * math.log10(2), rel_tol=0.05)
    assert noise > 0
    per_item = loss(0.5 * x, x, reduce=False)
    assert per_item.shape == (2,)


def test_si_sdr_known_values():
    torch.manual_seed(0)
    ref = torch.randn(3, 4000)
    assert (losses.si_sdr(3.0 * ref, ref) > 60).all()  # scale-invariant
    noise = torch.randn(3, 4000)
    noise -= (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref  # orthogonal to ref
    noise *= ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True) / math.sqrt(10)
    assert torch.allclose(losses.si_sdr(ref + noise, ref), torch.full((3,), 10.0), atol=0.05)


def test_gan_losses_and_feature_matching():
    real = [[torch.ones(2, 3), torch.ones(2, 1)]]
    fake = [[torch.zeros(2, 3), torch.zeros(2, 1)]]
    assert losses.feature_matching_loss(fake, real).item() == 1.0  # the score map (last) is excluded
    assert losses.generator_adversarial_loss(fake).item() == 1.0
    assert losses.discriminator_loss(fake, real).item() == 0.0
    assert losses.discriminator_loss(real, fake).item() == 2.0


def test_edm_loss_is_the_reference_formula():
    x0, denoised = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    sigma = torch.tensor([0.5, 2.0])
    sd = 0.4
    expected = ((sigma**2 + sd**2) / (sigma * sd) ** 2).mean()
    assert torch.allclose(losses.edm_training_loss(denoised, x0, sigma, sd), expected)

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    noisy = torch.randn(2, 3, 4)
    # F = 0 leaves c_skip * x: sigma_data^2 / (sigma^2 + sigma_data^2) * x.
    out = losses.edm_denoise(Zero(), noisy, sigma, sd)
    assert torch.allclose(out, noisy * (sd**2 / (sigma**2 + sd**2))[:, None, None])


def test_discriminator_shapes_and_normalisation():
    d = SourceDiscriminator(periods=(2, 3), period_widths=(2, 2, 2, 2, 2), fft_sizes=(512,), stft_channels=2)
    x = torch.randn(2, 1, 4000) + 3.0
    feats = d(x)
    assert len(feats) == 3
    assert [len(f) for f in feats] == [6, 6, 26]  # 5 convs + score; 5 bands x 5 convs + score
    assert all(f[-1].shape[1] == 1 for f in feats)
    norm = d.normalize(x)
    assert torch.allclose(norm.mean(-1), torch.zeros(2, 1), atol=1e-5)
    assert torch.allclose(norm.abs().amax(-1), torch.full((2, 1), 0.8))


def test_step_seeding_is_a_function_of_seed_step_and_process():
    a = torch.randn(4, generator=step_generator(0, 5, 0, "noise"))
    assert torch.equal(a, torch.randn(4, generator=step_generator(0, 5, 0, "noise")))
    for other in (step_generator(0, 6, 0), step_generator(0, 5, 1), step_generator(1, 5, 0),
                  step_generator(0, 5, 0, "sigma")):
        assert not torch.equal(a, torch.randn(4, generator=other))


def test_step_batches_resume_where_they_stopped():
    full = list(StepBatchSampler(2, 0, max_steps=4))
    assert list(StepBatchSampler(2, 2, max_steps=4)) == full[2:]
    ranks = [list(StepBatchSampler(2, 0, r, 2, max_steps=2)) for r in range(2)]
    assert ranks[0] == [[0, 1], [4, 5]] and ranks[1] == [[2, 3], [6, 7]]

    class Epochs:
        epoch = 0

        def __len__(self):
            return 3

        def set_epoch(self, e):
            self.epoch = e

        def __getitem__(self, i):
            return (self.epoch, i)

    ds = StepIndexedDataset(Epochs())
    assert [ds[k] for k in (0, 2, 3, 7)] == [(0, 0), (0, 2), (1, 0), (2, 1)]


def test_recipes_load_and_override():
    for name in ("tiny", "small", "msldm", "msldm-large"):
        recipe = load_recipe(name)
        assert recipe["name"] == name and {"vae", "msldm", "data", "preset"} <= set(recipe)
    r = apply_overrides(load_recipe("tiny"), ["vae.batch_size=3", "msldm.model={channels: 8}", "seed=7"])
    assert r["vae"]["batch_size"] == 3 and r["msldm"]["model"] == {"channels": 8} and r["seed"] == 7
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(r, ["novalue"])
    with pytest.raises(FileNotFoundError, match="No recipe"):
        load_recipe("does-not-exist")


def test_paper_recipe_holds_the_reference_numbers():
    r = load_recipe("msldm")
    assert r["vae"]["batch_size"] == 28 and r["vae"]["learning_rate"] == 5e-5 and r["vae"]["lr_gamma"] == 0.999996
    assert r["vae"]["loss_weights"] == {"mel": 15.0, "feature": 2.0, "adversarial": 1.0, "kl": 10.0}
    assert r["msldm"]["learning_rate"] == 2e-5 and r["msldm"]["batch_size"] == 16
    assert r["msldm"]["segment_frames"] == 1024 and r["msldm"]["scheduler"]["sigma_data"] == 0.4


def test_resume_never_picks_a_partial_checkpoint(tmp_path):
    from mslddm.training.checkpointing import write_manifest

    for step in (100, 200):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / STATE_FILE).write_text(json.dumps({"step": step}))
        write_manifest(tmp_path / f"checkpoint-{step}")  # written last: the checkpoint is complete
    (tmp_path / ".checkpoint-300.partial").mkdir()          # killed while saving
    (tmp_path / "checkpoint-400").mkdir()                   # no state file: never completed
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-100", "checkpoint-200"]
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-200"
    assert resolve_checkpoint(tmp_path / "none", "latest") is None
    assert resolve_checkpoint(tmp_path, None) is None
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-400"))


def test_save_checkpoint_is_atomic_and_rotates(tmp_path):
    from mslddm.training.checkpointing import save_checkpoint

    class FakeAccelerator:
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, folder):
            import os

            os.makedirs(folder, exist_ok=True)
            (tmp_path / "seen").write_text(folder)

    def models(folder):
        assert folder.name.startswith(".") and not (folder.parent / "checkpoint-3").exists()
        (folder / "vae").mkdir()

    for step in (1, 2, 3):
        save_checkpoint(FakeAccelerator(), tmp_path / "run", step, {"kind": "vae"}, models, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2", "checkpoint-3"]
    assert json.loads((tmp_path / "run" / "checkpoint-3" / STATE_FILE).read_text())["step"] == 3
    assert not list((tmp_path / "run").glob(".*"))

    def crash(folder):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeAccelerator(), tmp_path / "run", 4, {}, crash, total_limit=2)
    assert resolve_checkpoint(tmp_path / "run", "latest").name == "checkpoint-3"
    assert np.all([p.name != "checkpoint-4" for p in (tmp_path / "run").iterdir()])


def test_the_mel_loss_stays_float32_under_bf16_autocast():
    import torch

    from mslddm.training.losses import MultiScaleMelLoss

    loss = MultiScaleMelLoss(22050)
    x, y = torch.randn(2, 1, 4096), torch.randn(2, 1, 4096)
    exact = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mel = loss.log_mel(x, 512)
        under = loss(x, y)
    assert mel.dtype == torch.float32
    torch.testing.assert_close(under, exact)


def test_training_steps_overfit_one_batch():
    """The training step (EDM preconditioning, loss, gradients, Adam) learns: on one fixed batch of latents, noise
    and noise levels, 30 steps of the tiny UNet cut the loss by more than five times."""
    from conftest import tiny_unet

    from mslddm import EDMScheduler

    sigma_data = EDMScheduler().config.sigma_data
    gen = torch.Generator().manual_seed(0)
    clean = sigma_data * torch.randn(4, 16, 16, generator=gen)
    sigma = torch.tensor([0.05, 0.3, 1.0, 3.0])
    noisy = clean + sigma[:, None, None] * torch.randn(clean.shape, generator=gen)
    unet = tiny_unet()
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        loss = losses.edm_training_loss(losses.edm_denoise(unet, noisy, sigma, sigma_data), clean, sigma, sigma_data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0] / 5, history


def test_sigma_band_weight_multiplies_only_inside_the_band():
    sigma = torch.tensor([0.1, 0.5, 1.7, 3.0, 20.0])
    assert torch.equal(losses.sigma_band_weight(sigma, 0.5, 3.0, 4.0), torch.tensor([1.0, 4.0, 4.0, 4.0, 1.0]))
    for low, high, weight in ((3.0, 0.5, 4.0), (-1.0, 3.0, 4.0), (0.5, 3.0, 0.0)):
        with pytest.raises(ValueError, match="sigma_band_weight needs"):
            losses.sigma_band_weight(sigma, low, high, weight)
    recipe = load_recipe("small-cpu", ["msldm.sigma_band_weight={low: 0.5, high: 3.0, weight: 4.0}",
                                       "msldm.posthoc_ema={sigma_rels: [0.05, 0.1], snapshot_steps: 500}"])
    assert recipe["msldm"]["sigma_band_weight"]["weight"] == 4.0
    with pytest.raises(ValueError, match="sigma_rels"):
        load_recipe("small-cpu", ["msldm.posthoc_ema={sigma_rels: [0.5], snapshot_steps: 500}"])
