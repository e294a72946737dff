"""Storage errors in one sentence: an output folder that cannot be written, or a disk that fills up.

Before training, :func:`check_output_dir` makes sure the output folder can be created and written and has room
for one more checkpoint (:func:`checkpoint_bytes` estimates it from the models' sizes). During training,
:func:`storage_problem` recognises the many shapes a full or read-only disk takes (``OSError`` with ``ENOSPC``,
``EROFS``, ``EACCES``..., torch's ``RuntimeError: ... unexpected pos``, safetensors' I/O errors) so that the
checkpoint writer can remove its partial folder and stop with :class:`StorageError`, keeping the last good
checkpoint.
"""

from __future__ import annotations

import errno
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Optional

_CODES = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EDQUOT: "the disk quota is full"}
_MESSAGES = (("No space left", "the disk is full"), ("unexpected pos", "the disk is full (a write was cut short)"),
             ("file write failed", "the disk is full (a write was cut short)"),
             ("Read-only file system", "the file system is read-only"), ("Permission denied", "permission denied"))


class StorageError(RuntimeError):
    """The output folder cannot take what a run writes; the message names the folder and what to do."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def checkpoint_bytes(modules: Iterable, copies: float) -> int:
    """About how many bytes one checkpoint takes: ``copies`` float32 copies of every parameter of ``modules``
    (weights, Adam's two moments, EMA and exported model folders)."""
    parameters = sum(p.numel() for m in modules if m is not None for p in m.parameters())
    return int(parameters * 4 * copies)


def free_bytes(folder) -> int:
    """Free bytes on the file system holding ``folder`` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_output_dir(output_dir, needed_bytes: int, flag: str = "--output_dir",
                     needs: str = "one checkpoint needs") -> None:
    """Raises :class:`StorageError` when ``output_dir`` cannot be created or written, or has less free space than
    ``needed_bytes`` (what ``needs`` names: one checkpoint of a run, the WAVs of a generation): before any work is
    spent. ``flag`` is the option the user chose the folder with."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"{flag} {str(folder)!r} is a file, not a folder: choose a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as error:
        why = _CODES.get(error.errno, error.strerror or str(error))
        raise StorageError(f"Cannot write to {flag} {str(folder)!r}: {why}. Choose another folder or fix its "
                           "permissions.") from None
    free = free_bytes(folder)
    if free < needed_bytes:
        raise StorageError(f"{flag} {str(folder)!r} has {human_bytes(free)} free, but {needs} about "
                           f"{human_bytes(needed_bytes)}: free some space or choose another folder.")


def storage_problem(error: BaseException) -> Optional[str]:
    """What a storage failure is ("the disk is full", ...) when ``error`` (or an error it was raised from) is one;
    None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _CODES:
            return _CODES[error.errno]
        text = str(error)
        for needle, why in _MESSAGES:
            if needle in text:
                return why
        error = error.__cause__ or error.__context__
    return None


def storage_error(error: BaseException, what: str, folder, last_good=None) -> Optional[StorageError]:
    """A :class:`StorageError` for a failed write of ``what`` into ``folder`` when ``error`` is a storage failure."""
    why = storage_problem(error)
    if why is None:
        return None
    kept = f" The last good checkpoint, {last_good}, is kept." if last_good else ""
    free = f"{human_bytes(free_bytes(folder))} free, less than the write needed" if "full" in why else (
        f"{human_bytes(free_bytes(folder))} free")
    return StorageError(f"Could not write {what} in {folder}: {why} ({free}).{kept} "
                        "Free some space (or fix the folder's permissions) and resume with "
                        "--resume_from_checkpoint latest.")
