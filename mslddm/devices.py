"""Where models run: one helper for every command, the page and the benchmarks."""

from __future__ import annotations

from pathlib import Path


def resolve_device(name: str | None = "auto") -> str:
    """``"auto"`` (or None): CUDA when there is a GPU, else Apple's MPS when available, else the CPU; any other
    name (``"cpu"``, ``"cuda:1"``, ``"mps"``) is returned as given."""
    import torch

    if name not in (None, "", "auto"):
        return str(name)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


# The smallest UNet for which bfloat16 generation on a CPU with native bf16 (AVX512-BF16 / AMX) was measured faster
# than float32 (docs/benchmarks.md: the paper's 364M-parameter UNet and its DAC decoder run in 0.5x the time, at an
# SNR near 38 dB; the bundled 12M-parameter pipeline gains nothing).
BF16_CPU_MIN_UNET_PARAMETERS = 100_000_000
DTYPES = ("auto", "float32", "float16", "bfloat16")
COMPILE = ("auto", "on", "off")


def resolve_compile(name: str | None, unet_parameters: int) -> bool:
    """Whether to compile for generation (``pipe.enable_compile``: the VAE's fused Snake activations; with ``"on"``
    the UNet too, on a GPU): ``"on"`` / ``"off"`` as given; ``"auto"`` (None) on
    for paper-size pipelines (a UNet of at least ``BF16_CPU_MIN_UNET_PARAMETERS``), whose DAC-style decoder spends
    most of its time in full-rate activations (fused: 13-18% less decoding time, docs/benchmarks.md), and off for
    small ones, where the first call's compilation (seconds) would cost more than it saves. A VAE without Snake
    activations (the bundled pipeline's) is unaffected either way."""
    if name not in (None, "", "auto"):
        if name not in COMPILE:
            raise ValueError(f"compile must be one of {', '.join(COMPILE)}, got {name!r}.")
        return name == "on"
    return unet_parameters >= BF16_CPU_MIN_UNET_PARAMETERS


def resolve_dtype(name: str | None, device: str, unet_parameters: int):
    """The weights' dtype for ``device``: a name as given, or for ``"auto"`` (None): bfloat16 on a CUDA GPU that
    supports it, and on a CPU with native bfloat16 for a UNet of at least ``BF16_CPU_MIN_UNET_PARAMETERS`` (where it is
    measured faster); float32 otherwise (and on MPS). Sampling math stays float32 in every case."""
    import torch

    if name not in (None, "", "auto"):
        return getattr(torch, str(name))
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if str(device) == "cpu" and unet_parameters >= BF16_CPU_MIN_UNET_PARAMETERS and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_vae_dtype(name: str | None, device: str, unet_dtype):
    """The VAE's dtype: the UNet's, except for ``"auto"`` (None) on a CPU with native bfloat16, where the VAE is
    bfloat16 whatever the UNet's size. Decoding is one pass over every audio sample, and at the bundled pipeline's
    size it is most of a few-step song's time: bfloat16 decodes a 12-s song in 0.13-0.17 s against 0.21 s (the
    distilled student's 4 steps: 0.24-0.28 s per song against 0.32 s), at about 42 dB SNR to float32, while its
    small UNet gains nothing (docs/benchmarks.md, docs/distillation.md)."""
    import torch

    if name in (None, "", "auto") and str(device) == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return unet_dtype


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def saved_unet_parameters(folder) -> int | None:
    """The UNet's parameter count read from the headers of ``folder/unet/*.safetensors`` (no weights loaded);
    None when the folder has no safetensors UNet."""
    import math

    from safetensors import safe_open

    files = sorted((Path(folder) / "unet").glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def _cpu_times(cpus) -> dict[int, tuple[int, int]]:
    """``{cpu: (idle, total)}`` jiffies from /proc/stat for the CPUs in ``cpus``."""
    times = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                values = [int(v) for v in fields]
                times[int(name[3:])] = (values[3] + (values[4] if len(values) > 4 else 0), sum(values[:8]))
    return times


def free_cpu_cores(interval: float = 0.1) -> float:
    """How many of the cores this process may run on are idle now: the idle share of each over ``interval``
    seconds (/proc/stat), summed; where that cannot be read, the cores less the one-minute load average."""
    import os
    import time

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        before = _cpu_times(cpus)
        time.sleep(interval)
        after = _cpu_times(cpus)
        shares = [(after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]) for c in before if c in after]
        if shares:
            return float(sum(shares))
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(0.0, len(cpus) - load)


def use_free_cores(threads: int | None = None) -> int:
    """Sets torch's CPU threads to ``threads``, or by default to the cores idle now (at least one, at most those this
    process may use); returns the number. More threads than idle cores is the slow case: on 2 cores with one busy,
    the bundled pipeline took 278 s with 2 threads for what 1 thread does in 22 s (issue 26). An explicit
    ``OMP_NUM_THREADS`` is the user's choice and is kept."""
    import math
    import os

    import torch

    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, min(cores, math.floor(free_cpu_cores() + 0.25)))
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}.")
    torch.set_num_threads(threads)
    return threads


def load_pipeline(path, device: str = "auto", dtype: str | None = "auto", compile: str | None = "auto"):
    """A pipeline from a folder or Hub id on ``device`` in the dtype :func:`resolve_dtype` picks (its VAE in
    :func:`resolve_vae_dtype`'s; the name returned then says both, e.g. ``"float32 (VAE bfloat16)"``), compiled for
    generation where :func:`resolve_compile` says so; returns ``(pipe, device, dtype_name)``.

    The dtype is chosen from the UNet's size read off the weights' headers and passed to ``from_pretrained``: the
    weights load in it, where casting a loaded pipeline with ``.to(dtype)`` makes diffusers warn on every model."""
    from mslddm import MultiSourceLatentPipeline
    from mslddm.hub import resolve_pretrained_path

    device = resolve_device(device)
    if device == "cpu":
        use_free_cores()
    folder = resolve_pretrained_path(path)
    parameters = saved_unet_parameters(folder)
    if parameters is None:  # no safetensors headers to read: load once to count
        probe = MultiSourceLatentPipeline.from_pretrained(folder)
        parameters = sum(p.numel() for p in probe.unet.parameters())
        del probe
    chosen = resolve_dtype(dtype, device, parameters)
    vae_dtype = resolve_vae_dtype(dtype, device, chosen) if (Path(folder) / "vae").is_dir() else chosen
    dtypes = chosen if vae_dtype == chosen else {"vae": vae_dtype, "default": chosen}
    pipe = MultiSourceLatentPipeline.from_pretrained(folder, dtype=dtypes)
    pipe._name_or_path = str(path)
    if device != "cpu":
        pipe = pipe.to(device)
    if resolve_compile(compile, parameters):  # the UNet only when asked for, on a GPU (not measured yet)
        pipe.enable_compile(unet=compile == "on" and device.startswith("cuda"))
    name = str(chosen).replace("torch.", "")
    if vae_dtype != chosen:
        name += f" (VAE {str(vae_dtype).replace('torch.', '')})"
    return pipe, device, name
