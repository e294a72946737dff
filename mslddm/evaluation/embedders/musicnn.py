"""musicnn (Pons & Serra, 2019) in PyTorch: the offline music embedder for FAD.

The trained weights ship inside the ``musicnn`` PyPI wheel as TensorFlow-1 checkpoints; they are read here with
:func:`~mslddm.evaluation.embedders.tf_checkpoint.read_tf_checkpoint`, so neither TensorFlow nor librosa is
needed. The network and its front end follow ``musicnn.models.build_musicnn`` and ``musicnn.extractor``:
16 kHz audio -> 96-band Slaney mel power spectrogram (n_fft 512, hop 256, centred with zero padding, as librosa
computes it) -> rounded to float16 (as the extractor does, and as MTT training data was stored) ->
log10(10000 x + 1) -> non-overlapping 187-frame (3 s) patches -> one 200-d embedding per patch (the batch-normalised
penultimate dense layer, which musicnn calls ``penultimate``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import AudioEmbedder, file_sha256, frame_patches
from .tf_checkpoint import read_tf_checkpoint

SAMPLE_RATE = 16000
N_FFT = 512
HOP_LENGTH = 256
N_MELS = 96
PATCH_FRAMES = 187  # musicnn's 3-s input: librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1
MODELS = ("MTT_musicnn", "MSD_musicnn")
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above (27 mel per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax=None
) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` area-normalised triangular filters on Slaney's mel scale (librosa's default).

    The triangles are linear in hertz between mel-spaced corner frequencies, each scaled by 2 / its bandwidth.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    corners = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(corners)
    ramps = corners[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (corners[2:] - corners[:-2]))[:, None]
    return weights.astype(np.float32)


def musicnn_log_mel(audio: np.ndarray) -> np.ndarray:
    """musicnn's input features of 16-kHz mono audio: ``(frames, 96)`` float32."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32)
    spec = torch.stft(
        x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="constant", return_complex=True
    )
    power = spec.abs().pow(2).numpy()  # (bins, frames)
    mel = slaney_mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS) @ power
    # The float16 round trip is musicnn's own (its training features were stored in float16); the log is taken
    # in float32 because 10000 * x overflows float16 for loud bins.
    mel = mel.T.astype(np.float16).astype(np.float32)
    return np.log10(10000.0 * mel + 1.0).astype(np.float32)


class _TimbralBlock(nn.Module):
    """Conv spanning 7 frames x a fraction of the mel bands (valid in frequency), ReLU, BN, max over frequency."""

    def __init__(self, filters: int, mel_span: int):
        super().__init__()
        self.conv = nn.Conv2d(1, filters, (7, mel_span))
        self.norm = nn.BatchNorm2d(filters, eps=BN_EPS)

    def forward(self, x):  # (B, 1, T, F) -> (B, filters, T)
        x = nn.functional.pad(x, (0, 0, 3, 3))
        return self.norm(torch.relu(self.conv(x))).amax(dim=3)


