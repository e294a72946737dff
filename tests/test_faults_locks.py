"""One run per folder (issue 27, item 2): the folder lock refuses a second holder while the first lives, names it,
and takes over a lock whose process died (kill -9), naming the dead holder; export and encode-latents hold it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mslddm.training.lock import LOCK_FILE, FolderInUseError, folder_lock

HOLD = ("import sys, time; from mslddm.training.lock import folder_lock\n"
        "with folder_lock(sys.argv[1], 'training'):\n"
        "    print('held', flush=True); time.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path/run's lock (a training run, as far as the lock knows)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_live_holder_is_named_and_a_dead_one_taken_over(tmp_path, holder):
    with pytest.raises(FolderInUseError) as error:
        with folder_lock(tmp_path / "run", "export"):
            pass
    assert f"is in use by process {holder.pid} on " in str(error.value) and "(training, started " in str(error.value)
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up: the lock file keeps its record
    holder.wait()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == holder.pid
    said = []
    with folder_lock(tmp_path / "run", "training", log=said.append):
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"its last holder, process {holder.pid}" in said[0] and "no longer running" in said[0]
    with folder_lock(tmp_path / "run", "training", log=said.append):  # released cleanly: nothing to report
        pass
    assert len(said) == 1


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    with folder_lock(tmp_path, "training"):
        with pytest.raises(FolderInUseError, match=f"process {os.getpid()}"):
            with folder_lock(tmp_path, "training"):
                pass
    with folder_lock(tmp_path, "training"):
        pass


def test_encode_latents_stops_while_its_folder_is_held(tmp_path):
    from mslddm.cli import main

    (tmp_path / "data" / "train" / "Track00001").mkdir(parents=True)
    with folder_lock(tmp_path / "latents", "encode-latents"):
        started = time.time()
        with pytest.raises(SystemExit, match=f"latents is in use by process {os.getpid()}"):
            main(["encode-latents", str(tmp_path / "data"), "--vae", str(tmp_path / "no-vae"),
                  str(tmp_path / "latents"), "--device", "cpu", "--quiet"])
        assert time.time() - started < 30  # refused before loading anything


def test_a_second_training_in_the_same_folder_stops_before_any_work(tmp_path):
    """Both training scripts take the lock in runner.make_accelerator; train_msldm.py shows it (run directly:
    accelerate launch adds its own traceback of the child's exit status)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    cmd = [sys.executable, str(repo / "train" / "train_msldm.py"), "--config", "tiny",
           "--output_dir", str(run), "--data_root", str(tmp_path / "no-data")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with folder_lock(run, "training"):  # the first training
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: {run} is in use by process {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written by the second
