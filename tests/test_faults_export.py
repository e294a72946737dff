"""Faults around `mslddm export` (issue 27, item 1): an --out whose replacement would lose something is refused in
one sentence, with nothing changed (file hashes before and after); an existing pipeline is replaced only with
--overwrite."""

import hashlib
import json
from pathlib import Path

import pytest

from conftest import STEMS, tiny_pipeline
from mslddm.cli import main
from mslddm.training.checkpointing import STATE_FILE, write_manifest


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder with one complete diffusion checkpoint, made from a tiny pipeline's components."""
    run = tmp_path_factory.mktemp("faults-export") / "run"
    checkpoint = run / "checkpoint-3"
    pipe = tiny_pipeline()
    for name in ("unet", "vae", "scheduler"):
        getattr(pipe, name).save_pretrained(checkpoint / name)
    (checkpoint / STATE_FILE).write_text(json.dumps({"step": 3, "kind": "msldm", "stem_names": STEMS,
                                                     "recipe": {"name": "tiny"}}))
    write_manifest(checkpoint)
    (run / "logs").mkdir()
    (run / "logs" / "events.out").write_text("log")
    (run / "data_report.json").write_text("{}")
    return run


def hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def export(run, out, *extra):
    return main(["export", str(run), "--out", str(out), *extra])


def test_export_into_its_own_run_or_checkpoint_is_refused(run_folder):
    before = hashes(run_folder)
    for out in (run_folder, run_folder / "checkpoint-3"):
        with pytest.raises(SystemExit, match="is a training run or checkpoint folder: exporting there would delete"):
            export(run_folder, out, "--overwrite")
    assert hashes(run_folder) == before


def test_a_file_or_a_folder_of_other_files_is_refused(run_folder, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        export(run_folder, target)
    assert target.read_text() == "mine"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "song.wav").write_bytes(b"RIFF")
    with pytest.raises(SystemExit, match=r"is a folder of other files \(song.wav\), not a pipeline"):
        export(run_folder, mine, "--overwrite")
    assert hashes(mine) == {"song.wav": hashlib.sha256(b"RIFF").hexdigest()}


def test_an_existing_pipeline_is_replaced_only_with_overwrite(run_folder, tmp_path):
    out = tmp_path / "pipe"
    assert export(run_folder, out) == 0  # a new folder
    (out / "marker").write_text("old")
    before = hashes(out)
    with pytest.raises(SystemExit, match="already holds a pipeline: pass --overwrite"):
        export(run_folder, out)
    assert hashes(out) == before
    assert export(run_folder, out, "--overwrite") == 0
    assert not (out / "marker").exists() and (out / "model_index.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(run_folder, empty) == 0  # an empty folder is a new folder


def test_a_damaged_checkpoint_is_not_exported(run_folder, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    weights = run / "checkpoint-3" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="is damaged: unet/diffusion_pytorch_model.safetensors differs"):
        export(run / "checkpoint-3", tmp_path / "out")
    with pytest.raises(SystemExit, match="Every checkpoint in .* is damaged or incomplete"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_second_export_to_the_same_folder_stops(run_folder, tmp_path):
    import os

    from mslddm.training.lock import folder_lock

    out = tmp_path / "pipe"
    with folder_lock(out, "export", beside=True):  # another export in progress
        with pytest.raises(SystemExit, match=f"{out} is in use by process {os.getpid()} .*export"):
            export(run_folder, out)
    assert not out.exists()
    assert export(run_folder, out) == 0


def test_an_export_onto_a_full_disk_is_one_sentence_and_replaces_nothing(run_folder, tmp_path):
    """A real 96 KB tmpfs (root only): the pipeline does not fit; the earlier export there stays as it was."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "pipe"
        out.mkdir()
        (out / "model_index.json").write_text("{}")  # an earlier (small) pipeline folder
        before = hashes(out)
        with pytest.raises(SystemExit) as exit_:
            export(run_folder, out, "--overwrite")
        message = str(exit_.value.code)
        assert message.startswith(f"Could not write the pipeline {out}: the disk is full (")
        assert "Nothing was replaced" in message
        assert hashes(out) == before and sorted(p.name for p in disk.iterdir()) == [".pipe.lock", "pipe"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
