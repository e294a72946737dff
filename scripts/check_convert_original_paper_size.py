"""Paper-size check of `mslddm convert-original`: the reference modules at the released models' sizes write files in
the original formats, the CLI converts them, and the converted UNet and SourceVAE are compared with the reference.

Needs the reference packages (see docs/convert_original.md). Random weights: this checks sizes, detection, time and
memory; tests/test_convert_original.py checks the numbers at small widths with every parameter perturbed.

    OMP_NUM_THREADS=1 python scripts/check_convert_original_paper_size.py msldm [--workdir DIR]
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from mslddm import MultiSourceLatentPipeline
from mslddm.conversion import UNET_PRESETS


def write_original_files(variant: str, folder: Path) -> tuple[Path, Path, torch.nn.Module, torch.nn.Module]:
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))  # dac's model code never calls it
    import audio_diffusion_pytorch.modules as adp
    from dac.model.dac import Decoder, Encoder

    torch.manual_seed(0)
    encoder, decoder = Encoder(64, [2, 4, 5, 8], 160), Decoder(80, 1536, [8, 5, 4, 2], 1)
    decoder.model = decoder.model[:-1]  # MSLDM's SourceVAE has no final tanh
    vae_sd = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    vae_sd |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    torch.save({"generator": vae_sd}, folder / "sourcevae_ckpt")
    unet = adp.UNet1d(**UNET_PRESETS[variant], resnet_groups=8, kernel_multiplier_downsample=2, kernel_sizes_init=[1, 3, 7],
                      use_nearest_upsample=False, use_skip_scale=True, use_attention_bottleneck=True,
                      use_context_time=True).eval()
    state = {f"model.unet.{k}": v for k, v in unet.state_dict().items()}
    state |= {f"model.diffusion.net.{k}": v for k, v in unet.state_dict().items()}
    unet_path = folder / f"{variant.replace('-', '_')}.ckpt"
    torch.save({"state_dict": state, "epoch": 0}, unet_path)  # no hyper_parameters: the preset must be detected
    return folder / "sourcevae_ckpt", unet_path, unet, decoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(UNET_PRESETS))
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        vae_path, unet_path, ref_unet, ref_decoder = write_original_files(args.variant, folder)
        out = folder / f"{args.variant}-pipeline"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mslddm", "convert-original", "--vae", str(vae_path), "--unet",
                        str(unet_path), "--out", str(out), "--force"], check=True)
        seconds = time.perf_counter() - start
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"convert-original: {seconds:.0f} s, peak RSS {peak_gib:.1f} GiB")

        pipe = MultiSourceLatentPipeline.from_pretrained(out)
        x = torch.randn(1, 320, pipe.unet.length_multiple, generator=torch.Generator().manual_seed(0))
        c_noise, z = torch.log(torch.tensor([0.5])) / 4, torch.randn(1, 80, 8)
        with torch.no_grad():
            unet_diff = (pipe.unet(x, c_noise).sample - ref_unet(x, c_noise)).abs().max().item()
            vae_diff = (pipe.vae.decode(z).sample - ref_decoder(z)).abs().max().item()
        print(f"max abs diff vs reference: UNet {unet_diff:.1e}, SourceVAE decode {vae_diff:.1e}")


if __name__ == "__main__":
    main()
