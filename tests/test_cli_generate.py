import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mslddm.audio import load_audio, write_audio

pytestmark = pytest.mark.slow  # real subprocesses / servers: seconds each

STEMS = ["bass", "drums", "guitar", "piano"]


def mslddm(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "mslddm", *map(str, args)], capture_output=True, text=True, check=False,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if check and proc.returncode != 0:
        raise AssertionError(f"mslddm {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def generate(*args):
    """``mslddm generate`` in this process: a subprocess costs an interpreter and torch (6.6 s of CPU); the entry
    point itself runs in the --help and total generation tests."""
    from mslddm.cli import main

    assert main(["generate", *map(str, args)]) == 0


def test_help_lists_commands_and_documents_every_option_with_its_default(capsys):
    top = mslddm("--help").stdout
    for command in ("generate", "make-dataset", "evaluate"):
        assert command in top
    from mslddm.cli import main

    with pytest.raises(SystemExit, match="0"):  # in this process: `mslddm --help` ran the entry point
        main(["generate", "--help"])
    text = capsys.readouterr().out
    for option in ("--pipeline", "--stem", "--generate", "--duration", "--steps", "--sampler", "--churn", "--seed",
                   "--num-samples", "--out", "--device", "--dtype"):
        assert option in text
    # unset sampler settings are the pipeline's (its scheduler config); the help repeats no numbers of it
    flat = " ".join(text.split())
    assert flat.count("default: the pipeline's scheduler config") >= 3 and "150" not in flat


def test_total_and_partial_generation_write_stems_mix_and_settings(saved_pipeline, tmp_path):
    out = tmp_path / "total"
    mslddm("generate", "--pipeline", saved_pipeline, "--duration", 0.3, "--steps", 2, "--seed", 7,
           "--num-samples", 2, "--out", out)
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["sample_000_seed7", "sample_001_seed8"]
    sample = out / folders[0]
    assert sorted(p.name for p in sample.iterdir()) == sorted([f"{s}.wav" for s in STEMS] + ["mix.wav", "settings.json"])
    settings = json.loads((sample / "settings.json").read_text())
    assert settings["seed"] == 7 and settings["generated"] == STEMS and settings["steps"] == 2
    stems = np.stack([sf.read(sample / f"{s}.wav")[0] for s in STEMS])
    mix, sr = sf.read(sample / "mix.wav")
    assert sr == 22050 and stems.shape == (4, round(0.3 * 22050))
    # One gain for all files: the written mix is still the sum of the written stems (up to 16-bit rounding).
    np.testing.assert_allclose(mix, stems.sum(axis=0), atol=4 / 32768)

    # Partial generation from a 44.1 kHz stereo file; seeds reproduce the total run's folder naming.
    bass = tmp_path / "bass.flac"
    t = np.arange(44100 // 4) / 44100
    write_audio(bass, np.stack([0.3 * np.sin(2 * np.pi * 55 * t)] * 2), 44100)
    partial = tmp_path / "partial"
    generate("--pipeline", saved_pipeline, "--stem", f"bass={bass}", "--generate", "drums,piano", "--steps", 2,
             "--out", partial)
    sample = partial / "sample_000_seed0"
    settings = json.loads((sample / "settings.json").read_text())
    assert settings["generated"] == ["drums", "piano"] and settings["given"] == {"bass": bass.name}
    # Issue 26 item 8: at the upload's rate and channels, the given stem as decoded, the model's rate recorded
    assert (settings["sample_rate"], settings["channels"], settings["model_sample_rate"]) == (44100, 2, 22050)
    assert settings["duration_s"] == 0.25 and settings["gain_applied"] == 1.0
    guitar, sr = sf.read(sample / "guitar.wav")
    assert sr == 44100 and guitar.shape == (44100 // 4, 2) and not guitar.any()  # neither given nor generated
    assert np.array_equal(sf.read(sample / "bass.wav", dtype="int16")[0], sf.read(bass, dtype="int16")[0])
    drums, _ = sf.read(sample / "drums.wav")
    assert drums.shape == (44100 // 4, 2) and np.array_equal(drums[:, 0], drums[:, 1]) and drums.any()
    mix, _ = sf.read(sample / "mix.wav")
    stems = sum(sf.read(sample / f"{s}.wav")[0] for s in STEMS)
    np.testing.assert_allclose(mix, stems * settings["mix_gain_applied"] / settings["gain_applied"], atol=4 / 32768)


def test_same_seed_same_files(saved_pipeline, tmp_path):
    for run in ("a", "b"):
        generate("--pipeline", saved_pipeline, "--duration", 0.2, "--steps", 2, "--seed", 3, "--out", tmp_path / run)
    a = (tmp_path / "a" / "sample_000_seed3" / "mix.wav").read_bytes()
    assert a == (tmp_path / "b" / "sample_000_seed3" / "mix.wav").read_bytes()


def test_extend_continues_an_earlier_result_in_windows(saved_pipeline, tmp_path):
    generate("--pipeline", saved_pipeline, "--duration", 0.5, "--steps", 2, "--seed", 4, "--out", tmp_path / "first")
    first = tmp_path / "first" / "sample_000_seed4"
    # An untrained tiny model's stems lie near -51 dBFS, under SILENCE_DBFS (a silent stem is not continued): a gain
    # recorded 20 dB lower makes --from-result read them 20 dB louder, where a trained model's lie.
    first_settings = json.loads((first / "settings.json").read_text())
    first_settings["gain_applied"] /= 10
    (first / "settings.json").write_text(json.dumps(first_settings))
    generate("--pipeline", saved_pipeline, "--from-result", first, "--extend", 1.5, "--window", 0.75,
             "--overlap", 0.3, "--steps", 2, "--seed", 4, "--out", tmp_path / "longer")
    longer = tmp_path / "longer" / "sample_000_seed4"
    settings = json.loads((longer / "settings.json").read_text())
    assert settings["windows"] > 1 and settings["extended_by_s"] == 1.5 and settings["generated"] == STEMS
    assert settings["duration_s"] == pytest.approx(2.0, abs=1e-3)
    old_gain = json.loads((first / "settings.json").read_text())["gain_applied"]
    for name in STEMS:
        before = load_audio(first / f"{name}.wav", 22050) / old_gain
        after = load_audio(longer / f"{name}.wav", 22050) / settings["gain_applied"]
        assert len(after) == 2 * 22050
        np.testing.assert_allclose(after[: len(before) - 512], before[:-512], atol=1e-3)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--extend", "2"], "--extend continues given stems"),
        (["--extend", "2", "--duration", "3"], "either --duration or --extend"),
        (["--duration", "1e9"], "at most 600 s are made"),
        (["--from-result", "."], "no settings.json"),
        (["--stem", "bass=x.wav"], "The bass stem (x.wav) does not exist"),
        (["--stem", "bass"], "NAME=FILE"),
        (["--generate", "flute"], "Unknown stem"),
        (["--seed", "1", "--seed", "2", "--num-samples", "3"], "seeds"),
        (["--reconstruction-guidance", "-1"], "--reconstruction-guidance must be a number >= 0"),
    ],
)
def test_bad_arguments_fail_with_a_message(saved_pipeline, tmp_path, args, message, capsys):
    """In this process (a subprocess per case costs an interpreter and torch; the tests above run the real entry
    point): the command exits with the message (what `python -m mslddm` prints), not with another exception (what
    would print a traceback)."""
    from mslddm.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["generate", "--pipeline", str(saved_pipeline), "--steps", "1", "--out", str(tmp_path), *args])
    assert exit.value.code not in (0, None)
    assert message in f"{exit.value.code}\n{capsys.readouterr().err}"


def test_the_tempo_of_the_drums_goes_into_settings(saved_pipeline, tmp_path):
    """Issue 26: the detected tempo in settings.json, so stems drop onto a DAW's grid (madmom: the eval extra)."""
    from mslddm.evaluation.beats import _madmom

    try:
        _madmom()
    except ImportError as error:
        pytest.skip(str(error))
    t = np.arange(4 * 44100) / 44100
    hits = 0.5 * np.exp(-(t % (60 / 140)) * 40) * np.sin(2 * np.pi * 80 * t)
    write_audio(tmp_path / "drums.wav", np.stack([hits, hits]), 44100)
    generate("--pipeline", saved_pipeline, "--stem", f"drums={tmp_path / 'drums.wav'}", "--steps", 1, "--out",
             tmp_path / "out")
    settings = json.loads((tmp_path / "out" / "sample_000_seed0" / "settings.json").read_text())
    assert settings["tempo_of"] == "drums" and settings["tempo_bpm"] == pytest.approx(140, abs=2)
