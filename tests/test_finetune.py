"""`mslddm finetune` end to end on the tiny pipeline and a folder of songs in odd formats, rates and channel counts:
LoRA and full fine-tunes export with a model card, resume exactly, load in the CLI and Python; bad data is one
sentence before anything is written (issue 28)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from mslddm.cli import main

pytestmark = pytest.mark.slow  # real training subprocesses: seconds each

TINY = Path(__file__).resolve().parent / "fixtures" / "pipelines" / "msldm"  # bass, drums, guitar, piano
TINY_SET = ["msldm.batch_size=2", "msldm.segment_frames=16", "msldm.validation_seconds=0.5",
            "msldm.validation_segments=1", "msldm.validation_steps=2", "msldm.checkpointing_steps=2",
            "msldm.log_every=1"]


def tone(freq, sr, seconds=2.0, channels=1, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.2 * np.sin(2 * np.pi * freq * t) * np.exp(-3 * (t % 0.5))
    x = x + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return np.stack([x] * channels, 1) if channels > 1 else x


def write_songs(root, count=3):
    """Songs as a musician's folder holds them: FLAC stereo at 44.1 kHz, 16-bit WAV at 16 kHz, OGG at 32 kHz named
    'Keys', an MP3 at 48 kHz (missing from one song), a mix and a text file that are not stems."""
    for i in range(count):
        song = root / f"song{i}"
        song.mkdir(parents=True)
        sf.write(song / "bass.flac", tone(55 + i, 44100, channels=2), 44100)
        sf.write(song / "drums.wav", tone(200 + i, 16000, seed=i), 16000, subtype="PCM_16")
        sf.write(song / "Keys.ogg", tone(440 + i, 32000), 32000)
        if i != 1:
            sf.write(song / "guitar.mp3", tone(330, 48000), 48000)
        sf.write(song / "mix.wav", tone(100, 22050), 22050)
        (song / "notes.txt").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    return write_songs(tmp_path_factory.mktemp("songs") / "my band")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def finetune(data, out, *flags, steps=2, calibrate=0):
    args = ["finetune", str(data), "--pipeline", str(TINY), "--out", str(out), "--stem-map", "keys=piano",
            "--max_steps", str(steps), "--calibrate-clips", str(calibrate), *map(str, flags)]
    for item in TINY_SET:
        args += ["--set", item]
    return main(args)


def refusal(args) -> str:
    with pytest.raises(SystemExit) as stop:
        main(["finetune", *map(str, args)])
    return str(stop.value)


def sample(pipe):
    return pipe(audio_length_in_s=0.2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).stems


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, songs):
    """A LoRA fine-tune of 2 steps, resumed to 4; and one of 4 steps straight."""
    base = tmp_path_factory.mktemp("lora")
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    assert finetune(songs, base / "split", "--rank", 4, steps=2) == 0
    assert finetune(songs, base / "split", "--rank", 4, steps=4) == 0
    assert finetune(songs, base / "straight", "--rank", 4, steps=4, calibrate=2) == 0
    mp.undo()
    return base


def test_lora_finetune_exports_a_small_adapter_with_a_card_naming_base_data_and_numbers(lora_run, songs):
    out = lora_run / "split"
    adapter = out / "lora"
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "adapter_config.json",
                                                          "pytorch_lora_weights.safetensors"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_pipeline"] == "msldm" and config["r"] == 4 and config["lora_alpha"] == 4.0
    assert config["dtype"] == "float16" and config["stem_names"] == ["bass", "drums", "guitar", "piano"]
    card = (adapter / "README.md").read_text()
    for said in ("LoRA adapter of `msldm`", "Fine-tuned from `msldm`", "3 song(s) of `my band`",
                 "train 2 song(s)", "validation 1 song(s)", "guitar in 1", "keys -> piano", "held out",
                 "Diffusion training steps: 4.", "Training time:", "| diffusion | loss |"):
        assert said in card, said
    # the songs' view: the pipeline's stem names, linked to the musician's files (Keys.ogg is the piano); the
    # middle song is held out for validation
    view = out / "data"
    assert sorted(p.name for p in (view / "train" / "song0").iterdir()) == ["bass.flac", "drums.wav", "guitar.mp3",
                                                                            "piano.ogg"]
    assert (view / "train" / "song0" / "piano.ogg").resolve() == (songs / "song0" / "Keys.ogg").resolve()
    assert [p.name for p in (view / "validation").iterdir()] == ["song1"]
    record = json.loads((out / "finetune.json").read_text())
    assert record["mode"] == "lora" and record["lora"] == {"rank": 4, "alpha": 4.0}
    assert record["data"]["missing_stems"] == {"guitar": ["song1"]}


def test_the_finetune_calibrates_the_adapters_output_levels_against_the_songs(lora_run):
    config = json.loads((lora_run / "straight" / "lora" / "adapter_config.json").read_text())
    levels = config["stem_levels_dbfs"]  # the training songs' levels, measured by the training
    assert set(levels) == {"bass", "drums", "guitar", "piano"} and all(-60 < v < 0 for v in levels.values())
    gains = config["stem_output_gains_db"]  # what brings the adapted pipeline's stems to them
    assert set(gains) == set(levels) and all(abs(g) <= 24 for g in gains.values())
    assert "stem_output_gains_db" not in json.loads((lora_run / "split" / "lora" / "adapter_config.json").read_text())
    card = (lora_run / "straight" / "lora" / "README.md").read_text()
    assert "## Output levels" in card and f"| bass | {levels['bass']:.1f} |" in card


def test_a_resumed_lora_run_is_the_straight_run(lora_run):
    """2 steps, then the same command with 4: the adapter is the one of 4 steps straight, bit for bit."""
    split, straight = (load_file(lora_run / run / "checkpoint-4" / "lora" / "pytorch_lora_weights.safetensors")
                       for run in ("split", "straight"))
    assert split.keys() == straight.keys() and all(torch.equal(split[k], straight[k]) for k in split)
    state = json.loads((lora_run / "split" / "checkpoint-4" / "training_state.json").read_text())
    assert state["step"] == 4 and state["init_from"] == "msldm"


def test_the_adapter_loads_in_python_and_the_cli_and_unloads_to_the_base(lora_run, tmp_path):
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    base = sample(pipe)
    pipe.load_lora_weights(lora_run / "split" / "lora")
    assert not np.array_equal(sample(pipe), base)
    pipe.unload_lora_weights()
    assert np.array_equal(sample(pipe), base)
    assert main(["generate", "--pipeline", str(TINY), "--lora", str(lora_run / "split" / "lora"), "--lora-scale",
                 "0.5", "--duration", "0.3", "--steps", "2", "--out", str(tmp_path / "gen")]) == 0
    settings = json.loads((tmp_path / "gen" / "sample_000_seed0" / "settings.json").read_text())
    assert settings["lora"] == str(lora_run / "split" / "lora") and settings["lora_scale"] == 0.5


def test_a_run_folder_continues_only_its_own_fine_tune(lora_run, songs):
    message = refusal([songs, "--pipeline", TINY, "--out", lora_run / "split", "--stem-map", "keys=piano",
                       "--rank", 8])
    assert "holds checkpoints of another fine-tune (lora was {'rank': 4, 'alpha': 4.0}, now {'rank': 8" in message


def test_full_finetune_exports_a_pipeline_that_generates(songs, tmp_path):
    out = tmp_path / "full"
    assert finetune(songs, out, "--mode", "full") == 0
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert sample(pipe).shape[:2] == (1, 4)
    card = (out / "pipeline" / "README.md").read_text()
    assert "Fine-tuned from `msldm` (every weight of the UNet)" in card and "Continued from the pipeline" in card
    assert not (out / "lora").exists() and (out / "checkpoint-2" / "unet_ema").is_dir()
    # the base's scheduler whole: its sigma_data (the preconditioning its UNet learned) and its sampler settings
    base, tuned = (json.loads((p / "scheduler" / "scheduler_config.json").read_text()) for p in (TINY, out / "pipeline"))
    from mslddm import EDMScheduler  # (a key added to the scheduler since the fixture was saved: its default)

    expected = {k: v for k, v in EDMScheduler.from_config(base).config.items() if not k.startswith("_")}
    assert {k: v for k, v in tuned.items() if not k.startswith("_")} == expected


@pytest.mark.parametrize("case, sentence", [
    ("unknown", ("The songs hold stems this pipeline does not know ('keys' in 2 song(s), e.g. song0/Keys.ogg); "
                 "its stems are ['bass', 'drums', 'guitar', 'piano']: map each to one of them with --stem-map "
                 "keys=STEM, or leave them out with --drop-unknown.")),
    ("no songs", "No song to train on in"),
    ("loose files", "holds audio files itself (bass.wav), not song folders"),
    ("unreadable", "song0/drums.wav could not be read ("),
    ("lengths", "The stems of song0 differ in length (drums 1.00 s, "),
    ("twice", "song0 has two files for the piano stem"),
    ("bad map", "--stem-map keys=organ: 'organ' is not one of this pipeline's stems"),
    ("overlap", "overlap: the run folder must be apart from the songs"),
])
def test_bad_data_is_one_sentence_before_anything_is_written(tmp_path, case, sentence):
    data = tmp_path / "data"
    data.mkdir()
    if case not in ("no songs", "loose files"):
        write_songs(data, count=2)
    stem_map = ["--stem-map", "keys=organ" if case == "bad map" else "keys=piano"] if case != "unknown" else []
    if case == "loose files":
        sf.write(data / "bass.wav", tone(55, 22050), 22050)
    elif case == "unreadable":
        (data / "song0" / "drums.wav").write_bytes(b"RIFF not really a wave file")
    elif case == "lengths":
        sf.write(data / "song0" / "drums.wav", tone(200, 16000, seconds=1.0), 16000)
    elif case == "twice":
        sf.write(data / "song0" / "piano.wav", tone(220, 22050), 22050)
    out = data / "run" if case == "overlap" else tmp_path / "out"
    message = refusal([data, "--pipeline", TINY, "--out", out, *stem_map, "--max_steps", 1])
    assert sentence in message and "\n" not in message
    assert not (tmp_path / "out").exists() and not (data / "run").exists()


def test_drop_unknown_and_check_write_nothing(songs, tmp_path, capsys):
    assert main(["finetune", str(songs), "--pipeline", str(TINY), "--out", str(tmp_path / "out"), "--drop-unknown",
                 "--check"]) == 0
    said = capsys.readouterr().out
    assert "Left out: keys (3 file(s))" in said and "piano 0" in said and not (tmp_path / "out").exists()
