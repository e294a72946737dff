"""The one device and dtype helper: explicit names pass through, "auto" picks what was measured to pay off."""

import os

import pytest
import torch

from mslddm import devices


def test_explicit_names_pass_through():
    assert devices.resolve_device("cuda:1") == "cuda:1"
    assert devices.resolve_dtype("float16", "cpu", 10) is torch.float16
    assert devices.resolve_dtype("float32", "cuda", 10**9) is torch.float32


def test_auto_dtype_on_the_cpu_is_bf16_only_for_paper_size_models_with_native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.resolve_dtype("auto", "cpu", 364_416_864) is torch.bfloat16
    assert devices.resolve_dtype("auto", "cpu", 11_900_000) is torch.float32  # the bundled size: no gain
    assert devices.resolve_dtype("auto", "mps", 364_416_864) is torch.float32
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.resolve_dtype(None, "cpu", 364_416_864) is torch.float32


def test_load_pipeline_applies_the_choice(saved_pipeline):
    pipe, device, dtype = devices.load_pipeline(saved_pipeline, "cpu", "auto")
    vae = torch.bfloat16 if devices.cpu_has_native_bf16() else torch.float32
    assert device == "cpu" and dtype.startswith("float32") and pipe.unet.dtype == torch.float32
    assert pipe.vae.dtype == vae and (dtype == "float32") == (vae == torch.float32)
    pipe, _, dtype = devices.load_pipeline(saved_pipeline, "cpu", "bfloat16")
    assert dtype == "bfloat16" and pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16


def test_auto_compile_is_on_for_paper_size_pipelines_only():
    assert devices.resolve_compile("auto", 364_416_864) is True  # the paper's UNet: decoding gains 13-18%
    assert devices.resolve_compile(None, 11_900_000) is False  # the bundled size: compiling costs more than it saves
    assert devices.resolve_compile("on", 10) is True and devices.resolve_compile("off", 10**9) is False
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        devices.resolve_compile("yes", 10)


def test_auto_puts_the_vae_in_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    """Decoding is most of a few-step song's time on a CPU and bf16 decodes faster there at any size; explicit
    names, GPUs and CPUs without native bf16 keep the UNet's dtype."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.resolve_vae_dtype("auto", "cpu", torch.float32) is torch.bfloat16
    assert devices.resolve_vae_dtype(None, "cpu", torch.float32) is torch.bfloat16
    assert devices.resolve_vae_dtype("float32", "cpu", torch.float32) is torch.float32
    assert devices.resolve_vae_dtype("auto", "cuda", torch.float16) is torch.float16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.resolve_vae_dtype("auto", "cpu", torch.float32) is torch.float32


def test_load_pipeline_fuses_the_vae_activations_when_compiling(saved_pipeline):
    from mslddm.models.autoencoder_source import Snake1d

    def fused(pipe):
        return {m.fused for m in pipe.vae.modules() if isinstance(m, Snake1d)}

    assert devices.load_pipeline(saved_pipeline, "cpu", "float32")[0].vae.__class__.__name__ == "SourceVAE"
    assert fused(devices.load_pipeline(saved_pipeline, "cpu", "float32")[0]) == {False}  # auto, a tiny UNet
    pipe = devices.load_pipeline(saved_pipeline, "cpu", "float32", compile="on")[0]
    assert fused(pipe) == {True} and not hasattr(pipe.unet, "_orig_mod")  # on a CPU the UNet stays eager


def test_load_pipeline_loads_in_its_dtype_without_cast_warnings(saved_pipeline):
    """The dtype goes to from_pretrained: casting a loaded pipeline with .to(dtype) makes diffusers warn ("There are
    modules in ... that should be kept in float32") once per model on every load. A fresh process, because diffusers'
    log handler holds the stderr of its import (inside pytest, the capture's)."""
    import subprocess
    import sys

    code = ("import sys; from mslddm import devices\n"
            "for dtype in ('auto', 'bfloat16', 'float32'):\n"
            "    pipe, _, name = devices.load_pipeline(sys.argv[1], 'cpu', dtype)\n"
            "    print(name, pipe.unet.dtype, pipe.vae.dtype)\n")
    run = subprocess.run([sys.executable, "-c", code, str(saved_pipeline)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    auto = ("float32 (VAE bfloat16) torch.float32 torch.bfloat16" if devices.cpu_has_native_bf16()
            else "float32 torch.float32 torch.float32")  # a tiny UNet: float32; its VAE bf16 where native
    assert run.stdout.split("\n")[:3] == [auto, "bfloat16 torch.bfloat16 torch.bfloat16",
                                          "float32 torch.float32 torch.float32"]
    assert "should be kept in float32" not in run.stderr and "torch_dtype" not in run.stderr, run.stderr
    # The count read off the safetensors headers is the loaded UNet's
    pipe, _, _ = devices.load_pipeline(saved_pipeline, "cpu", "float32")
    assert devices.saved_unet_parameters(saved_pipeline) == sum(p.numel() for p in pipe.unet.parameters())


def test_threads_follow_the_idle_cores(monkeypatch):
    """More threads than idle cores is the slow case (one busy core of two: 278 s against 22 s): by default the
    CPU threads are the cores idle now, at least one; an explicit OMP_NUM_THREADS or count wins."""
    import os

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    try:
        for idle, threads in ((2.0, 2), (1.9, 2), (1.0, 1), (0.3, 1), (0.0, 1), (3.5, 2)):
            monkeypatch.setattr(devices, "free_cpu_cores", lambda idle=idle: idle)
            assert devices.use_free_cores() == threads == torch.get_num_threads(), idle
        assert devices.use_free_cores(3) == 3 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert devices.use_free_cores() == 2  # the user's own setting is kept
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            devices.use_free_cores(0)
    finally:
        torch.set_num_threads(before)


def test_idle_share_is_read_from_the_kernel():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    cores = len(os.sched_getaffinity(0))
    assert 0.0 <= devices.free_cpu_cores(0.05) <= cores + 0.05
