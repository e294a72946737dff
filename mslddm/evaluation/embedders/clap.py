"""LAION CLAP audio embeddings through ``transformers`` (optional; needs ``pip install transformers`` and weights).

Weights: a folder saved with ``ClapModel.save_pretrained`` (with its feature extractor) or a Hub repo id such as
``laion/larger_clap_music``. Audio is cut into non-overlapping 10-s windows at 48 kHz (the model's input length,
so the feature extractor never crops at random); each gives one L2-normalised projected embedding.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from .base import AudioEmbedder

SAMPLE_RATE = 48000
WINDOW_SECONDS = 10


class ClapEmbedder(AudioEmbedder):
    """CLAP audio-branch embeddings, one per 10 s (48 kHz)."""

    sample_rate = SAMPLE_RATE
    min_samples = SAMPLE_RATE * WINDOW_SECONDS

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ):
        if not weights:
            raise ValueError(
                "The CLAP embedder needs weights: a local folder or Hub repo id (e.g. laion/larger_clap_music) "
                "passed as --embedder-weights. Without them use --embedder musicnn."
            )
        try:
            from transformers import ClapFeatureExtractor, ClapModel
        except ImportError as error:
            raise ImportError("The CLAP embedder needs transformers: pip install transformers") from error
        try:
            self.model = ClapModel.from_pretrained(str(weights)).eval()
            self.extractor = ClapFeatureExtractor.from_pretrained(str(weights))
        except OSError as error:
            raise FileNotFoundError(f"Could not load CLAP weights {str(weights)!r}: {error}") from error
        self.device = torch.device(device)
        self.model.to(self.device)
        self.weights = str(weights)
        self.batch_size = batch_size
        self.dim = int(self.model.config.projection_dim)
        self.truncation = "fusion" if self.model.config.audio_config.enable_fusion else "rand_trunc"
        self.name = "clap"
        self._digest = None

    @torch.no_grad()
    def embed_resampled(self, audio: np.ndarray) -> np.ndarray:
        window = self.min_samples
        windows = [audio[i : i + window] for i in range(0, len(audio) - window + 1, window)]
        out = []
        for start in range(0, len(windows), self.batch_size):
            features = self.extractor(
                windows[start : start + self.batch_size],
                sampling_rate=SAMPLE_RATE,
                return_tensors="pt",
                truncation=self.truncation,
            )
            result = self.model.get_audio_features(**{k: v.to(self.device) for k, v in features.items()})
            out.append((result if torch.is_tensor(result) else result.pooler_output).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def identity(self) -> dict:
        if self._digest is None:  # hash of the weights themselves: a Hub id alone does not pin a revision
            digest = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._digest = digest.hexdigest()
        return {
            "embedder": "clap",
            "weights": self.weights,
            "weights_sha256": self._digest,
            "frontend": f"48kHz soxr-HQ, {WINDOW_SECONDS}-s windows, truncation {self.truncation}",
        }
