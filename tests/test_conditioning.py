"""Trained partial generation: the UNet's optional conditioning input (given stems' clean latents and masks), the
training draws and loss, and the pipeline passing the given stems to a conditioned UNet."""

import numpy as np
import pytest
import torch

from conftest import LATENT, STEMS, tiny_pipeline, tiny_unet
from mslddm import MultiSourceUNet1DModel
from mslddm.models.unet_1d_multisource import stem_conditioning, stem_conditioning_channels
from mslddm.training import losses

COND = stem_conditioning_channels(len(STEMS), LATENT)


def conditioned_copy(unet, scale=0.0):
    """``unet`` with a conditioning input: zero (as after conversion) or random weights of ``scale``."""
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    model = MultiSourceUNet1DModel.from_config({**config, "conditioning_channels": COND})
    missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
    assert missing == ["to_cond.weight"] and not unexpected
    if scale:
        torch.manual_seed(3)
        model.to_cond.weight.data.normal_(0, scale)
    return model.eval()


def test_stem_conditioning_layout():
    known = torch.randn(2, len(STEMS) * LATENT, 8)
    given = torch.tensor([[True, False, False, True], [False, False, False, False]])
    cond = stem_conditioning(known, given, sigma_data=0.5)
    assert cond.shape == (2, COND, 8) == (2, len(STEMS) * (LATENT + 1), 8)
    torch.testing.assert_close(cond[0, :LATENT], known[0, :LATENT] / 0.5)
    assert not cond[0, LATENT:3 * LATENT].any()  # drums and guitar are not given: zeros
    torch.testing.assert_close(cond[0, 3 * LATENT:4 * LATENT], known[0, 3 * LATENT:4 * LATENT] / 0.5)
    assert cond[0, -len(STEMS):].tolist() == [[1.0] * 8, [0.0] * 8, [0.0] * 8, [1.0] * 8]
    assert not cond[1].any()  # nothing given: total generation is all zeros
    frames = torch.zeros(1, len(STEMS), 8, dtype=torch.bool)
    frames[0, :, :3] = True  # a continuation: every stem known for 3 frames
    cond = stem_conditioning(known[:1], frames, 1.0)
    assert cond[0, :-len(STEMS), :3].equal(known[0, :, :3]) and not cond[0, :, 3:].any()
    with pytest.raises(ValueError, match="does not fit"):
        stem_conditioning(known, given[:, :3], 1.0)


def test_zero_initialised_conditioning_starts_equal_and_none_is_total_generation():
    base = tiny_unet().eval()
    x, t = torch.randn(2, len(STEMS) * LATENT, 16), torch.tensor([0.1, -0.3])
    cond = stem_conditioning(torch.randn_like(x), torch.tensor([[True, False, True, False]] * 2), 1.0)
    with torch.no_grad():
        reference = base(x, t).sample
        zero = conditioned_copy(base)
        torch.testing.assert_close(zero(x, t, conditioning=cond).sample, reference)
        trained = conditioned_copy(base, scale=0.5)
        assert (trained(x, t, conditioning=cond).sample - reference).abs().max() > 1e-2  # the input is read
        # No bias: all-zero conditioning adds nothing, the same as None (total generation)
        torch.testing.assert_close(trained(x, t, conditioning=torch.zeros_like(cond)).sample, reference)
        torch.testing.assert_close(trained(x, t).sample, reference)
    with pytest.raises(ValueError, match="without conditioning_channels"):
        base(x, t, conditioning=cond)
    with pytest.raises(ValueError, match="`conditioning` must have shape"):
        trained(x, t, conditioning=cond[:, 1:])


def test_draws_keep_one_generated_stem_and_honour_total_probability():
    gen = torch.Generator().manual_seed(0)
    given = losses.draw_given_stems(4000, 4, given_probability=0.9, total_probability=0.2, generator=gen)
    assert not given.all(1).any()  # something is always left to generate
    nothing = (~given.any(1)).float().mean().item()
    assert 0.17 < nothing < 0.24  # total generation: 20 % drawn, plus the rare draws of no stem at all
    assert losses.draw_given_stems(50, 4, 1.0, 1.0, generator=gen).sum() == 0
    frames = losses.draw_given_frames(given[:200], 40, continuation_probability=1.0, generator=gen)
    assert frames.shape == (200, 4, 40) and frames[:, :, :4].all()  # every item knows at least 10 % of frames
    assert (frames[:, :, 24:] == given[:200, :, None]).all()  # never beyond 60 %
    with pytest.raises(ValueError, match="must lie in"):
        losses.draw_given_stems(2, 4, 1.5, 0.0)


