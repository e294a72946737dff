"""Windowed generation (music longer than the model's window), continuation and whole-length accompaniment."""

import math

import numpy as np
import pytest
import torch

from conftest import STEMS
from mslddm.pipelines.windows import crossfade_weights, plan_windows

SR = 22050
STEPS = 2
WINDOW = dict(window_s=0.7, overlap_s=0.3, crossfade_s=0.1)  # 48 frames of 69/s (a multiple of the tiny UNet's 8)


def seeded(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def tone(freq, seconds, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("frames,window,overlap", [(200, 48, 16), (97, 48, 20), (49, 48, 1), (48 * 7, 48, 47)])
def test_plan_covers_every_frame_with_overlapping_windows(frames, window, overlap):
    plan = plan_windows(frames, window, overlap, crossfade=min(4, overlap), multiple=8)
    assert plan.starts[0] == 0 and plan.starts[-1] + plan.window == frames
    gaps = [b - a for a, b in zip(plan.starts, plan.starts[1:])]
    assert all(0 < g <= plan.window - overlap for g in gaps)  # consecutive windows share at least the overlap
    for j in range(1, plan.num_windows):
        assert plan.imputed(j) + plan.blended(j) == plan.starts[j - 1] + plan.window - plan.starts[j]
        assert plan.blended(j) == min(4, overlap)


def test_plan_is_one_window_when_the_request_fits():
    plan = plan_windows(40, 48, 16, 4, multiple=8)
    assert plan.starts == [0] and plan.window == 40 and plan.boundaries() == []


@pytest.mark.parametrize("kwargs,match", [
    (dict(frames=100, window=48, overlap=0, crossfade=0), "overlap"),
    (dict(frames=100, window=48, overlap=48, crossfade=0), "overlap"),
    (dict(frames=100, window=48, overlap=8, crossfade=9), "crossfade"),
    (dict(frames=100, window=4, overlap=1, crossfade=0), "window"),
])
def test_plan_rejects_windows_that_cannot_continue_each_other(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_windows(multiple=8, **kwargs)


def test_crossfade_weights_rise_strictly_inside_zero_and_one():
    w = crossfade_weights(5)
    assert torch.all(w > 0) and torch.all(w < 1) and torch.all(w[1:] > w[:-1])


def test_window_settings_come_from_the_unet_config(pipe):
    fps = SR / pipe.vae.hop_length
    assert pipe.window_settings()["window"] == 1024  # the constructor's default: the paper's segments
    pipe.unet.register_to_config(window_frames=None)
    assert pipe.window_settings()["window"] == math.ceil(round(12.0 * fps) / 8) * 8  # rounded up: 12 s is one window
    pipe.unet.register_to_config(window_frames=64)
    assert pipe.window_settings() == {"window": 64, "overlap": 21, "crossfade": 5}
    assert pipe.window_settings(window_s=1.0, overlap_s=0.5, crossfade_s=0.0) == {
        "window": math.ceil(round(fps) / 8) * 8, "overlap": round(0.5 * fps), "crossfade": 0}
    with pytest.raises(ValueError, match="window_s"):
        pipe.window_settings(window_s=0)


def test_windowed_total_generation_has_the_length_and_reproduces_per_sample(pipe):
    seconds = 2.5  # about 4 windows
    out = pipe(audio_length_in_s=seconds, num_inference_steps=STEPS, num_samples=2, generator=seeded(3, 4), **WINDOW)
    assert out.stems.shape == (2, 4, round(seconds * SR)) and out.sampling["windows"] >= 4
    assert out.sampling["model_evaluations"] == STEPS * out.sampling["windows"] == pipe.num_timesteps
    assert np.isfinite(out.stems).all()
    alone = pipe(audio_length_in_s=seconds, num_inference_steps=STEPS, generator=seeded(4), **WINDOW)
    np.testing.assert_allclose(out.stems[1], alone.stems[0], atol=1e-5)
    again = pipe(audio_length_in_s=seconds, num_inference_steps=STEPS, generator=seeded(4), **WINDOW)
    np.testing.assert_array_equal(alone.stems, again.stems)


def test_a_request_that_fits_one_window_is_the_one_pass_generation(pipe):
    kwargs = dict(audio_length_in_s=0.6, num_inference_steps=STEPS, output_type="latent")
    one = pipe(generator=seeded(1), **kwargs, **WINDOW)
    default = pipe(generator=seeded(1), **kwargs)  # the 12-s default window
    assert one.sampling["windows"] == default.sampling["windows"] == 1
    torch.testing.assert_close(one.stems, default.stems, rtol=0, atol=0)


def test_each_window_continues_what_the_window_before_it_made(pipe):
    kwargs = dict(audio_length_in_s=1.0, num_inference_steps=STEPS, output_type="latent", **WINDOW)
    plain = pipe(generator=seeded(0), **kwargs).stems.reshape(1, 4 * 4, -1)
    steps = []

    def silence_first_window(p, i, t, tensors):  # the first window's last evaluation writes zeros
        steps.append(i)
        return {"latents": tensors["latents"] * 0} if i == STEPS - 1 else {}

    changed = pipe(generator=seeded(0), callback_on_step_end=silence_first_window, **kwargs).stems.reshape(1, 16, -1)
    plan = plan_windows(plain.shape[-1], **pipe.window_settings(**WINDOW), multiple=pipe.unet.length_multiple)
    assert plan.num_windows == 2 and steps == list(range(pipe.num_timesteps)) and pipe.num_timesteps == 2 * STEPS
    start, imputed, blended = plan.starts[1], plan.imputed(1), plan.blended(1)
    assert torch.all(changed[..., :start + imputed] == 0)  # window 2 kept the frames it shares, as made
    free = slice(start + imputed + blended, None)
    assert not torch.allclose(changed[..., free], plain[..., free], atol=1e-3)  # and its music follows them


def test_windowed_partial_generation_keeps_the_whole_given_stem(pipe):
    guitar = tone(330.0, 2.2)
    out = pipe(stems={"guitar": guitar}, num_inference_steps=STEPS, generator=seeded(0), **WINDOW)
    assert out.stems.shape == (1, 4, len(guitar)) and out.generated == ["bass", "drums", "piano"]
    np.testing.assert_array_equal(out.stems[0, 2], guitar)
    assert out.sampling["windows"] >= 3


def test_memory_stays_bounded_on_a_long_request(pipe):
    """The UNet never sees more than one window, and the VAE decodes in tiles, however long the request."""
    unet_frames, decoder_frames = [], []
    pipe.unet.register_forward_pre_hook(lambda m, args: unet_frames.append(args[0].shape[-1]))
    pipe.vae.decoder.register_forward_pre_hook(lambda m, args: decoder_frames.append(args[0].shape[-1]))
    pipe.vae.enable_tiling(tile_frames=64)
    window = pipe.window_settings(**WINDOW)["window"]
    out = pipe(audio_length_in_s=8.0, num_inference_steps=1, generator=seeded(0), **WINDOW)
    assert out.stems.shape[-1] == 8 * SR
    assert max(unet_frames) == window and len(unet_frames) == out.sampling["windows"] > 10
    assert max(decoder_frames) <= 64 + 2 * pipe.vae.decoder_context_frames()


def louder(stems):
    """A result's stems 20 dB up: an untrained tiny model's lie near -51 dBFS, under SILENCE_DBFS (refused as given
    stems), where a trained model's lie near -29."""
    return {name: 10 * stems[0, i] for i, name in enumerate(STEMS)}


def test_extend_continues_every_stem_of_a_previous_result(pipe):
    first = pipe(audio_length_in_s=0.6, num_inference_steps=STEPS, generator=seeded(2))
    given = louder(first.stems)
    longer = pipe(stems=given, extend_s=1.5, num_inference_steps=STEPS, generator=seeded(2), **WINDOW)
    n = first.stems.shape[-1]
    assert longer.stems.shape == (1, 4, n + round(1.5 * SR)) and longer.generated == STEMS
    fade = 512
    np.testing.assert_array_equal(longer.stems[0, :, : n - fade], 10 * first.stems[0, :, : n - fade])
    assert np.isfinite(longer.stems).all() and np.abs(longer.stems[0, :, n:]).max() > 0
    np.testing.assert_allclose(longer.mixture[0], longer.stems[0].sum(axis=0), atol=1e-6)


def test_extend_a_take_generates_the_band_throughout(pipe):
    guitar = tone(220.0, 0.8)
    out = pipe(stems={"guitar": guitar}, generate=["bass"], extend_s=0.5, num_inference_steps=STEPS,
               generator=seeded(0), **WINDOW)
    assert out.stems.shape[-1] == len(guitar) + SR // 2 and out.generated == ["bass", "guitar"]
    np.testing.assert_array_equal(out.stems[0, 2, : len(guitar) - 512], guitar[:-512])
    assert np.all(out.stems[0, [1, 3]] == 0)  # neither given nor asked for: silent
    assert np.abs(out.stems[0, 0]).max() > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(extend_s=1.0), "stems to continue"),
    (dict(extend_s=-1.0, stems={"bass": tone(50, 0.5)}), "extend_s"),
    (dict(extend_s=1.0, audio_length_in_s=2.0, stems={"bass": tone(50, 0.5)}), "either"),
    (dict(audio_length_in_s=2.0, window_s=-1.0), "window_s"),
    (dict(audio_length_in_s=2.0, window_s=0.7, overlap_s=0.75), "overlap"),
])
def test_bad_window_and_extend_arguments_are_sentences(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(num_inference_steps=1, **kwargs)


def test_a_continuation_samples_only_the_windows_it_extends(pipe):
    first = pipe(audio_length_in_s=3.0, num_inference_steps=STEPS, generator=seeded(2), **WINDOW)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, args: calls.append(1))
    longer = pipe(stems=louder(first.stems), extend_s=0.5, num_inference_steps=STEPS, generator=seeded(2), **WINDOW)
    plan = plan_windows(longer.stems.reshape(1, 4, -1).shape[-1] // pipe.vae.hop_length, 48, 21, 7, multiple=8)
    assert longer.sampling["windows"] < first.sampling["windows"] and longer.sampling["windows"] <= 3
    assert len(calls) == STEPS * longer.sampling["windows"] == longer.sampling["model_evaluations"]
    assert plan.num_windows > longer.sampling["windows"]
    np.testing.assert_array_equal(longer.stems[0, :, : 3 * SR - 512], 10 * first.stems[0, :, : 3 * SR - 512])


def test_consistency_sampling_of_partial_and_windowed_generation_per_sample(pipe):
    """A distilled student's sampler (docs/distillation.md) through the pipeline: given stems kept exactly across
    windows, each item reproducible from its own seed in any batch, finite results, its default 4 steps."""
    guitar = tone(330.0, 1.6)
    kwargs = dict(stems={"guitar": guitar}, sampler="consistency", **WINDOW)
    out = pipe(num_samples=2, generator=seeded(3, 4), **kwargs)
    assert out.sampling["num_inference_steps"] == 4 and out.sampling["windows"] >= 2
    assert out.sampling["model_evaluations"] == 4 * out.sampling["windows"]
    assert np.isfinite(out.stems).all() and out.generated == ["bass", "drums", "piano"]
    np.testing.assert_array_equal(out.stems[:, 2], np.stack([guitar, guitar]))
    alone = pipe(generator=seeded(4), **kwargs)
    np.testing.assert_allclose(out.stems[1], alone.stems[0], atol=1e-5)
