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


def file_records(folder: str | Path, keep) -> dict:
    """``{relative path: {"bytes", "sha256"}}`` of the files of ``folder`` for which ``keep(path)`` holds."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and keep(p)}


def records_problem(folder: str | Path, record_file: str) -> str | None:
    """What in ``folder`` differs from ``folder/record_file`` (``{"files": file_records(...)}``): the record
    missing or unreadable, a file missing, of another size or content; None if nothing does."""
    import json

    folder = Path(folder)
    record = folder / record_file
    if not record.is_file():
        return f"{record_file} is missing"
    try:
        files = json.loads(record.read_text())["files"]
        items = list(files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{record_file} is unreadable ({error})"
    for name, info in items:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != info["bytes"]:
            return f"{name} has {path.stat().st_size} bytes where {info['bytes']} were written"
        if sha256(path) != info["sha256"]:
            return f"{name} differs from the file that was written (sha256)"
    return None


def write_checksums(folder: str | Path) -> None:
    """Records every weight file of the pipeline ``folder`` (size, sha256) in ``checksums.json``."""
    import json

    folder = Path(folder)
    files = file_records(folder, lambda p: p.suffix in WEIGHT_SUFFIXES
                         and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    (folder / CHECKSUMS_FILE).write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def checksum_problem(folder: str | Path) -> str | None:
    """What differs from the folder's ``checksums.json``, None if nothing does; ``"none"`` for a folder saved
    without checksums."""
    if not (Path(folder) / CHECKSUMS_FILE).is_file():
        return "none"
    return records_problem(folder, CHECKSUMS_FILE)