def test_weighted_loss_counts_only_generated_stems():
    clean = torch.zeros(2, 8, 4)
    denoised = clean.clone()
    denoised[:, :4] = 1.0  # an error on the first stem only
    sigma = torch.ones(2)
    weight = torch.zeros(2, 8, 1)
    weight[:, 4:] = 1.0  # ... which is given
    assert losses.edm_training_loss(denoised, clean, sigma, 1.0, weight=weight) == 0
    full = losses.edm_training_loss(denoised, clean, sigma, 1.0)
    only_first = losses.edm_training_loss(denoised, clean, sigma, 1.0, weight=1 - weight)
    torch.testing.assert_close(only_first, 2 * full)  # the mean over the weighted half


class Spy(torch.nn.Module):
    """Wraps a UNet and records the conditioning of every call."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.seen = unet, []

    def forward(self, sample, timestep, return_dict=True, conditioning=None):
        self.seen.append(conditioning)
        return self.unet(sample, timestep, return_dict=return_dict, conditioning=conditioning)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)


def tone(freq, seconds=0.4, sr=22050):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_pipeline_gives_a_conditioned_unet_the_given_stems():
    pipe = tiny_pipeline()
    pipe.unet = conditioned_copy(pipe.unet, scale=0.5)
    spy = Spy(pipe.unet)
    pipe.unet = spy
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = pipe(stems={"drums": tone(200)}, num_inference_steps=3, output_type="latent", generator=seed())
    cond = spy.seen[-1]
    assert len(spy.seen) == 3 and cond is not None and cond.shape[1] == COND
    assert cond[0, -len(STEMS):].amax(-1).tolist() == [0.0, 1.0, 0.0, 0.0]  # drums given, the others generated
    drums = out.stems[0, 1]
    torch.testing.assert_close(cond[0, LATENT:2 * LATENT], drums / pipe.scheduler.config.sigma_data)
    spy.seen.clear()
    pipe(audio_length_in_s=0.4, num_inference_steps=2, generator=seed())
    assert spy.seen == [None, None]  # total generation: nothing given, no conditioning
    # The conditioning changes what is generated (the same weights without it: imputation only)
    with_cond = out.stems[0, [0, 2, 3]]
    pipe.unet = spy.unet
    weights = pipe.unet.to_cond.weight.data.clone()
    pipe.unet.to_cond.weight.data.zero_()
    without = pipe(stems={"drums": tone(200)}, num_inference_steps=3, output_type="latent", generator=seed())
    pipe.unet.to_cond.weight.data.copy_(weights)
    assert (with_cond - without.stems[0, [0, 2, 3]]).abs().max() > 1e-3


def test_windows_and_continuation_give_a_conditioned_unet_the_known_frames():
    """Long-form: a later window knows the frames it shares with the previous one (every stem); continuation: the
    given part of each stem. Both reach a conditioned UNet as given frames, beside imputation."""
    pipe = tiny_pipeline()
    spy = Spy(conditioned_copy(pipe.unet, scale=0.5))
    pipe.unet = spy
    window = dict(window_s=0.7, overlap_s=0.3, crossfade_s=0.1)  # 48-frame windows
    out = pipe(audio_length_in_s=1.6, num_inference_steps=2, generator=torch.Generator().manual_seed(0), **window)
    assert out.sampling["windows"] > 1 and np.isfinite(out.stems).all()
    first, later = spy.seen[0], spy.seen[-1]
    assert first is None  # the first window of a total generation knows nothing
    masks = later[0, -len(STEMS):]
    known = masks[0].bool()
    assert masks.eq(masks[:1]).all() and known[0] and not known[-1]  # every stem: the shared frames, then free
    spy.seen.clear()
    take = tone(220, seconds=0.5)
    out = pipe(stems={"guitar": take}, generate=["bass", "guitar"], extend_s=0.4, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    masks = spy.seen[-1][0, -len(STEMS):]
    assert masks[1].all() and masks[3].all()  # drums and piano held silent: known throughout
    assert masks[2, 0] == 1 and masks[2, -1] == 0  # the guitar: its take, then its continuation
    assert not masks[0].any()  # the bass: generated throughout


def test_guidance_on_the_given_stems():
    """guidance_scale 1 is the conditioned model itself, 0 the model without its conditioning input (imputation
    only); other scales extrapolate; a UNet without a conditioning input refuses any other scale."""
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="guidance_scale 2 needs a UNet trained with given stems"):
        pipe(stems={"drums": tone(200)}, num_inference_steps=2, guidance_scale=2.0)
    pipe.unet = conditioned_copy(pipe.unet, scale=0.5)
    with pytest.raises(ValueError, match="guidance_scale must be a number >= 0"):
        pipe(stems={"drums": tone(200)}, num_inference_steps=2, guidance_scale=-1.0)

    def run(scale):
        return pipe(stems={"drums": tone(200)}, num_inference_steps=3, output_type="latent", guidance_scale=scale,
                    generator=torch.Generator().manual_seed(0)).stems[0, [0, 2, 3]]

    plain, one, none, two = run(None), run(1.0), run(0.0), run(2.0)
    assert torch.equal(plain, one)
    weights = pipe.unet.to_cond.weight.data.clone()
    pipe.unet.to_cond.weight.data.zero_()
    unconditioned = run(None)
    pipe.unet.to_cond.weight.data.copy_(weights)
    torch.testing.assert_close(none, unconditioned, atol=1e-4, rtol=1e-4)
    assert (two - one).abs().max() > 1e-3 and (none - one).abs().max() > 1e-3
    out = pipe(stems={"drums": tone(200)}, num_inference_steps=2, guidance_scale=2.0)
    assert out.sampling["guidance_scale"] == 2.0 and out.sampling["model_evaluations"] == 2


def test_reconstruction_guidance_draws_the_free_stems_towards_the_given_ones():
    """Reconstruction guidance (any UNet): weight 0 is plain imputation; a weight moves only the free stems' estimate,
    against the gradient of the given stems' reconstruction error, and is recorded."""
    from mslddm.schedulers.sampling import reconstruction_guided

    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="reconstruction_guidance must be a number >= 0"):
        pipe(stems={"drums": tone(200)}, num_inference_steps=2, reconstruction_guidance=float("nan"))
    denoiser = pipe.scheduler.denoiser(pipe.unet)
    torch.manual_seed(0)
    x, known = torch.randn(1, len(STEMS) * LATENT, 16), torch.randn(1, len(STEMS) * LATENT, 16)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, LATENT:2 * LATENT] = True  # drums given
    sigma = torch.tensor(2.0)
    plain = denoiser(x, sigma)
    assert reconstruction_guided(denoiser, known, mask, 0.0) is denoiser
    moved = reconstruction_guided(denoiser, known, mask, 4.0)(x, sigma)
    torch.testing.assert_close(moved[mask], plain[mask])  # the given stem's estimate is untouched
    step = moved - plain
    assert step[~mask].abs().max() > 1e-4
    # A small step along it lowers the given stem's reconstruction error (it is the error's descent direction)
    def error(x):
        return (denoiser(x, sigma) - known)[mask].square().sum()

    assert error(x + 1e-3 * step) < error(x) < error(x - 1e-3 * step)

    def run(weight):
        return pipe(stems={"drums": tone(200)}, num_inference_steps=3, reconstruction_guidance=weight,
                    generator=torch.Generator().manual_seed(0))

    off, on = run(None), run(4.0)
    assert np.array_equal(off.stems, run(0.0).stems) and np.isfinite(on.stems).all()
    assert np.abs(on.stems[0, [0, 2, 3]] - off.stems[0, [0, 2, 3]]).max() > 1e-4
    assert on.sampling["reconstruction_guidance"] == 4.0 and "reconstruction_guidance" not in off.sampling
    from mslddm.records import sampling_record  # what settings.json (CLI, page) records of a run

    assert sampling_record(on)["reconstruction_guidance"] == 4.0 and "reconstruction_guidance" not in sampling_record(off)
    # A pipeline's own default (its scheduler config, saved with it) applies when none is asked for
    pipe.scheduler.register_to_config(reconstruction_guidance=4.0)
    assert np.array_equal(run(None).stems, on.stems) and np.array_equal(run(0.0).stems, off.stems)
