"""`mslddm convert-original`: the authors' file formats in, a pipeline out, and numbers that match the reference.

Files are written in the original formats: a ``{'generator': state_dict}`` SourceVAE file, and a Lightning-style
``.ckpt`` whose ``state_dict`` holds ``model.unet.*`` and the same tensors under ``model.diffusion.net.*``, and whose
``hyper_parameters`` pickle objects of a throwaway module (as the real files pickle an object of a module that no
longer exists). The parity tests build the writers of those files from the reference packages (the test extra:
audio-diffusion-pytorch 0.0.43 for ``UNet1d`` and its EDM pieces, descript-audio-codec for DAC's encoder/decoder)
and skip where those are not installed; the loading, inference and error tests need neither.
"""

import importlib
import importlib.util
import json
import math
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import tiny_unet, tiny_vae

from mslddm import MultiSourceLatentPipeline
from mslddm.cli import main as cli
from mslddm.conversion import (
    UNET_PRESETS,
    CheckpointError,
    convert_original,
    infer_unet_shapes,
    infer_vae_config,
    load_checkpoint,
    read_unet_state_dict,
    resolve_unet_config,
)
from mslddm.models.autoencoder_source import SourceVAE
from mslddm.models.unet_1d_multisource import MultiSourceUNet1DModel

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

LATENT = 8  # SourceVAE latent channels of the small reference models; the UNet sees 4 stems x LATENT
SMALL_VAE = dict(encoder_dim=8, encoder_rates=(2, 4, 5, 8), latent_channels=LATENT, decoder_dim=64,
                 decoder_rates=(8, 5, 4, 2))
# The paper's UNet level structure (multipliers, factors, blocks, attentions) at small widths.
SMALL_UNET = dict(
    {k: UNET_PRESETS["msldm"][k] for k in ("multipliers", "factors", "num_blocks", "attentions")},
    in_channels=4 * LATENT, channels=32, patch_factor=4, patch_blocks=1, attention_heads=2, attention_features=8,
    attention_multiplier=2, resnet_groups=8, kernel_multiplier_downsample=2, use_nearest_upsample=False,
    use_skip_scale=True, use_attention_bottleneck=True,
)


# ---------------------------------------------------------------------------------------------------------------------
# Writing files in the original formats


class Throwaway:
    """A module that exists only while a checkpoint is written, as the authors' training code does for users.

    Importing it, or unpickling its objects, appends to ``log``: the tests check that the converter does neither.
    """

    def __init__(self, folder: Path):
        self.name = f"msldm_training_code_{uuid.uuid4().hex[:8]}"
        self.folder, self.log = folder / "training_code", folder / "executed.log"
        self.folder.mkdir()
        self.file = self.folder / f"{self.name}.py"
        self.file.write_text(textwrap.dedent(f"""
            open({str(self.log)!r}, "a").write("imported\\n")

            class AttributeDict(dict):
                pass

            class ListConfig(list):  # how Hydra hands list options to the model
                pass

            def _rebuild(vmin, vmax):
                open({str(self.log)!r}, "a").write("executed\\n")
                return UniformDistribution(vmin, vmax)

            class UniformDistribution:
                def __init__(self, vmin, vmax):
                    self.vmin, self.vmax = vmin, vmax

                def __reduce__(self):
                    return (_rebuild, (self.vmin, self.vmax))
        """))
        sys.path.insert(0, str(self.folder))
        self.module = importlib.import_module(self.name)
        self.log.unlink()

    def hyper_parameters(self, unet_config):
        """What Lightning's save_hyperparameters() stored for MSLDM's Model: its kwargs, in an AttributeDict."""
        hparams = self.module.AttributeDict(
            learning_rate=2e-5, beta1=0.9, beta2=0.99, kernel_sizes_init=[1, 3, 7], diffusion_sigma_data=0.4,
            diffusion_sigma_distribution=self.module.UniformDistribution(0.0, 3.0),
        )
        hparams.update({k: self.module.ListConfig(v) if isinstance(v, (list, tuple)) else v
                        for k, v in unet_config.items()})
        return hparams

    def forget(self, delete_file=True):
        """Unloads the module; with ``delete_file``, it no longer exists anywhere."""
        sys.modules.pop(self.name, None)
        if delete_file and self.file.exists():
            self.file.unlink()
            sys.path.remove(str(self.folder))

    def loaded(self):
        return self.name in sys.modules

    def executed(self):
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def throwaway(tmp_path):
    module = Throwaway(tmp_path)
    yield module
    module.forget()


