"""Where models run: one helper for every command, the page and the benchmarks."""

from __future__ import annotations


def resolve_device(name: str | None = "auto") -> str:
    """``"auto"`` (or None): CUDA when there is a GPU, else Apple's MPS when available, else the CPU; any other
    name (``"cpu"``, ``"cuda:1"``, ``"mps"``) is returned as given."""
    import torch

    if name not in (None, "", "auto"):
        return str(name)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"
