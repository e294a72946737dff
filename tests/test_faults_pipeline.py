"""Pipeline folders verified on load (issue 27, items 5 and 10): save_pretrained records the weight files' sha256 in
checksums.json; bytes changed in place are named before anything is loaded, from Python and from `mslddm generate`;
folders saved without checksums load as before; a model_index.json that is not JSON is named."""

import shutil

import numpy as np
import pytest

from conftest import tiny_pipeline
from mslddm import MultiSourceLatentPipeline
from mslddm.files import CHECKSUMS_FILE
from mslddm.hub import PipelineLoadError

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults-pipeline") / "pipe"
    tiny_pipeline().save_pretrained(path)
    return path


def damaged_copy(saved, tmp_path, seed, name=WEIGHTS):
    copy = tmp_path / f"copy{seed}"
    shutil.copytree(saved, copy)
    rng = np.random.default_rng(seed)
    data = bytearray((copy / name).read_bytes())
    count = int(rng.integers(16, 257))
    start = len(data) // 2 + int(rng.integers(0, len(data) // 4))
    data[start:start + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    (copy / name).write_bytes(bytes(data))
    return copy


def test_saving_writes_the_weights_checksums(saved):
    import json

    files = json.loads((saved / CHECKSUMS_FILE).read_text())["files"]
    assert sorted(files) == [WEIGHTS, "vae/diffusion_pytorch_model.safetensors"]


@pytest.mark.parametrize("seed", range(6))
def test_bytes_changed_in_place_are_named_before_loading(saved, tmp_path, seed):
    copy = damaged_copy(saved, tmp_path, seed)
    with pytest.raises(PipelineLoadError, match=f"is damaged: {WEIGHTS} differs from the file that was written"):
        MultiSourceLatentPipeline.from_pretrained(copy)


def test_generate_stops_on_damaged_weights(saved, tmp_path, capsys):
    from mslddm.cli import main

    copy = damaged_copy(saved, tmp_path, 7, "vae/diffusion_pytorch_model.safetensors")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--pipeline", str(copy), "--duration", "0.5", "--steps", "1", "--out", str(tmp_path / "o")])
    said = str(exit_.value.code) + capsys.readouterr().err
    assert "vae/diffusion_pytorch_model.safetensors differs from the file that was written" in said
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.wav"))


def test_a_folder_without_checksums_and_an_edited_config_load(saved, tmp_path):
    import json

    copy = tmp_path / "old"
    shutil.copytree(saved, copy)
    (copy / CHECKSUMS_FILE).unlink()  # saved by an earlier release
    assert isinstance(MultiSourceLatentPipeline.from_pretrained(copy), MultiSourceLatentPipeline)
    shutil.copy(saved / CHECKSUMS_FILE, copy / CHECKSUMS_FILE)
    config = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
    config["num_inference_steps"] = 7  # configs are people's to edit; the loader checks them itself
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert MultiSourceLatentPipeline.from_pretrained(copy).scheduler.config.num_inference_steps == 7


def test_a_model_index_that_is_not_json_is_named(saved, tmp_path):
    copy = tmp_path / "bad-index"
    shutil.copytree(saved, copy)
    (copy / "model_index.json").write_text('{"_class_name": "MultiSourceLatentPipeline",')
    with pytest.raises(PipelineLoadError, match=r"model_index.json is not valid JSON \("):
        MultiSourceLatentPipeline.from_pretrained(copy)
