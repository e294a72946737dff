"""Audio embedders for FAD, behind one interface (:class:`AudioEmbedder`).

- ``musicnn`` (default): musicnn's MTT model, weights from the installed ``musicnn`` package; runs offline.
- ``musicnn-msd``: the same network trained on the Million Song Dataset.
- ``vggish``: the paper's embedder; weights from a file or Hub repo id the user gives.
- ``clap``: LAION CLAP audio embeddings through ``transformers``, when its weights are available.
"""

from __future__ import annotations

from .base import AudioEmbedder

EMBEDDERS = ("musicnn", "musicnn-msd", "vggish", "clap")


def get_embedder(name: str = "musicnn", *, weights: str | None = None, device: str = "cpu") -> AudioEmbedder:
    """Build an embedder by name; ``weights`` is the file path or Hub repo id for ``vggish`` and ``clap``."""
    if name in ("musicnn", "musicnn-msd"):
        if weights is not None:
            raise ValueError(
                f"The {name} embedder reads its weights from the musicnn package; got weights={weights!r}."
            )
        from .musicnn import MusicnnEmbedder

        return MusicnnEmbedder("MSD_musicnn" if name == "musicnn-msd" else "MTT_musicnn", device=device)
    if name == "vggish":
        from .vggish import VGGishEmbedder

        return VGGishEmbedder(weights, device=device)
    if name == "clap":
        from .clap import ClapEmbedder

        return ClapEmbedder(weights, device=device)
    raise ValueError(f"Unknown embedder {name!r}; choose one of {EMBEDDERS}.")


__all__ = ["EMBEDDERS", "AudioEmbedder", "get_embedder"]
