"""scripts/gpu_run.sh --dry-run: the prepared GPU run's every step on the CPU with the tiny recipe."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_gpu_run_dry_run_trains_exports_and_benchmarks(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_run.sh"), "--dry-run"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    log = (tmp_path / "out" / "gpu_run.log").read_text()
    assert run.returncode == 0, run.stdout + log[-3000:]
    for name in ("setup", "cuda-tests", "data", "vae", "latents", "unet", "export", "benchmark"):
        assert f"== {name}\n   ok in" in run.stdout
    parts = sorted((tmp_path / "out").glob("pipeline.tar.part*"))
    assert parts and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    joined = tmp_path / "pipeline.tar"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        tar.extractall(tmp_path / "back", filter="data")
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from mslddm import MultiSourceLatentPipeline

    # The pipeline is what the run made: the data step's stems, the VAE step's VAE and the UNet step's last EMA
    # weights, in float16.
    back, work = tmp_path / "back" / "pipeline", tmp_path / "work"
    stems = json.loads((work / "data" / "dataset.json").read_text())["stems"]
    last = max((work / "msldm").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for part, trained in (("vae", work / "vae" / "vae"), ("unet", last / "unet_ema")):
        exported = load_file(back / part / "diffusion_pytorch_model.safetensors")
        source = load_file(trained / "diffusion_pytorch_model.safetensors")
        assert exported.keys() == source.keys() and {t.dtype for t in exported.values()} == {torch.float16}
        assert all(torch.equal(exported[k], source[k].half()) for k in source), f"{part} is not {trained}'s"
    pipe = MultiSourceLatentPipeline.from_pretrained(back, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.stem_names == stems
    out = pipe(audio_length_in_s=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.stems.shape == (1, len(stems), pipe.sample_rate // 2) and np.isfinite(out.stems).all()
    # The benchmark measured the tiny preset with both samplers in both dtypes, bfloat16 against float32.
    table = (tmp_path / "out" / "benchmark.md").read_text()
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| preset"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
            for line in lines if line.startswith("| tiny |")]
    assert sorted((r["sampler"], r["dtype"], r["evals"]) for r in rows) == sorted(
        (f"{s} x2", d, "2") for s in ("euler", "dpmpp_2m") for d in ("float32", "bfloat16")), table
    for row in rows:
        assert (row["snr_db"] == "") == (row["dtype"] == "float32"), table
        assert row["dtype"] == "float32" or 0 < float(row["snr_db"]) < 200, table
