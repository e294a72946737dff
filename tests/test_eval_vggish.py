"""VGGish plumbing with random weights in torchvggish's state-dict format (no real weights can be had here)."""

import numpy as np
import pytest
import torch
from eval_fixtures import SR, song

from mslddm.evaluation.embedders import get_embedder
from mslddm.evaluation.embedders.vggish import (
    VGGishEmbedder,
    VGGishModel,
    htk_mel_filterbank,
    resolve_vggish_weights,
    vggish_log_mel,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A torchvggish-format state dict (features.*, embeddings.*, plus PCA pproc.* keys) of random weights."""
    torch.manual_seed(0)
    model = VGGishModel()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    state = dict(model.state_dict())
    state["pproc._pca_matrix"] = torch.eye(128)
    state["pproc._pca_means"] = torch.zeros(128, 1)
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(state, path)
    return path, model.eval()


def test_state_dict_layout_is_torchvggish():
    keys = set(VGGishModel().state_dict())
    expected = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")}
    expected |= {f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert keys == expected


@pytest.mark.slow
def test_loads_file_and_embeds_one_128d_vector_per_096s(weights):
    path, model = weights
    embedder = get_embedder("vggish", weights=str(path))
    audio = song(0, 12.0).sum(0)
    emb = embedder.embed(audio, SR)
    assert emb.shape == (12, 128) and np.isfinite(emb).all()
    # same numbers as the model the weights came from, on the same features
    from mslddm.audio import resample
    from mslddm.evaluation.embedders.base import frame_patches

    examples = frame_patches(vggish_log_mel(resample(audio, SR, 16000)), 96)
    with torch.no_grad():
        expected = model(torch.from_numpy(examples)).numpy()
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    assert (emb < 0).any()  # no final ReLU by default (FAD's use_activation=False)
    relu = VGGishEmbedder(path, final_relu=True).embed(audio, SR)
    assert (relu >= 0).all() and np.allclose(relu, np.maximum(emb, 0), atol=1e-5)


def test_frontend_shapes_and_filterbank():
    bank = htk_mel_filterbank(16000, 512, 64, 125.0, 7500.0)
    assert bank.shape == (257, 64) and (bank[0] == 0).all() and bank.max() <= 1.0
    # 1 s at 16 kHz: 1 + (16000 - 400) // 160 = 98 frames of 64 bands
    features = vggish_log_mel(np.random.default_rng(0).normal(size=16000).astype(np.float32))
    assert features.shape == (98, 64)
    assert np.allclose(vggish_log_mel(np.zeros(16000)), np.log(0.01))


def _chirp_and_tones():
    """2 s at 16 kHz: a 440-Hz tone, a chirp from 200 Hz to 6.2 kHz, and a quiet 5-kHz tone in the second half."""
    t = np.arange(32000) / 16000
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
            + 0.05 * np.sin(2 * np.pi * 5000 * t) * (t > 1.0)).astype(np.float32)


def _log_mel_from_the_definition(audio, sr=16000):
    """VGGish's front end from its definition (tensorflow/models research/audioset/vggish: mel_features.py with
    vggish_params), written apart from vggish_log_mel: scipy's STFT of 25-ms periodic-Hann frames every 10 ms,
    512-point magnitudes, 64 triangles linear on the HTK mel scale between 125 and 7500 Hz (the DC bin in none),
    log(mel + 0.01)."""
    from scipy.signal import get_window, stft

    window = get_window("hann", 400)  # periodic
    _, _, spectrum = stft(audio.astype(np.float64), window=window, nperseg=400, noverlap=400 - 160, nfft=512,
                          boundary=None, padded=False, detrend=False)
    magnitude = np.abs(spectrum).T * window.sum()  # scipy scales the spectrum by 1 / sum(window)
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)
    bins = mel(np.arange(257) * sr / 512)
    edges = np.linspace(mel(125.0), mel(7500.0), 64 + 2)
    bank = np.zeros((257, 64))
    for band in range(64):
        low, centre, high = edges[band:band + 3]
        for k in range(1, 257):
            if low < bins[k] <= centre:
                bank[k, band] = (bins[k] - low) / (centre - low)
            elif centre < bins[k] < high:
                bank[k, band] = (high - bins[k]) / (high - centre)
    return np.log(magnitude @ bank + 0.01)


def test_frontend_equals_the_reference_definition_and_its_golden_values():
    from mslddm.evaluation.embedders.base import frame_patches

    audio = _chirp_and_tones()
    features = vggish_log_mel(audio)
    expected = _log_mel_from_the_definition(audio)
    assert features.shape == expected.shape == (198, 64)
    np.testing.assert_allclose(features, expected, atol=1e-4)
    examples = frame_patches(features, 96)  # 0.96-s examples, the incomplete tail dropped
    assert examples.shape == (2, 96, 64)
    # Golden values from a transcription of the reference mel_features.py / vggish_input.waveform_to_examples
    # (float64) on the same signal: examples[patch, frame, bands (0, 3, 8, 26, 41, 49, 54, 58)].
    golden = {
        (0, 0): [0.51992, 2.98885, 4.08941, -4.49130, -4.59254, -4.60095, -4.60279, -4.60364],
        (0, 40): [-3.73361, -2.05058, 4.08916, 3.56662, -4.56449, -4.59526, -4.60014, -4.60208],
        (1, 40): [-3.77285, -2.06526, 4.08917, -4.49164, -4.58033, 1.08779, 2.23603, -4.55457],
        (1, 95): [-3.77286, -2.06531, 4.08917, -4.49037, -4.58898, -4.54257, 2.23611, 3.85092],
    }
    for (patch, frame), values in golden.items():
        np.testing.assert_allclose(examples[patch, frame, [0, 3, 8, 26, 41, 49, 54, 58]], values, atol=1e-4)


def test_missing_weights_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("MSLDDM_VGGISH_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="needs weights.*--embedder-weights|needs weights"):
        VGGishEmbedder()
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_vggish_weights(str(tmp_path / "nothing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvggish state dict"):
        VGGishEmbedder(bad)


def test_environment_variable_and_hub_repo_id(monkeypatch, weights):
    path, _ = weights
    monkeypatch.setenv("MSLDDM_VGGISH_WEIGHTS", str(path))
    assert resolve_vggish_weights(None) == path

    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo: ["README.md", "vggish-10086976.pth"])
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo, name: calls.append((repo, name)) or str(path)
    )
    assert resolve_vggish_weights("someone/vggish") == path
    assert resolve_vggish_weights("someone/vggish/sub/v.pth") == path
    assert calls == [("someone/vggish", "vggish-10086976.pth"), ("someone/vggish", "sub/v.pth")]

    def offline(repo, name):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(FileNotFoundError, match="Offline, download the file once"):
        resolve_vggish_weights("someone/vggish/v.pth")
