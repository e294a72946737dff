"""Check mslddm's VGGish (front end and network) against the torchvggish package (a one-off, not a test).

No VGGish weights can be downloaded here, so the network is compared with the same random (He-initialised) weights
in both, saved in torchvggish's state-dict format; the front end is compared on real audio already at 16 kHz (torchvggish
resamples with resampy, mslddm with soxr, so resampling is left out of the comparison). Needs a scratch env:

    /tmp/tfvenv/bin/pip install --no-deps torchvggish==0.2 resampy torch==2.13.0
    PYTHONPATH=. /tmp/tfvenv/bin/python scripts/compare_vggish_torchvggish.py FILE...
"""

import sys
import tempfile

import numpy as np
import torch
from torchvggish import torchvggish, vggish_input

from mslddm.audio import load_audio
from mslddm.evaluation.embedders.base import frame_patches
from mslddm.evaluation.embedders.vggish import EXAMPLE_FRAMES, VGGishEmbedder, vggish_log_mel


def main(files):
    torch.manual_seed(0)
    reference = torchvggish._vgg(postprocess=False).eval()
    for module in (
        reference.modules()
    ):  # He init keeps activations O(1) through the 9 layers (the default shrinks them)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(reference.state_dict(), f"{tmp}/vggish-random.pth")
        ours = VGGishEmbedder(f"{tmp}/vggish-random.pth")
    reference.embeddings = reference.embeddings[:-1]  # FAD's use_activation=False: no last ReLU, as ours
    worst_features = worst_embeddings = 0.0
    for path in files:
        audio = load_audio(path, 16000)
        ref_examples = vggish_input.waveform_to_examples(audio.astype(np.float64), 16000, return_tensor=False)
        our_examples = frame_patches(vggish_log_mel(audio), EXAMPLE_FRAMES)
        features = np.abs(ref_examples - our_examples).max()
        with torch.no_grad():
            ref = reference(torch.from_numpy(ref_examples).float()[:, None]).numpy()
        embeddings = np.abs(ours.embed(audio, 16000) - ref).max()
        print(
            f"{path}: {len(our_examples)} examples; max abs diff log-mel {features:.1e}, "
            f"embeddings {embeddings:.1e} (max |embedding| {np.abs(ref).max():.2f})"
        )
        worst_features, worst_embeddings = max(worst_features, features), max(worst_embeddings, embeddings)
    print(f"ALL FILES: max abs diff log-mel {worst_features:.1e}, embeddings {worst_embeddings:.1e}")


if __name__ == "__main__":
    main(sys.argv[1:])