def save_vae_file(path, state_dict):
    torch.save({"generator": dict(state_dict)}, path)


def save_lightning_file(path, unet_state_dict, hyper_parameters=None):
    # The Lightning module holds the UNet as model.unet and again as model.diffusion.net (one module, two names).
    state = {f"model.unet.{k}": v for k, v in unet_state_dict.items()}
    state.update({f"model.diffusion.net.{k}": v for k, v in unet_state_dict.items()})
    checkpoint = {"epoch": 41, "global_step": 400_000, "pytorch-lightning_version": "1.7.7", "state_dict": state,
                  "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}
    if hyper_parameters is not None:
        checkpoint["hyper_parameters"] = hyper_parameters
    torch.save(checkpoint, path)


def perturb_(model):
    """Moves every parameter off its init (norm gains from 1, biases from 0, g from ||v||) so all of them matter."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.2 * torch.randn(p.shape, generator=generator))
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Loading without running the pickle's code; configs from shapes (no reference package needed)


@pytest.fixture
def tiny_files(tmp_path, throwaway):
    """Original-format files of mslddm's tiny test models (their state dicts have the reference key names)."""
    vae, unet = tiny_vae(), tiny_unet()
    paths = tmp_path / "sourcevae_ckpt", tmp_path / "msldm.ckpt"
    save_vae_file(paths[0], vae.state_dict())
    save_lightning_file(paths[1], unet.state_dict(), throwaway.hyper_parameters(dict(unet.config)))
    return vae, unet, *paths


def test_reading_never_imports_or_runs_pickled_objects(tiny_files, throwaway):
    *_, unet_path = tiny_files
    throwaway.forget(delete_file=False)  # still importable: an ordinary unpickle would import and run it
    state_dict, hparams = read_unet_state_dict(unet_path)
    assert throwaway.executed() == []
    assert not throwaway.loaded()
    assert "model.diffusion.net.to_mapping.0.weight" not in state_dict and "to_mapping.0.weight" in state_dict
    assert hparams["attention_heads"] == 2 and hparams["resnet_groups"] == 4  # plain values survive
    assert "diffusion_sigma_distribution" not in hparams and "multipliers" not in hparams  # pickled objects do not
    # The hazard that the restricted loader avoids:
    torch.load(unet_path, weights_only=False)
    assert throwaway.executed() == ["imported", "executed"]


def test_reading_a_checkpoint_whose_module_no_longer_exists(tiny_files, throwaway):
    *_, unet_path = tiny_files
    throwaway.forget()
    with pytest.raises(ModuleNotFoundError):
        torch.load(unet_path, weights_only=False)
    checkpoint = load_checkpoint(unet_path)
    assert isinstance(checkpoint["state_dict"]["model.unet.to_mapping.0.weight"], torch.Tensor)
    assert "inert stand-in" in repr(checkpoint["hyper_parameters"])


def test_legacy_torch_save_format_is_read(tmp_path):
    """Files written with torch's pre-1.6 format (no zip) are read too, by both loaders."""
    unet = tiny_unet()
    vae_path, unet_path = tmp_path / "sourcevae_ckpt", tmp_path / "msldm.ckpt"
    torch.save({"generator": tiny_vae().state_dict()}, vae_path, _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {f"model.unet.{k}": v for k, v in unet.state_dict().items()},
                "hyper_parameters": Inert({**unet.config})}, unet_path, _use_new_zipfile_serialization=False)
    pipe = convert_original(vae_path, unet_path).pipeline
    assert torch.equal(pipe.unet.to_mapping[0].weight, unet.to_mapping[0].weight)


class Inert(dict):
    """A dict subclass of this test module: torch's weights_only loader refuses it, so the fallback loader runs."""


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_paper_configs_are_read_off_the_shapes(name):
    with torch.device("meta"):
        unet_sd = MultiSourceUNet1DModel(**UNET_PRESETS[name]).state_dict()
        vae_sd = SourceVAE().state_dict()
    resolution = resolve_unet_config(unet_sd, hparams={})
    assert resolution.variant == name
    built = MultiSourceUNet1DModel(**resolution.config).config
    for key, value in UNET_PRESETS[name].items():
        assert built[key] == value, key
    assert infer_vae_config(vae_sd) == dict(encoder_dim=64, encoder_rates=[2, 4, 5, 8], latent_channels=80,
                                            decoder_dim=1536, decoder_rates=[8, 5, 4, 2])


