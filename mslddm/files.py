"""Small file helpers shared by checkpoints, exports, datasets, latents and checkpoint conversion."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def durable_replace(tmp: str | Path, path: str | Path) -> None:
    """Puts the complete file ``tmp`` at ``path``: flushed to disk first, then renamed (and the rename flushed),
    so that after a crash ``path`` is the old file or the new one, never an empty or partly written one."""
    import os

    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
