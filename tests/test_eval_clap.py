"""CLAP plumbing through transformers with a tiny random model (skipped without transformers)."""

import numpy as np
import pytest
from eval_fixtures import SR, song

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    text = transformers.ClapTextConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    audio = transformers.ClapAudioConfig(
        spec_size=256,
        window_size=8,
        num_mel_bins=64,
        patch_embeds_hidden_size=16,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        hidden_size=32,
        enable_fusion=False,
    )
    config = transformers.ClapConfig(
        text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16
    )
    folder = tmp_path_factory.mktemp("clap")
    transformers.ClapModel(config).save_pretrained(folder)
    transformers.ClapFeatureExtractor(feature_size=64).save_pretrained(folder)
    return folder


def test_clap_embeds_one_vector_per_10s(tiny_clap):
    from mslddm.evaluation.embedders import get_embedder

    embedder = get_embedder("clap", weights=str(tiny_clap))
    emb = embedder.embed(song(0, 21.0).sum(0), SR)
    assert emb.shape == (2, 16) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)  # CLAP's normalised projection
    np.testing.assert_array_equal(emb, embedder.embed(song(0, 21.0).sum(0), SR))  # no random cropping
    assert len(embedder.identity()["weights_sha256"]) == 64


def test_clap_without_weights_explains(tmp_path):
    from mslddm.evaluation.embedders.clap import ClapEmbedder

    with pytest.raises(ValueError, match="needs weights"):
        ClapEmbedder()
    with pytest.raises(FileNotFoundError, match="Could not load CLAP"):
        ClapEmbedder(str(tmp_path / "nothing"))
