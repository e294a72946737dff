"""SourceVAE against the reference DAC modules (descript-audio-codec), when that package is installed.

descript-audio-codec is not a dependency: it pulls a torchaudio that does not load with CPU torch here,
and only ``dac.model.dac`` is needed, which never calls torchaudio: an empty stand-in module lets it import.
"""

import importlib.util
import sys
import types

import pytest
import torch

from mslddm.models.autoencoder_source import SourceVAE

if importlib.util.find_spec("dac") is None:
    pytest.skip("descript-audio-codec is not installed", allow_module_level=True)
try:
    import torchaudio  # noqa: F401
except (
    ImportError,
    OSError,
    RuntimeError,
):  # absent or a build that fails to load; dac.model.dac never uses it
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")
dac_model = pytest.importorskip("dac.model.dac")
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")


class ReferenceSourceVAE(torch.nn.Module):
    """The released checkpoint's layout: DAC's Encoder and Decoder with the decoder's final tanh removed."""

    def __init__(self, encoder_dim, encoder_rates, latent_channels, decoder_dim, decoder_rates):
        super().__init__()
        self.encoder = dac_model.Encoder(encoder_dim, list(encoder_rates), 2 * latent_channels)
        self.decoder = dac_model.Decoder(latent_channels, decoder_dim, list(decoder_rates), 1)
        assert isinstance(self.decoder.model[-1], torch.nn.Tanh)
        self.decoder.model = self.decoder.model[:-1]


def randomise_(model):
    """Makes g differ from ||v|| and alpha, bias non-trivial, so the comparison covers every parameter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
            elif name.endswith("alpha"):
                p.uniform_(0.5, 2.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)


def test_state_dict_layout_matches_reference_paper_config():
    config = {
        "encoder_dim": 64,
        "encoder_rates": (2, 4, 5, 8),
        "latent_channels": 80,
        "decoder_dim": 1536,
        "decoder_rates": (8, 5, 4, 2),
    }
    with torch.device("meta"):
        ours, ref = SourceVAE(**config).state_dict(), ReferenceSourceVAE(**config).state_dict()
    assert list(ours) == list(ref)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert len(ours) == 238


def test_outputs_match_reference():
    config = {
        "encoder_dim": 8,
        "encoder_rates": (2, 4, 5, 8),
        "latent_channels": 16,
        "decoder_dim": 64,
        "decoder_rates": (8, 5, 4, 2),
    }
    torch.manual_seed(0)
    ref = ReferenceSourceVAE(**config).eval()
    randomise_(ref)
    ours = SourceVAE(**config).eval()
    ours.load_state_dict(
        {"encoder." + k: v for k, v in ref.encoder.state_dict().items()}
        | {"decoder." + k: v for k, v in ref.decoder.state_dict().items()},
        strict=True,
    )
    audio = torch.randn(2, 1, 20 * 320 + 17)
    with torch.no_grad():
        moments, ref_moments = ours.encode(audio).latent_dist.parameters, ref.encoder(audio)
        latents = ref_moments[:, :16]
        decoded, ref_decoded = ours.decode(latents).sample, ref.decoder(latents)
    assert moments.shape == ref_moments.shape == (2, 32, 20)
    assert decoded.shape == ref_decoded.shape == (2, 1, ours.num_samples(20))
    torch.testing.assert_close(moments, ref_moments, rtol=0, atol=1e-5)
    torch.testing.assert_close(decoded, ref_decoded, rtol=0, atol=1e-5)
