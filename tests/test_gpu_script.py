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
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(tmp_path / "back" / "pipeline")
    assert json.loads((tmp_path / "back" / "pipeline" / "model_index.json").read_text())["stem_names"]
    assert pipe.unet.dtype.is_floating_point
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| tiny |" in table and "snr_db" in table
