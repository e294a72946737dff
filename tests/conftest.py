"""Tiny components shared by the tests (diffusers' get_dummy_components pattern)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

STEMS = ["bass", "drums", "guitar", "piano"]
LATENT = 4


def tiny_vae():
    from mslddm import SourceVAE

    torch.manual_seed(0)
    return SourceVAE(encoder_dim=4, latent_channels=LATENT, decoder_dim=16)


def tiny_unet(num_stems=len(STEMS)):
    from mslddm import MultiSourceUNet1DModel

    torch.manual_seed(1)
    return MultiSourceUNet1DModel(
        in_channels=num_stems * LATENT,
        channels=16,
        patch_factor=2,
        patch_blocks=1,
        multipliers=(1, 2, 1),
        factors=(2, 2),
        num_blocks=(1, 1),
        attentions=(False, True),
        attention_heads=2,
        attention_features=8,
        attention_multiplier=2,
        resnet_groups=4,
    )


def tiny_pipeline(stem_names=STEMS):
    from mslddm import EDMScheduler, MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline(
        vae=tiny_vae(), unet=tiny_unet(len(stem_names)), scheduler=EDMScheduler(), stem_names=stem_names
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="session")
def saved_pipeline(tmp_path_factory):
    """A tiny random pipeline saved to disk once per session."""
    path = tmp_path_factory.mktemp("pipelines") / "tiny"
    tiny_pipeline().save_pretrained(path)
    return path
