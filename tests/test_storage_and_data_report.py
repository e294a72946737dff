"""Storage failures and unusable data end a run with one sentence naming the folder or the tracks; a run names
every track it skipped, padded or found incomplete in OUTPUT/data_report.json."""

import errno
import json
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf

from mslddm.training.checkpointing import list_checkpoints, save_checkpoint
from mslddm.training.storage import StorageError, check_output_dir, storage_problem

SR = 22050
STEMS = ["bass", "drums", "guitar", "piano"]


def test_storage_failures_are_recognised_in_their_many_shapes():
    assert storage_problem(OSError(errno.ENOSPC, "No space left on device")) == "the disk is full"
    assert storage_problem(OSError(errno.EROFS, "x")) == "the file system is read-only"
    torch_full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 756")
    assert "disk is full" in storage_problem(torch_full)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as chained:
        assert storage_problem(chained) == "the disk is full"
    assert storage_problem(ValueError("a bad recipe")) is None


def test_an_unwritable_or_too_small_output_folder_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="Cannot write to --output_dir .*a_file/run"):
        check_output_dir(blocker / "run", 1)
    with pytest.raises(StorageError, match=r"free, but one checkpoint needs about 1000\.0 TB"):
        check_output_dir(tmp_path / "run", 10**15)
    check_output_dir(tmp_path / "run", 1)  # room and rights: nothing said
    assert list((tmp_path / "run").iterdir()) == []


class FullDiskAccelerator:
    """save_state writes part of a file, then the disk is full (as torch.save reports it)."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model.safetensors"), "wb") as f:
            f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 756")


class WorkingAccelerator(FullDiskAccelerator):
    def save_state(self, folder):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model.safetensors"), "wb") as f:
            f.write(b"weights")


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path):
    save_checkpoint(WorkingAccelerator(), tmp_path, 2, {"kind": "test"}, lambda folder: None)
    with pytest.raises(StorageError) as caught:
        save_checkpoint(FullDiskAccelerator(), tmp_path, 4, {"kind": "test"}, lambda folder: None)
    message = str(caught.value)
    assert "Could not write checkpoint-4" in message and "the disk is full" in message
    assert "checkpoint-2" in message and "--resume_from_checkpoint latest" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # the partial folder is gone
    assert (tmp_path / "checkpoint-2" / "model.safetensors").read_bytes() == b"weights"


# ---------------------------------------------------------------------------------------------------------------
# Whole runs (train_vae.py through accelerate launch --quiet)
# ---------------------------------------------------------------------------------------------------------------
def _tone(path, seconds, freq):
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.2 * np.sin(2 * np.pi * freq * t) * np.exp(-3 * (t % 0.5))).astype(np.float32), SR)


def _undecodable(path, seconds):
    """A FLAC whose header reads but whose audio cannot be decoded."""
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32), SR)
    data = bytearray(path.read_bytes())
    data[200:] = np.random.default_rng(1).integers(0, 256, len(data) - 200, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def flawed_data(tmp_path_factory):
    """Train: two good tracks, one with a truncated bass, one without piano. Validation: a good track and one whose
    guitar cannot be decoded."""
    root = tmp_path_factory.mktemp("flawed")
    for split, name in (("train", "TrackGood1"), ("train", "TrackGood2"), ("train", "TrackTruncated"),
                        ("train", "TrackNoPiano"), ("validation", "TrackV0"), ("validation", "TrackV1")):
        folder = root / split / name
        folder.mkdir(parents=True)
        for k, stem in enumerate(STEMS):
            if name == "TrackNoPiano" and stem == "piano":
                continue
            if name == "TrackV1" and stem == "guitar":
                _undecodable(folder / "guitar.flac", 2.0)
                continue
            _tone(folder / f"{stem}.wav", 2.0, 55.0 * (k + 1))
        if name == "TrackTruncated":
            wav = folder / "bass.wav"
            wav.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])  # cut off mid-file
    return root


def train_vae(out, data, *sets):
    from test_train_scripts import ACCELERATE, REPO, VAE_SET

    cmd = ACCELERATE + ["--quiet", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", str(REPO / "train" / "train_vae.py"), "--config", "tiny",
                        "--output_dir", str(out), "--data_root", str(data), "--max_steps", "1"]
    for s in VAE_SET + list(sets):
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)




@pytest.mark.slow
def test_the_data_report_names_every_flawed_track_and_validation_skips_the_unreadable(flawed_data, tmp_path):
    run = train_vae(tmp_path / "run", flawed_data, "vae.validation_segments=4")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["train"]["missing_stems"] == {"TrackNoPiano": ["piano"]}
    assert list(report["train"]["length_mismatches"]) == ["TrackTruncated"]
    assert "bass" in report["train"]["length_mismatches"]["TrackTruncated"]
    assert "padded with silence" in report["train"]["length_mismatches"]["TrackTruncated"]
    segments = report["validation_segments"]
    assert len(segments["used"]) == 4 and segments["unusable"]
    assert all("TrackV1 could not be read" in why for why in segments["unusable"].values())
    state = json.loads((tmp_path / "run" / "checkpoint-1" / "training_state.json").read_text()) \
        if (tmp_path / "run" / "checkpoint-1").exists() else json.loads((tmp_path / "run" / "vae" /
                                                                          "training_state.json").read_text())
    assert all(np.isfinite(v) for v in state["validation"].values())


@pytest.mark.slow
def test_validation_on_audio_it_cannot_read_is_refused_in_one_sentence(flawed_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(flawed_data, data)
    shutil.rmtree(data / "validation" / "TrackV0")  # only the undecodable track is left
    run = train_vae(tmp_path / "run", data)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("error: Only ") and "validation segments" in line and "TrackV1" in line
    assert not list_checkpoints(tmp_path / "run")


@pytest.mark.slow
def test_an_unwritable_output_folder_is_one_sentence(flawed_data, tmp_path):
    (tmp_path / "a_file").write_text("x")
    run = train_vae(tmp_path / "a_file" / "run", flawed_data)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "error: Cannot write to --output_dir" in run.stderr and "a_file/run" in run.stderr
