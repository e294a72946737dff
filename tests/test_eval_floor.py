"""The evaluation's floor and reconstruction tasks and the level statistics beside the FADs."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from eval_fixtures import SR, STEMS, write_dataset
from test_eval_protocol import BandEnergyEmbedder, small

from mslddm.evaluation.levels import clip_levels, level_statistics
from mslddm.evaluation.protocol import evaluate
from mslddm.evaluation.report import markdown
from mslddm.factory import build_pipeline


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, num_tracks=5, seconds=6.0, split="test")
    # other songs for the training split (write_dataset seeds songs by index: shift them)
    import eval_fixtures

    original = eval_fixtures.song
    eval_fixtures.song = lambda seed, *a, **k: original(seed + 50, *a, **k)
    try:
        write_dataset(root, num_tracks=5, seconds=6.0, split="train")
    finally:
        eval_fixtures.song = original
    return root


class IdentityVAEPipeline:
    """A pipeline whose VAE reconstructs perfectly (hop 1): the reconstruction must then equal the real chunks."""

    stem_names, sample_rate = list(STEMS), SR
    vae = SimpleNamespace(hop_length=1, parameters=lambda: iter([torch.zeros(1)]))

    @staticmethod
    def encode_stems(audio):
        return audio.clone()

    @staticmethod
    def decode_latents(latents):
        return latents.clone()


def test_identity_vae_reconstructs_at_fad_zero_and_real_levels(tmp_path, data):
    result = evaluate(IdentityVAEPipeline(), data, tmp_path, BandEnergyEmbedder(),
                      small(tasks=("floor", "reconstruction")), log=lambda m: None).to_dict()
    recon = result["reconstruction"]
    assert all(abs(v) < 1e-6 for v in recon["fad"].values())
    for part, stats in recon["levels"].items():
        for key, value in stats.items():
            assert value == pytest.approx(recon["levels_reference"][part][key], abs=1e-4), (part, key)
    # the floor compares other songs: a real distance, larger than the identity's
    assert result["floor"]["num_train_chunks"] == result["floor"]["num_reference_chunks"]
    assert result["floor"]["fad"]["mix"] > 0.01
    text = markdown(result)
    assert "real training chunks (floor)" in text and "| 0.000 |" in text and "mix / floor" in text


@pytest.mark.slow
def test_a_random_vae_scores_far_above_the_floor_and_resumes(tmp_path, data):
    pipe = build_pipeline("tiny", STEMS)
    config = small(tasks=("floor", "reconstruction"))
    first = evaluate(pipe, data, tmp_path, BandEnergyEmbedder(), config, log=lambda m: None).to_dict()
    assert first["reconstruction"]["fad"]["mix"] > 2 * first["floor"]["fad"]["mix"]
    # reconstructions are kept: a rerun without a pipeline gives the same numbers
    again = evaluate(None, data, tmp_path, BandEnergyEmbedder(), config, log=lambda m: None).to_dict()
    assert again["reconstruction"]["fad"] == first["reconstruction"]["fad"]


def test_floor_is_skipped_with_a_message_without_a_train_split(tmp_path):
    root = write_dataset(tmp_path / "data", num_tracks=3, seconds=4.0, split="test")
    logs = []
    result = evaluate(IdentityVAEPipeline(), root, tmp_path / "out", BandEnergyEmbedder(),
                      small(tasks=("floor",), num_clips=3), log=logs.append)
    assert result.floor is None and any("No train split" in m for m in logs)


def test_level_statistics_measure_what_they_say():
    t = np.arange(SR * 2) / SR
    low = 0.1 * np.sin(2 * np.pi * 100 * t)
    high = 0.1 * np.sin(2 * np.pi * 2000 * t)
    bursts = high * (np.sin(2 * np.pi * 2 * t) > 0.9)
    levels = clip_levels(low, SR)
    assert levels["dbfs"] == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.05)
    assert levels["low"] > 0.95 and clip_levels(high, SR)["low"] < 0.05
    assert levels["range_db"] < 1.0 and clip_levels(bursts, SR)["range_db"] > 40
    clips = [np.stack([low, np.zeros_like(low)]), np.stack([high, 1e-4 * high])]
    stats = level_statistics(clips, ["a", "b"], SR)
    assert stats["a"]["share_below_silence"] == 0 and stats["b"]["share_below_silence"] == 1
    assert np.isnan(stats["b"]["frame_energy_range_db"])  # no sounding clip to measure
    assert stats["a"]["low_energy_share"] == pytest.approx(0.5, abs=0.05)
