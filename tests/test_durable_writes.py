"""Exports and checkpoints replace a folder whole: an interruption leaves the previous folder (or none)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mslddm.training.checkpointing import atomic_folder, replace_folder


def test_failed_export_leaves_the_previous_one(tmp_path):
    final = tmp_path / "pipeline"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed while writing")
    assert (final / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]  # no partial folder left behind


def test_killed_export_leaves_the_previous_one(tmp_path):
    """A process killed (SIGKILL) in the middle of writing the new folder."""
    final = tmp_path / "pipeline"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("old")
    code = textwrap.dedent(f"""
        import os, time
        from mslddm.training.checkpointing import atomic_folder
        with atomic_folder({str(final)!r}) as tmp:
            (tmp / "weights").write_text("half")
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (final / "weights").read_text() == "old"
    # The next export replaces the leftover partial folder and the old export.
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("new")
    assert (final / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


def test_replace_folder_swaps_whole_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y").write_text("2")
    replace_folder(tmp_path / "b", tmp_path / "a")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["y"] and not (tmp_path / "b").exists()
