"""A disk that fills or turns read-only between checkpoints (issue 27, item 4): wherever a run writes (the main
thread, or a writer thread such as TensorBoard's), run_main ends it in one sentence naming the last good checkpoint,
with exit code 1 and no traceback; other errors still raise."""

import errno
import json
import threading

import pytest

from mslddm.training import runner
from mslddm.training.checkpointing import STATE_FILE, write_manifest


@pytest.fixture
def run_folder(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint-40"
    checkpoint.mkdir()
    (checkpoint / STATE_FILE).write_text(json.dumps({"step": 40}))
    write_manifest(checkpoint)
    monkeypatch.setattr(runner, "_run_folder", [str(tmp_path)])  # what make_accelerator records
    return tmp_path


def disk_full():
    return OSError(errno.ENOSPC, "No space left on device")


def writer_thread_fails():
    """A background writer (as TensorBoard's EventFileWriter) hitting the full disk."""
    def write():
        raise disk_full()
    thread = threading.Thread(target=write)
    thread.start()
    thread.join()


@pytest.mark.parametrize("where", ["main", "thread", "both"])
def test_a_full_disk_anywhere_is_one_sentence_naming_the_last_good_checkpoint(run_folder, where, capsys):
    def main(argv):
        if where in ("thread", "both"):
            writer_thread_fails()
        if where in ("main", "both"):
            raise RuntimeError("flush failed") from disk_full()

    hook = threading.excepthook
    with pytest.raises(SystemExit) as exit_:
        runner.run_main(main)
    assert exit_.value.code == 1 and threading.excepthook is hook  # restored
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "Traceback" not in err
    assert f"Could not write the run's files in {run_folder}: the disk is full" in err
    assert f"The last good checkpoint, {run_folder / 'checkpoint-40'}, is kept." in err


def test_a_read_only_disk_and_other_errors(run_folder, capsys):
    def read_only(argv):
        raise OSError(errno.EROFS, "Read-only file system")

    with pytest.raises(SystemExit):
        runner.run_main(read_only)
    assert "the file system is read-only" in capsys.readouterr().err

    def bug(argv):
        raise KeyError("not a storage failure")

    with pytest.raises(KeyError):
        runner.run_main(bug)


def test_without_clipping_the_gradient_norm_is_measured_and_a_nan_stops(tmp_path):
    """grad_clip: null (the tiny recipe) logged grad_norm=nan every step and turned the NaN-gradient stop off."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    weight = torch.nn.Parameter(torch.zeros(3))
    weight.grad = torch.tensor([3.0, 4.0, 0.0])
    assert runner.clip_grad(accelerator, [weight], None) == pytest.approx(5.0)
    assert weight.grad.tolist() == [3.0, 4.0, 0.0]  # measured, not clipped
    assert runner.clip_grad(accelerator, [weight], 1.0) == pytest.approx(5.0)
    assert torch.linalg.vector_norm(weight.grad) == pytest.approx(1.0, abs=1e-5)  # clipped
    weight.grad = torch.tensor([float("nan"), 0.0, 0.0])
    norm = runner.clip_grad(accelerator, [weight], None)
    with pytest.raises(FloatingPointError, match="grad_norm"):
        runner.stop_if_not_finite(accelerator, 7, tmp_path, grad_norm=norm)
