"""VGGish (Hershey et al., 2017) in PyTorch: the embedder of the paper's FAD protocol.

No package ships VGGish weights, so the user gives them: a local file or a Hugging Face Hub repo id holding the
widely used torchvggish state dict (``vggish-10086976.pth``: keys ``features.{0,3,6,8,11,13}.*`` and
``embeddings.{0,2,4}.*``; PCA ``pproc.*`` keys, if present, are ignored). The front end follows the reference
``vggish_input.waveform_to_examples``: 16 kHz, 25-ms periodic-Hann frames every 10 ms (no padding), 512-point FFT
magnitude, 64 HTK-mel bands 125-7500 Hz, log(mel + 0.01), non-overlapping 0.96-s examples of 96 frames.
Embeddings are the raw 128-d outputs (no PCA, no quantisation) without the last ReLU, as in Google's current
VGGish and in the ``frechet_audio_distance`` package's FAD setting (``use_pca=False, use_activation=False``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import AudioEmbedder, file_sha256, frame_patches

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 64
FMIN, FMAX = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
WEIGHTS_ENV = "MSLDDM_VGGISH_WEIGHTS"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def htk_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` VGGish mel weights: HTK mel scale, triangles linear in mel, DC bin excluded."""
    to_mel = lambda hz: 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)
    bins_mel = to_mel(np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1))
    edges = np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2)
    rising = (bins_mel[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[None, 2:] - bins_mel[:, None]) / (edges[2:] - edges[1:-1])
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return weights


def vggish_log_mel(audio: np.ndarray) -> np.ndarray:
    """VGGish's input features of 16-kHz mono audio: ``(frames, 64)`` float32 (frames = 1 + (n - 400) // 160)."""
    audio = np.asarray(audio, dtype=np.float64)
    count = 1 + (len(audio) - WINDOW) // HOP
    if count < 1:
        raise ValueError(f"VGGish needs at least {WINDOW} samples, got {len(audio)}.")
    frames = np.lib.stride_tricks.sliding_window_view(audio, WINDOW)[::HOP][:count]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, N_FFT))
    mel = magnitude @ htk_mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, FMIN, FMAX)
    return np.log(mel + LOG_OFFSET).astype(np.float32)


class VGGishModel(nn.Module):
    """VGGish's network, laid out like torchvggish's ``VGG`` so that its state dicts load as they are."""

    def __init__(self, final_relu: bool = False):
        super().__init__()
        layers, channels = [], 1
        for width in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, 128),
            nn.ReLU(),
        )
        self.final_relu = final_relu

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """``(B, 96, 64)`` log-mel examples -> ``(B, 128)`` embeddings."""
        x = self.features(examples.unsqueeze(1))
        x = x.permute(0, 2, 3, 1).flatten(1)  # the TF original flattens channels-last
        layers = self.embeddings if self.final_relu else self.embeddings[:-1]
        return layers(x)


def resolve_vggish_weights(weights: str | os.PathLike | None) -> Path:
    """A local weights file from a path, a Hub repo id (``owner/name``) or ``owner/name/file.pth``.

    ``None`` falls back on the ``MSLDDM_VGGISH_WEIGHTS`` environment variable.
    """
    weights = weights if weights is not None else os.environ.get(WEIGHTS_ENV)
    if not weights:
        raise ValueError(
            "The VGGish embedder needs weights, and no package ships them. Pass a torchvggish state dict as a file "
            f"path or a Hugging Face Hub repo id (--vggish-weights, or the {WEIGHTS_ENV} environment variable), "
            "e.g. the file vggish-10086976.pth that torchvggish downloads. Without them use --embedder musicnn."
        )
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    parts = str(weights).strip("/").split("/")
    if path.exists() or len(parts) < 2 or str(weights).startswith((".", "/", "~")):
        raise FileNotFoundError(f"VGGish weights {str(weights)!r}: no such file, and not a Hub repo id.")
    try:
        import huggingface_hub
    except ImportError as error:  # pragma: no cover - a core dependency of mslddm
        raise ImportError("Loading VGGish weights from the Hub needs huggingface_hub.") from error
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        if filename is None:
            files = [f for f in huggingface_hub.list_repo_files(repo_id) if f.endswith(_WEIGHT_SUFFIXES)]
            if len(files) != 1:
                raise ValueError(
                    f"Hub repo {repo_id!r} holds {len(files)} weight files ({files}); "
                    f"name one as {repo_id}/<file>."
                )
            filename = files[0]
        return Path(huggingface_hub.hf_hub_download(repo_id, filename))
    except ValueError:
        raise
    except Exception as error:
        raise FileNotFoundError(
            f"Could not get VGGish weights {filename or '(any)'} from Hub repo {repo_id!r}: {error}. Offline, "
            "download the file once elsewhere and pass its path."
        ) from error


def load_vggish(
    weights: str | os.PathLike | None = None, final_relu: bool = False
) -> tuple[VGGishModel, Path]:
    """A :class:`VGGishModel` in eval mode with the given weights, and the weights file it read."""
    path = resolve_vggish_weights(weights)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {
        k.removeprefix("module."): v
        for k, v in state.items()
        if not k.removeprefix("module.").startswith("pproc.")
    }
    model = VGGishModel(final_relu=final_relu)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a torchvggish state dict: missing keys {missing[:6]}, unexpected keys {unexpected[:6]}."
        )
    return model.eval(), path


class VGGishEmbedder(AudioEmbedder):
    """128-d VGGish embeddings, one per 0.96 s (16 kHz): the paper's FAD embedder; weights from the user."""

    sample_rate = SAMPLE_RATE
    dim = 128
    min_samples = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # one full example

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        final_relu: bool = False,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ):
        self.model, self.weights_path = load_vggish(weights, final_relu)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.batch_size = batch_size
        self.name = "vggish" + ("-relu" if final_relu else "")

    @torch.no_grad()
    def embed_resampled(self, audio: np.ndarray) -> np.ndarray:
        examples = frame_patches(vggish_log_mel(audio), EXAMPLE_FRAMES)
        out = [
            self.model(torch.from_numpy(examples[i : i + self.batch_size]).to(self.device)).cpu().numpy()
            for i in range(0, len(examples), self.batch_size)
        ]
        return np.concatenate(out)

    def identity(self) -> dict:
        return {
            "embedder": "vggish",
            "final_relu": self.model.final_relu,
            "weights_sha256": file_sha256(self.weights_path),
            "frontend": "16kHz soxr-HQ, 25ms/10ms periodic hann, |rfft512|, htk mel 64 125-7500Hz, log(x+0.01), 96-frame examples",
        }
