"""Tiny components shared by the tests (diffusers' get_dummy_components pattern)."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `make test` runs one pytest-xdist worker per free core: each worker then computes on its share of the cores (two
# workers of two threads each on two cores run several times slower than one thread each).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, len(os.sched_getaffinity(0)) // _WORKERS, torch.get_num_threads()))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)  # and so do the commands the tests start

STEMS = ["bass", "drums", "guitar", "piano"]
LATENT = 4


def tiny_vae():
    from mslddm import SourceVAE

    torch.manual_seed(0)
    return SourceVAE(encoder_dim=4, latent_channels=LATENT, decoder_dim=16)


def tiny_unet(num_stems=len(STEMS)):
    from mslddm import MultiSourceUNet1DModel

    torch.manual_seed(1)
    return MultiSourceUNet1DModel(
        in_channels=num_stems * LATENT,
        channels=16,
        patch_factor=2,
        patch_blocks=1,
        multipliers=(1, 2, 1),
        factors=(2, 2),
        num_blocks=(1, 1),
        attentions=(False, True),
        attention_heads=2,
        attention_features=8,
        attention_multiplier=2,
        resnet_groups=4,
    )


def tiny_pipeline(stem_names=STEMS):
    from mslddm import EDMScheduler, MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline(
        vae=tiny_vae(), unet=tiny_unet(len(stem_names)), scheduler=EDMScheduler(), stem_names=stem_names
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_adapter(folder, stem_names=STEMS, rank=4, seed=0):
    """A LoRA adapter folder of the tiny pipeline with random (not zero) B matrices, so that it changes the output."""
    from mslddm.pipelines.lora import lora_config, write_adapter

    pipe = tiny_pipeline(list(stem_names))
    pipe.unet.add_adapter(lora_config(rank), adapter_name="made")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return write_adapter(folder, pipe.unet, "made", base_pipeline="tiny", stem_names=list(stem_names))


@pytest.fixture(scope="session", autouse=True)
def few_bootstrap_draws():
    """Evaluations in tests resample their clips 20 times for FAD and KAD intervals, not 200: the tests check what
    the intervals say, not how tight they are, and the 200 draws' FADs were most of an evaluation test's time
    (test_compare: 45 of its 53 s of CPU). tests/test_accompaniment_metrics.py tests the bootstrap on its own."""
    from mslddm.evaluation import distances

    default, distances.BOOTSTRAP_DRAWS = distances.BOOTSTRAP_DRAWS, 20
    yield
    distances.BOOTSTRAP_DRAWS = default


@pytest.fixture
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="session")
def saved_pipeline(tmp_path_factory):
    """A tiny random pipeline saved to disk once per session."""
    path = tmp_path_factory.mktemp("pipelines") / "tiny"
    tiny_pipeline().save_pretrained(path)
    return path


def assert_same_weights(model, other):
    """Saving and loading copy every tensor bit for bit (safetensors): any difference is a wrong weight."""
    ours, theirs = model.state_dict(), other.state_dict()
    assert list(ours) == list(theirs)
    different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
    assert not different, f"weights differ after the round trip: {different}"


# Outputs of separately built or reloaded copies of one model agree up to rounding only: another memory layout or
# another machine's kernels round differently (seen: 2.7e-6 on 46 % of a tiny MSDM's samples). OUTPUT_ATOL is far
# above that and far below what one wrong weight does (tests/test_msdm.py: one conv weight off by 0.01 moves a
# tiny MSDM's samples by 1e-4). Bit-exactness is kept where the code guarantees it (same module, same process).
OUTPUT_ATOL = 2e-5


def assert_same_outputs(actual, expected, atol=OUTPUT_ATOL):
    """``actual`` equals ``expected`` (arrays or tensors) up to ``atol`` times the larger of 1 and its peak."""
    actual, expected = (x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x) for x in (actual, expected))
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol * scale)


def accelerate_launch(script: str, args, processes: int = 1, check: bool = True):
    """``accelerate launch train/SCRIPT ARGS`` on the CPU in a subprocess (one thread, offline, this checkout on the
    path), as the training tests run the scripts; raises with the end of stderr when ``check`` and it fails. With
    ``processes`` > 1, ``--multi_gpu`` starts torchrun processes that accelerate runs as MULTI_CPU (gloo DDP)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu" if processes > 1 else "--cpu",
           "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
           "no", str(repo / "train" / script), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    return result
