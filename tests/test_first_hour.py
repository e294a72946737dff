"""A musician's first hour (issue 26): the README's Python continuation of a result whose other stems were held
silent works as the page's Extend does (they stay silent), loading prints no cast warning (tests/test_devices.py)."""

import re

import numpy as np
import pytest
import torch

from conftest import tiny_pipeline
from mslddm.stems import StemError

SR = 22050


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_extending_a_result_with_held_silent_stems(pipe):
    rng = np.random.default_rng(0)
    out = pipe(stems={"drums": 0.3 * rng.standard_normal(SR).astype(np.float32)}, generate=["bass"],
               audio_length_in_s=1.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.generated == ["bass"]
    stems = dict(zip(out.stem_names, out.stems[0]))
    stems["bass"] = 0.2 * rng.standard_normal(SR).astype(np.float32)  # a bass as loud as a trained model's
    assert not stems["guitar"].any() and not stems["piano"].any()  # held silent in the result
    # The README's line: the whole result, silent stems included
    longer = pipe(stems=stems, extend_s=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    assert longer.stems.shape == (1, 4, int(1.5 * SR)) and longer.generated == ["bass", "drums"]
    held = [longer.stem_names.index(n) for n in ("guitar", "piano")]
    assert not longer.stems[0, held].any()  # still silent: held, not continued
    np.testing.assert_array_equal(longer.stems[0, 1, : SR - 512], stems["drums"][: SR - 512])  # the take itself
    with pytest.raises(StemError, match="Every given stem .* is silent: there is nothing to continue"):
        pipe(stems={"guitar": np.zeros(SR, np.float32)}, extend_s=0.5, num_inference_steps=2)
    with pytest.raises(StemError, match="guitar"):  # outside a continuation a silent stem is still refused
        pipe(stems={"guitar": np.zeros(SR, np.float32)}, num_inference_steps=2)


def test_help_imports_neither_torch_nor_diffusers():
    """`mslddm --help` took 7.6 s on a loaded machine: building the options imported the samplers (torch,
    diffusers); the options now read torch-free tables (issue 26 item 14)."""
    import subprocess
    import sys

    code = ("import sys\nfrom mslddm.cli import main\n"
            "for argv in (['--help'], ['generate', '--help'], ['evaluate', '--help'], ['separate', '--help'],\n"
            "             ['compare', '--help'], ['accompany', '--help'], ['export', '--help'],\n"
            "             ['finetune', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_loading_and_generating_print_no_warning(saved_pipeline, tmp_path):
    """Issue 26's acceptance: a run of `mslddm generate` (total, then partial around a 44.1 kHz stereo take) raises
    any warning mslddm itself issues (an error filter on its modules) and prints no warning from the libraries
    under it (diffusers' cast notices, torch's, Gradio's): every stderr line is checked."""
    import subprocess
    import sys

    import soundfile as sf

    rate = 44100
    t = np.arange(rate) / rate
    take = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1)
    sf.write(tmp_path / "take.wav", take.astype(np.float32), rate)
    code = ("import sys, warnings\n"
            "warnings.filterwarnings('error', module=r'mslddm(\\.|$)')\n"
            "from mslddm.cli import main\n"
            "for extra in ([], ['--stem', 'bass=' + sys.argv[3]]):\n"
            "    code = main(['generate', '--pipeline', sys.argv[1], '--duration', '1', '--steps', '2', '--out',\n"
            "                 sys.argv[2] + str(len(extra))] + extra)\n"
            "    assert code == 0, code\n")
    run = subprocess.run([sys.executable, "-c", code, str(saved_pipeline), str(tmp_path / "out"),
                          str(tmp_path / "take.wav")], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line.strip() for line in run.stderr.replace("\r", "\n").splitlines() if line.strip()]
    progress = re.compile(r"^(Loading pipeline components\.\.\.:)?\s*\d+%\|.*\]$")  # tqdm's bars
    own = ("Reading the ", "Encoding the given stem", "1.0 s at ")  # the command's own messages
    other = [line for line in lines if not progress.match(line) and not line.startswith(own)]
    assert not other, "\n".join(other)
    assert (tmp_path / "out0").is_dir() and (tmp_path / "out2").is_dir()
