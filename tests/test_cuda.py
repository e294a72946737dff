"""On a CUDA GPU (skipped elsewhere; `scripts/gpu_run.sh` runs these first): generation and its device moves in
bf16, stems given from the CPU, outputs where they were asked for."""

import numpy as np
import pytest
import torch

from conftest import LATENT, STEMS, tiny_pipeline

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def cuda_pipe():
    return tiny_pipeline().to("cuda", torch.bfloat16)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_bf16_generation_on_the_gpu(cuda_pipe, sampler):
    out = cuda_pipe(audio_length_in_s=0.5, num_inference_steps=3, sampler=sampler, output_type="pt",
                    generator=[torch.Generator().manual_seed(0)])
    assert out.stems.device.type == "cuda" and out.stems.dtype == torch.float32
    assert torch.isfinite(out.stems).all() and out.stems.abs().max() > 0
    np_out = cuda_pipe(audio_length_in_s=0.5, num_inference_steps=3, sampler=sampler,
                       generator=[torch.Generator().manual_seed(0)])
    np.testing.assert_allclose(np_out.stems, out.stems.cpu().numpy(), atol=1e-6)  # a CPU generator: same noise


def test_partial_generation_with_cpu_stems_and_models_on_the_gpu(cuda_pipe):
    t = np.arange(11025) / 22050
    bass = (0.3 * np.sin(2 * np.pi * 55 * t)).astype(np.float32)
    out = cuda_pipe(stems={"bass": torch.from_numpy(bass)}, num_inference_steps=2)
    np.testing.assert_array_equal(out.stems[0, 0], bass)
    latents = cuda_pipe.encode_stems(torch.zeros(1, 4, 320 * 16))  # a CPU input
    assert latents.device.type == "cuda" and latents.shape == (1, 4 * LATENT, 16)
    audio = cuda_pipe.decode_latents(latents.cpu())  # a CPU input again
    assert audio.device.type == "cuda" and audio.dtype == torch.float32


def test_gpu_and_cpu_agree_in_float32():
    cpu = tiny_pipeline()
    gpu = tiny_pipeline().to("cuda")
    kwargs = dict(audio_length_in_s=0.3, num_inference_steps=3, sampler="dpmpp_2m", output_type="latent")
    a = cpu(generator=[torch.Generator().manual_seed(1)], **kwargs).stems
    b = gpu(generator=[torch.Generator().manual_seed(1)], **kwargs).stems.cpu()
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert len(STEMS) == a.shape[1]
