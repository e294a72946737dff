"""`mslddm convert-msdm`: MSDM's Lightning checkpoint format in, a waveform pipeline out, numbers that match
audio-diffusion-pytorch 0.0.43 (the package MSDM was written with) built with MSDM's structure at small widths: the
UNet, the preconditioned and clamped denoiser, and the training loss. Skipped where the reference is missing."""

import pytest
import torch
from test_convert_original import Throwaway, perturb_, save_lightning_file

from mslddm import MultiSourceLatentPipeline
from mslddm.cli import main as cli
from mslddm.pipelines.pipeline_multisource_diffusion import MultiSourceDiffusionPipeline
from mslddm.presets import PRESETS
from mslddm.training import losses

MSDM = PRESETS["msldm"]["waveform_unet"]
# MSDM's level structure (multipliers, factors, blocks, attentions) at small widths.
SMALL_MSDM = dict({k: MSDM[k] for k in ("multipliers", "factors", "num_blocks", "attentions")},
                  in_channels=4, channels=32, patch_factor=4, patch_blocks=1, attention_heads=2, attention_features=8,
                  attention_multiplier=2, resnet_groups=8, kernel_multiplier_downsample=2, use_nearest_upsample=False,
                  use_skip_scale=True, use_attention_bottleneck=True)


@pytest.fixture(scope="module")
def reference():
    adp_modules = pytest.importorskip("audio_diffusion_pytorch.modules")
    adp_diffusion = pytest.importorskip("audio_diffusion_pytorch.diffusion")
    torch.manual_seed(0)
    unet = perturb_(adp_modules.UNet1d(**SMALL_MSDM, kernel_sizes_init=[1, 3, 7], use_context_time=True)).eval()
    return unet, adp_diffusion


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("msdm")
    training_code = Throwaway(folder)
    save_lightning_file(folder / "msdm.ckpt", reference[0].state_dict(), training_code.hyper_parameters(SMALL_MSDM))
    training_code.forget()
    assert cli(["convert-msdm", str(folder / "msdm.ckpt"), "--out", str(folder / "pipeline")]) == 0
    assert training_code.executed() == [] and not training_code.loaded()
    pipe = MultiSourceLatentPipeline.from_pretrained(folder / "pipeline")
    assert isinstance(pipe, MultiSourceDiffusionPipeline)
    return pipe


@torch.no_grad()
def test_converted_msdm_matches_the_reference_unet_and_denoiser(reference, converted):
    ref_unet, adp_diffusion = reference
    x = 0.3 * torch.randn(3, 4, 2 * converted.unet.length_multiple, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([1e-3, 0.2, 5.0])
    c_noise = torch.log(sigmas) / 4
    expected = ref_unet(x, c_noise)
    assert expected.abs().max() > 0.1
    assert (converted.unet(x, c_noise).sample - expected).abs().max() <= 1e-5
    diffusion = adp_diffusion.Diffusion(net=ref_unet, sigma_distribution=adp_diffusion.LogNormalDistribution(-3, 1),
                                        sigma_data=0.2)
    noisy = x + sigmas[:, None, None] * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    expected = diffusion.denoise_fn(noisy, sigmas=sigmas)
    ours = converted.scheduler.denoiser(converted.unet)(noisy, sigmas)
    assert (ours - expected).abs().max() <= 1e-5 and expected.abs().max() == 1.0  # the clamp is reached


@torch.no_grad()
def test_the_training_loss_matches_the_reference(reference, converted):
    ref_unet, adp_diffusion = reference
    x0 = 0.3 * torch.randn(2, 4, converted.unet.length_multiple, generator=torch.Generator().manual_seed(3))
    sigmas = torch.tensor([0.05, 0.8])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))

    class Fixed(adp_diffusion.Distribution):
        def __call__(self, num_samples, device=torch.device("cpu")):
            return sigmas.to(device)

    expected = adp_diffusion.Diffusion(net=ref_unet, sigma_distribution=Fixed(), sigma_data=0.2)(x0, noise=noise)
    c = converted.scheduler.config
    denoised = losses.edm_denoise(converted.unet, x0 + sigmas[:, None, None] * noise, sigmas, c.sigma_data,
                                  clip=c.clip_denoised)
    ours = losses.edm_training_loss(denoised, x0, sigmas, c.sigma_data)
    assert abs(float(ours) - float(expected)) <= 1e-5 * max(1.0, float(expected))


def test_a_latent_checkpoint_is_refused_by_name(tmp_path):
    from conftest import tiny_unet

    save_lightning_file(tmp_path / "msldm.ckpt", tiny_unet().state_dict())
    with pytest.raises(SystemExit, match="looks like a latent MSLDM checkpoint; convert it with convert-original"):
        cli(["convert-msdm", str(tmp_path / "msldm.ckpt"), "--out", str(tmp_path / "out"),
             "--unet-config", '{"attention_heads": 2, "attention_features": 8}'])


def test_msdms_released_architecture_is_recognised_from_its_shapes():
    from mslddm import MultiSourceUNet1DModel
    from mslddm.conversion import MSDM_PRESETS, attention_width, detect_variant, infer_unet_shapes

    with torch.device("meta"):
        sd = MultiSourceUNet1DModel(in_channels=4, **MSDM).state_dict()
    assert detect_variant(infer_unet_shapes(sd), attention_width(sd), MSDM_PRESETS) == "msdm"
    assert detect_variant(infer_unet_shapes(sd), attention_width(sd)) is None  # not an MSLDM architecture
