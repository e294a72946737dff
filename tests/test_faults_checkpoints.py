"""Which checkpoint a resume trusts (issue 27, item 3): a checkpoint without its manifest (written last) is not
trusted, every skipped checkpoint is named with its reason, and a folder of only damaged checkpoints stops with a
sentence instead of starting over on top of them, unless --resume_from_checkpoint none says so."""

import json

import pytest

from mslddm.training.checkpointing import STATE_FILE, resolve_checkpoint, write_manifest


def checkpoint(folder, step, payload=b"weights"):
    folder.mkdir(parents=True)
    (folder / "unet").mkdir()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(payload)
    (folder / STATE_FILE).write_text(json.dumps({"step": step}))
    write_manifest(folder)
    return folder


def test_a_checkpoint_without_its_manifest_is_not_trusted(tmp_path):
    good = checkpoint(tmp_path / "checkpoint-2", 2)
    newest = checkpoint(tmp_path / "checkpoint-4", 4)
    (newest / "manifest.json").unlink()  # and its weights cut short: nothing could tell without the manifest
    (newest / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"wei")
    said = []
    assert resolve_checkpoint(tmp_path, "latest", log=said.append) == good
    assert said == [f"Skipping damaged checkpoint {newest}: manifest.json is missing (written last: the checkpoint "
                    "was never finished, or was altered)."]
    with pytest.raises(ValueError, match="is damaged: manifest.json is missing"):
        resolve_checkpoint(tmp_path, str(newest))


def test_a_deleted_state_file_is_named_not_skipped_silently(tmp_path):
    good = checkpoint(tmp_path / "checkpoint-2", 2)
    newest = checkpoint(tmp_path / "checkpoint-4", 4)
    (newest / STATE_FILE).unlink()
    said = []
    assert resolve_checkpoint(tmp_path, "latest", log=said.append) == good
    assert len(said) == 1 and "checkpoint-4" in said[0] and f"{STATE_FILE} is missing" in said[0]


def test_only_damaged_checkpoints_stop_the_run_unless_none_is_asked(tmp_path):
    for step in (2, 4):
        damaged = checkpoint(tmp_path / f"checkpoint-{step}", step)
        (damaged / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weightz")
    said = []
    with pytest.raises(ValueError) as error:
        resolve_checkpoint(tmp_path, "latest", log=said.append)
    message = str(error.value)
    assert message.startswith(f"Every checkpoint in {tmp_path} is damaged or incomplete (checkpoint-4: ")
    assert "checkpoint-2: unet/diffusion_pytorch_model.safetensors differs" in message
    assert "--resume_from_checkpoint none" in message and len(said) == 2
    assert resolve_checkpoint(tmp_path, "none") is None and resolve_checkpoint(tmp_path, "None") is None
    assert resolve_checkpoint(tmp_path / "empty", "latest") is None  # no checkpoint at all: a fresh run
