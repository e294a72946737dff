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


def _checkpoint(folder, step, payload=b"weights"):
    import json

    from mslddm.training.checkpointing import STATE_FILE, write_manifest

    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(payload)
    (folder / STATE_FILE).write_text(json.dumps({"step": step}))
    write_manifest(folder)


def test_latest_skips_a_damaged_newest_checkpoint(tmp_path):
    from mslddm.training.checkpointing import resolve_checkpoint

    _checkpoint(tmp_path / "checkpoint-2", 2)
    _checkpoint(tmp_path / "checkpoint-4", 4)
    assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-4"
    for damage in (lambda p: p.write_bytes(b""), lambda p: p.write_bytes(b"weightz"), lambda p: p.unlink()):
        damage(tmp_path / "checkpoint-4" / "model.safetensors")
        said = []
        assert resolve_checkpoint(tmp_path, "latest", log=said.append) == tmp_path / "checkpoint-2"
        assert len(said) == 1 and "checkpoint-4" in said[0] and "model.safetensors" in said[0]
        with pytest.raises(ValueError, match="is damaged: model.safetensors"):
            resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-4"))
        (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"weights")  # repaired: trusted again
        assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-4"