def test_variant_shapes_and_nearest_upsampling_are_read_off_the_shapes():
    config = dict(in_channels=4, channels=16, patch_factor=2, patch_blocks=2, multipliers=[1, 2, 1, 1],
                  factors=[1, 3, 2], num_blocks=[1, 2, 1], attentions=[True, False, True], attention_multiplier=3,
                  kernel_multiplier_downsample=4, use_nearest_upsample=True, use_attention_bottleneck=False)
    with torch.device("meta"):
        model = MultiSourceUNet1DModel(**config, attention_heads=2, attention_features=4)
    assert infer_unet_shapes(model.state_dict()) == config


def test_cli_converts_to_a_loadable_pipeline_with_a_model_card(tiny_files, tmp_path, capsys):
    vae, unet, vae_path, unet_path = tiny_files
    out = tmp_path / "converted"
    assert cli(["convert-original", "--vae", str(vae_path), "--unet", str(unet_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "custom architecture" in printed and "ignored pickled objects" in printed
    pipe = MultiSourceLatentPipeline.from_pretrained(out)
    assert pipe.stem_names == ["bass", "drums", "guitar", "piano"] and pipe.sample_rate == 22050
    paper = pipe.scheduler.sampling_settings()  # the paper's sampler: churned Euler, 150 steps, churn 20
    assert (paper.sampler, paper.num_inference_steps, paper.s_churn) == ("euler", 150, 20.0)
    assert (pipe.scheduler.config.sigma_min, pipe.scheduler.config.sigma_max) == (0.01, 3.0)
    assert pipe.scheduler.config.sigma_data == 0.4 and pipe.scheduler.config.sampler == "euler"
    for ours, theirs in ((pipe.vae, vae), (pipe.unet, unet)):
        for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), k
    card = (out / "README.md").read_text()
    for needle in ("Xu", "2409.06190", "XZWY/MSLDM", "uofi.box.com", "sha256"):
        assert needle in card
    # float16 and the refusal to overwrite
    with pytest.raises(SystemExit, match="not empty"):
        cli(["convert-original", "--vae", str(vae_path), "--unet", str(unet_path), "--out", str(out)])
    half = tmp_path / "half"
    cli(["convert-original", "--vae", str(vae_path), "--unet", str(unet_path), "--out", str(half),
         "--dtype", "float16"])
    saved = safetensors.torch.load_file(half / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float16}
    loaded = MultiSourceLatentPipeline.from_pretrained(half).unet.to_mapping[0].weight
    assert torch.equal(loaded, pipe.unet.to_mapping[0].weight.half().float())


def convert_error(vae_path, unet_path, **kwargs):
    with pytest.raises(CheckpointError) as info:
        convert_original(vae_path, unet_path, **kwargs)
    return str(info.value)


def test_clear_errors_for_wrong_files(tiny_files, tmp_path):
    _, unet, vae_path, unet_path = tiny_files
    assert "pass it as --vae" in convert_error(vae_path, vae_path)
    assert "pass it as --unet" in convert_error(unet_path, unet_path)
    assert "does not exist" in convert_error(tmp_path / "nope", unet_path)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    assert "not a readable PyTorch checkpoint" in convert_error(text, unet_path)
    discriminators = tmp_path / "do_00100000"
    torch.save({"mpd": {}, "msd": {}, "optim_g": {}, "optim_d": {}}, discriminators)
    assert "discriminator/optimizer" in convert_error(discriminators, unet_path)

    truncated = tmp_path / "truncated.ckpt"
    sd = unet.state_dict()
    del sd["to_out.module_list.0.block.block2.project.bias"]
    save_lightning_file(truncated, sd, {**dict(unet.config), "attention_heads": 2})
    assert "1 missing" in convert_error(vae_path, truncated)

    other_vae = tmp_path / "other_vae"
    save_vae_file(other_vae, SourceVAE(encoder_dim=4, latent_channels=2 * LATENT, decoder_dim=16).state_dict())
    assert "do not belong together" in convert_error(other_vae, unet_path)

    bare = tmp_path / "no_hparams.ckpt"
    save_lightning_file(bare, unet.state_dict())
    assert "--unet-config" in convert_error(vae_path, bare)
    config = {"attention_heads": 2, "attention_features": 8, "resnet_groups": 4}
    (tmp_path / "unet.json").write_text(json.dumps(config))
    for given in (json.dumps(config), str(tmp_path / "unet.json")):
        out = tmp_path / f"with_config_{len(given)}"
        cli(["convert-original", "--vae", str(vae_path), "--unet", str(bare), "--out", str(out), "--unet-config", given])
        converted = MultiSourceLatentPipeline.from_pretrained(out)
        assert torch.equal(converted.unet.to_mapping[0].weight, unet.to_mapping[0].weight)
        assert converted.unet.config.resnet_groups == 4
    with pytest.raises(SystemExit, match="JSON object"):
        cli(["convert-original", "--vae", str(vae_path), "--unet", str(bare), "--out", str(tmp_path / "x"),
             "--unet-config", "[2]"])
    assert "not a MultiSourceUNet1DModel argument" in convert_error(vae_path, bare, unet_config={"heads": 2})
    assert "does not match the checkpoint's attention width" in convert_error(
        vae_path, bare, unet_config={**config, "attention_features": 4})
    assert "not those of msldm-large" in convert_error(vae_path, bare, variant="msldm-large")


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the reference implementations (test extra)


@pytest.fixture(scope="module")
def reference():
    """The reference modules: audio-diffusion-pytorch 0.0.43 and DAC's encoder/decoder (torchaudio stubbed)."""
    adp_modules = pytest.importorskip("audio_diffusion_pytorch.modules")
    adp_diffusion = pytest.importorskip("audio_diffusion_pytorch.diffusion")
    if importlib.util.find_spec("dac") is None:
        pytest.skip("descript-audio-codec is not installed")
    from test_parity_dac import ReferenceSourceVAE  # stubs the unused torchaudio import of dac

    torch.manual_seed(0)
    vae = perturb_(ReferenceSourceVAE(**SMALL_VAE)).eval()
    unet = perturb_(adp_modules.UNet1d(**SMALL_UNET, kernel_sizes_init=[1, 3, 7], use_context_time=True)).eval()
    return {"vae": vae, "unet": unet, "diffusion": adp_diffusion}


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """The reference weights saved in the original formats, converted, and loaded back with from_pretrained."""
    folder = tmp_path_factory.mktemp("original")
    training_code = Throwaway(folder)
    vae_sd = {f"encoder.{k}": v for k, v in reference["vae"].encoder.state_dict().items()}
    vae_sd |= {f"decoder.{k}": v for k, v in reference["vae"].decoder.state_dict().items()}
    save_vae_file(folder / "sourcevae_ckpt", vae_sd)
    hyper_parameters = training_code.hyper_parameters(SMALL_UNET)
    save_lightning_file(folder / "msldm.ckpt", reference["unet"].state_dict(), hyper_parameters)
    training_code.forget()  # the module no longer exists: an ordinary unpickle fails
    with pytest.raises(ModuleNotFoundError):
        torch.load(folder / "msldm.ckpt", weights_only=False)
    out = folder / "pipeline"
    assert cli(["convert-original", "--vae", str(folder / "sourcevae_ckpt"), "--unet", str(folder / "msldm.ckpt"),
                "--out", str(out)]) == 0
    assert training_code.executed() == [] and not training_code.loaded()
    pipe = MultiSourceLatentPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def max_diff(a, b, label):
    """Max abs difference, printed (``pytest -s``) so that docs/convert_original.md can quote it."""
    assert a.shape == b.shape
    diff = (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()
    print(f"max abs diff, {label}: {diff:.1e}")
    return diff


@torch.no_grad()
def test_converted_vae_and_unet_match_the_reference(reference, converted):
    ref_vae, ref_unet = reference["vae"], reference["unet"]
    audio = 0.3 * torch.randn(2, 1, 48 * 320 + 17, generator=torch.Generator().manual_seed(1))
    moments = converted.vae.encode(audio).latent_dist.parameters
    ref_moments = ref_vae.encoder(audio)
    latents = ref_moments[:, :LATENT]
    decoded, ref_decoded = converted.vae.decode(latents).sample, ref_vae.decoder(latents)
    assert ref_decoded.abs().max() > 0.1
    assert max_diff(moments, ref_moments, "SourceVAE encode") <= 1e-5
    assert max_diff(decoded, ref_decoded, "SourceVAE decode") <= 1e-5

    x = torch.randn(3, 4 * LATENT, 4 * converted.unet.length_multiple, generator=torch.Generator().manual_seed(2))
    c_noise = torch.log(torch.tensor([0.01, 0.4, 3.0])) / 4
    expected = ref_unet(x, c_noise)
    assert expected.abs().max() > 0.1
    assert max_diff(converted.unet(x, c_noise).sample, expected, "UNet") <= 1e-5


def reference_generate(reference, noise, known, mask, steps, s_churn, generator):
    """The MSLDM authors' sampling loop (``generate_track`` of their inference notebook, num_resamples=1) on the
    reference modules: their EDM preconditioning (audio-diffusion-pytorch's ``Diffusion.get_scale_weights``; MSLDM's
    own wrapper returns the denoised latent unclamped) and ``KarrasSchedule(1e-2, 3, rho=7)``."""
    diffusion = reference["diffusion"].Diffusion(reference["unet"], sigma_distribution=None, sigma_data=0.4)

    def denoise_fn(x, sigma):
        c_skip, c_out, c_in, c_noise = diffusion.get_scale_weights(torch.full((x.shape[0],), float(sigma)))
        return c_skip * x + c_out * reference["unet"](c_in * x, c_noise)

    sigmas = reference["diffusion"].KarrasSchedule(sigma_min=1e-2, sigma_max=3, rho=7)(steps, "cpu")
    x = sigmas[0] * noise
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        noisy_source = known + sigma * torch.randn(known.shape, generator=generator)
        x = mask * noisy_source + (1.0 - mask) * x
        sigma_hat = sigma * (gamma + 1)
        x_hat = x + torch.randn(x.shape, generator=generator) * (sigma_hat**2 - sigma**2) ** 0.5
        d = (x_hat - denoise_fn(x_hat, sigma_hat)) / sigma_hat
        x = x_hat + d * (sigma_next - sigma_hat)
    return mask * known + (1.0 - mask) * x


def reference_decode(reference, latents, num_samples):
    b, kc, f = latents.shape
    audio = reference["vae"].decoder(latents.reshape(b * kc // LATENT, LATENT, f))
    return audio.reshape(b, kc // LATENT, -1)[..., :num_samples]


@torch.no_grad()
@pytest.mark.slow
def test_partial_generation_matches_the_reference_loop(reference, converted):
    """Paper sampler (churned Euler, s_churn 20): given drums, the other stems generated, audio out."""
    frames, steps = 2 * converted.unet.length_multiple, 8
    num_samples = converted.vae.num_samples(frames)
    t = torch.arange(num_samples) / 22050
    drums = (0.4 * torch.sin(2 * math.pi * 90 * t) * (torch.sin(2 * math.pi * 2 * t) > 0)).numpy().astype(np.float32)
    out = converted(stems={"drums": drums}, audio_length_in_s=num_samples / 22050, num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(0), output_type="pt")

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4 * LATENT, frames, generator=generator)
    stems = torch.zeros(4, 1, 320 * frames)
    stems[1, 0, :num_samples] = torch.from_numpy(drums)
    known = reference["vae"].encoder(stems)[:, :LATENT, :frames].reshape(1, 4 * LATENT, frames)
    mask = torch.zeros(1, 4, LATENT, 1)
    mask[:, 1] = 1.0
    mask = mask.reshape(1, 4 * LATENT, 1)
    latents = reference_generate(reference, noise, known, mask, steps, s_churn=20.0, generator=generator)
    audio = reference_decode(reference, latents, num_samples)
    audio[:, 1] = torch.from_numpy(drums)

    assert audio[:, [0, 2, 3]].abs().max() > 0.05  # generated stems are not silent
    assert max_diff(out.stems, audio, "partial generation, stems") <= 1e-4
    assert max_diff(out.mixture, audio.sum(dim=1), "partial generation, mix") <= 1e-4


@torch.no_grad()
def test_total_generation_matches_the_reference_loop(reference, converted):
    """All four stems from fixed noise. Without churn: with it, the reference loop also draws an (unused)
    imputation noise every step, so the two random streams would differ by construction, not by the math."""
    frames, steps = 2 * converted.unet.length_multiple, 8
    num_samples = converted.vae.num_samples(frames)
    noise = torch.randn(1, 4 * LATENT, frames, generator=torch.Generator().manual_seed(3))
    out = converted(audio_length_in_s=num_samples / 22050, num_inference_steps=steps, s_churn=0.0, latents=noise,
                    output_type="pt")
    zeros = torch.zeros_like(noise)
    latents = reference_generate(reference, noise, zeros, zeros[..., :1], steps, 0.0, torch.Generator())
    audio = reference_decode(reference, latents, num_samples)
    assert audio.abs().max() > 0.05
    assert max_diff(out.stems, audio, "total generation, stems") <= 1e-4
    assert max_diff(out.mixture, audio.sum(dim=1), "total generation, mix") <= 1e-4