class _TemporalBlock(nn.Module):
    """Conv along time only ('same' padding as TensorFlow places it: the extra pad after), ReLU, BN, max over F."""

    def __init__(self, filters: int, length: int):
        super().__init__()
        self.pad = ((length - 1) // 2, length - 1 - (length - 1) // 2)
        self.conv = nn.Conv2d(1, filters, (length, 1))
        self.norm = nn.BatchNorm2d(filters, eps=BN_EPS)

    def forward(self, x):
        x = nn.functional.pad(x, (0, 0, *self.pad))
        return self.norm(torch.relu(self.conv(x))).amax(dim=3)


class _MidendBlock(nn.Module):
    """Conv over 7 frames and all input features (a 1-D conv in time), ReLU, BN."""

    def __init__(self, in_channels: int, filters: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, filters, 7, padding=3)
        self.norm = nn.BatchNorm1d(filters, eps=BN_EPS)

    def forward(self, x):
        return self.norm(torch.relu(self.conv(x)))


class MusicnnModel(nn.Module):
    """musicnn's network (``build_musicnn``): musically motivated front end, dense mid end, pooled back end."""

    def __init__(
        self, n_mels: int = N_MELS, midend_filters: int = 64, backend_units: int = 200, num_classes: int = 50
    ):
        super().__init__()
        timbral_filters, temporal_filters = int(1.6 * 128), int(1.6 * 32)
        self.input_norm = nn.BatchNorm2d(1, eps=BN_EPS)
        self.timbral = nn.ModuleList(_TimbralBlock(timbral_filters, int(f * n_mels)) for f in (0.4, 0.7))
        self.temporal = nn.ModuleList(_TemporalBlock(temporal_filters, n) for n in (128, 64, 32))
        frontend_channels = 2 * timbral_filters + 3 * temporal_filters
        self.midend = nn.ModuleList(
            [_MidendBlock(frontend_channels, midend_filters)]
            + [_MidendBlock(midend_filters, midend_filters) for _ in range(2)]
        )
        pooled = 2 * (frontend_channels + 3 * midend_filters)
        self.pool_norm = nn.BatchNorm1d(pooled, eps=BN_EPS)
        self.dense = nn.Linear(pooled, backend_units)
        self.dense_norm = nn.BatchNorm1d(backend_units, eps=BN_EPS)
        self.classifier = nn.Linear(backend_units, num_classes)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, frames, n_mels)`` log-mel patches -> (tag logits ``(B, classes)``, penultimate ``(B, units)``)."""
        x = self.input_norm(mel.unsqueeze(1))
        front = torch.cat([block(x) for block in [*self.timbral, *self.temporal]], dim=1)  # (B, 561, T)
        features = [front]
        h = self.midend[0](front)
        features.append(h)
        for block in self.midend[1:]:
            h = block(h) + h
            features.append(h)
        mid = torch.cat(features, dim=1)
        # TensorFlow flattens (B, C, [max, mean]) channel by channel: interleave the two poolings.
        pooled = torch.stack([mid.amax(dim=2), mid.mean(dim=2)], dim=2).flatten(1)
        penultimate = self.dense_norm(torch.relu(self.dense(self.pool_norm(pooled))))
        return self.classifier(penultimate), penultimate


def _tf_layer_names(model: MusicnnModel) -> list[tuple[nn.Module, str]]:
    """Each module with the TensorFlow layer that holds its weights (TF names layers by creation order)."""
    convs = [*model.timbral, *model.temporal, *model.midend]
    pairs = [(model.input_norm, "batch_normalization")]
    for i, block in enumerate(convs):
        pairs += [
            (block.conv, "conv2d" if i == 0 else f"conv2d_{i}"),
            (block.norm, f"batch_normalization_{i + 1}"),
        ]
    n = len(convs)
    pairs += [
        (model.pool_norm, f"batch_normalization_{n + 1}"),
        (model.dense, "dense"),
        (model.dense_norm, f"batch_normalization_{n + 2}"),
        (model.classifier, "dense_1"),
    ]
    return pairs


def musicnn_checkpoint_dir(model_name: str = "MTT_musicnn") -> Path:
    """Directory of a checkpoint inside the installed ``musicnn`` package (the package itself is not imported:
    its modules import TensorFlow)."""
    if model_name not in MODELS:
        raise ValueError(f"Unknown musicnn model {model_name!r}; choose one of {MODELS}.")
    spec = importlib.util.find_spec("musicnn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "The musicnn embedder reads its weights from the musicnn package, which is not installed. "
            "Install it without its outdated pins: pip install --no-deps musicnn==0.1.0"
        )
    folder = Path(spec.origin).parent / model_name
    if not (folder / ".index").is_file():
        raise FileNotFoundError(f"The installed musicnn package has no {model_name} checkpoint at {folder}.")
    return folder


def load_musicnn(model_name: str = "MTT_musicnn") -> MusicnnModel:
    """A :class:`MusicnnModel` in eval mode with the trained weights of the installed ``musicnn`` package."""
    variables = read_tf_checkpoint(str(musicnn_checkpoint_dir(model_name)) + "/")
    model = MusicnnModel()
    for module, layer in _tf_layer_names(model):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            tf_names = {
                "weight": "gamma",
                "bias": "beta",
                "running_mean": "moving_mean",
                "running_var": "moving_variance",
            }
        else:
            tf_names = {"weight": "kernel", "bias": "bias"}
        for attr, tf_name in tf_names.items():
            value = torch.from_numpy(np.array(variables[f"{layer}/{tf_name}"]))
            if tf_name == "kernel":
                if isinstance(module, nn.Linear):  # (in, out) -> (out, in)
                    value = value.T
                elif isinstance(module, nn.Conv1d):  # (time, features, 1, out) -> (out, features, time)
                    value = value[:, :, 0, :].permute(2, 1, 0)
                else:  # (time, freq, in, out) -> (out, in, time, freq)
                    value = value.permute(3, 2, 0, 1)
            target = getattr(module, attr)
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(
                    f"{model_name}: {layer}/{tf_name} has shape {tuple(value.shape)}, "
                    f"the port expects {tuple(target.shape)}."
                )
            target.data.copy_(value)
    return model.eval()


class MusicnnEmbedder(AudioEmbedder):
    """200-d musicnn embeddings, one per 3-s window (16 kHz). The default, offline FAD embedder."""

    sample_rate = SAMPLE_RATE
    dim = 200
    min_samples = (PATCH_FRAMES - 1) * HOP_LENGTH  # the shortest audio that yields one full patch

    def __init__(
        self, model_name: str = "MTT_musicnn", device: str | torch.device = "cpu", batch_size: int = 64
    ):
        self.model_name = model_name
        self.name = f"musicnn-{model_name}"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_musicnn(model_name).to(self.device)

    @torch.no_grad()
    def embed_patches(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tag probabilities, penultimate embeddings) of ``(N, 187, 96)`` log-mel patches."""
        probs, embeddings = [], []
        for start in range(0, len(patches), self.batch_size):
            batch = torch.from_numpy(patches[start : start + self.batch_size]).to(self.device)
            logits, penultimate = self.model(batch)
            probs.append(torch.sigmoid(logits).cpu().numpy())
            embeddings.append(penultimate.cpu().numpy())
        return np.concatenate(probs), np.concatenate(embeddings)

    def embed_resampled(self, audio: np.ndarray) -> np.ndarray:
        return self.embed_patches(frame_patches(musicnn_log_mel(audio), PATCH_FRAMES))[1]

    def identity(self) -> dict:
        folder = musicnn_checkpoint_dir(self.model_name)
        return {
            "embedder": "musicnn",
            "model": self.model_name,
            "layer": "penultimate",
            "weights_sha256": file_sha256(folder / ".data-00000-of-00001"),
            "frontend": "16kHz soxr-HQ, slaney mel 96 n_fft 512 hop 256 centred, fp16, log10(1e4x+1), 187-frame patches",
        }
