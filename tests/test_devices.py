"""The one device and dtype helper: explicit names pass through, "auto" picks what was measured to pay off."""

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
    assert device == "cpu" and dtype == "float32" and pipe.unet.dtype == torch.float32
    pipe, _, dtype = devices.load_pipeline(saved_pipeline, "cpu", "bfloat16")
    assert dtype == "bfloat16" and pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
