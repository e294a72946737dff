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


CHECKSUMS_FILE = "checksums.json"  # a pipeline folder's weight files with their sizes and sha256
# Weights are binary: a changed byte loads silently as a wrong model. Configs and the model card are text that
# people edit on purpose (a window length, a default sampler) and that the loader checks itself.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def write_checksums(folder: str | Path) -> None:
    """Records every weight file of the pipeline ``folder`` (size, sha256) in ``checksums.json``."""
    import json

    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in WEIGHT_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)}
    (folder / CHECKSUMS_FILE).write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def checksum_problem(folder: str | Path) -> str | None:
    """What differs from the folder's ``checksums.json`` (a file missing, of another size or content), None if
    nothing does; ``"none"`` for a folder saved without checksums."""
    import json

    folder = Path(folder)
    record = folder / CHECKSUMS_FILE
    if not record.is_file():
        return "none"
    try:
        files = json.loads(record.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{CHECKSUMS_FILE} is unreadable ({error})"
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != info["bytes"]:
            return f"{name} has {path.stat().st_size} bytes where {info['bytes']} were saved"
        if sha256(path) != info["sha256"]:
            return f"{name} differs from the file that was saved (sha256)"
    return None
