"""One run per folder: an exclusive lock held in the output folder for as long as a training run, an export or a
latent encoding writes there, so that a second one started on the same folder stops with a sentence naming the first
instead of silently replacing its checkpoints.

The lock is an ``flock`` on ``FOLDER/.mslddm.lock``: the kernel releases it when its process dies however it dies,
so a lock file left by a killed run is stale by construction; the file keeps who held it last, which a later run
names when it takes the folder over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".mslddm.lock"


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock; the message names it."""


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"process {info['pid']} on {info['host']} ({info['what']}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))})")
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def folder_lock(folder, what: str, log=None, beside: bool = False) -> Iterator[Path]:
    """Holds ``folder``'s lock (creating the folder) while the block runs; raises :class:`FolderInUseError` if a
    live process holds it. ``what`` says what holds it ("training", "export", ...) in the other process's message;
    ``log`` hears about a stale lock taken over. With ``beside``, the lock file sits next to the folder
    (``.NAME.lock``): for a folder that is replaced as a whole (an export), which would take a lock inside with it."""
    folder = Path(folder)
    if beside:
        folder.parent.mkdir(parents=True, exist_ok=True)
        path = folder.parent / f".{folder.name}.lock"
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(
                f"{folder} is in use by {_holder(path.read_text())}: wait for it to finish, stop it, or choose "
                "another folder.") from None
        previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if previous and log is not None:
            log(f"Taking over {folder}: its last holder, {_holder(previous)}, is no longer running.")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "started": time.time(),
                  "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released cleanly: nothing stale to report next time
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
