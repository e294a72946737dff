"""Faults in input (issue 27): a stem that fails at its header is a failed track of encode-latents, named,
with a non-zero exit unless --skip-failed, never silently dropped; numbers that would slip through `generate`."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mslddm import SourceVAE
from mslddm.cli import main

SR = 22050
STEMS = ["bass", "drums", "guitar", "piano"]


@pytest.fixture(scope="module")
def data_and_vae(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-data")
    rng = np.random.default_rng(0)
    for name in ("Track00001", "Track00002"):
        folder = root / "data" / "train" / name
        folder.mkdir(parents=True)
        for stem in STEMS:
            sf.write(folder / f"{stem}.wav", (0.1 * rng.standard_normal(SR // 2)).astype(np.float32), SR)
    # Random bytes under a .wav name: libsndfile fails on the header, when the track is indexed
    (root / "data" / "train" / "Track00002" / "drums.wav").write_bytes(rng.integers(0, 256, 4000, np.uint8).tobytes())
    torch.manual_seed(0)
    SourceVAE(encoder_dim=4, decoder_dim=16, latent_channels=8).save_pretrained(root / "vae")
    return root


def test_a_stem_failing_at_its_header_fails_the_run_by_name(data_and_vae, tmp_path, capsys):
    root = data_and_vae
    args = ["encode-latents", str(root / "data"), "--vae", str(root / "vae"), str(tmp_path / "out"), "--quiet",
            "--stems", ",".join(STEMS)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 tracks encoded" in out and "1 failed" in out and "FAILED train/Track00002: unreadable" in out
    assert "pass --skip-failed" in out
    assert main(args + ["--skip-failed"]) == 0
    out = capsys.readouterr().out
    assert "FAILED train/Track00002" in out and "left out and named in" in out
    header = json.loads((tmp_path / "out" / "latents.json").read_text())
    assert list(header["failed_tracks"]) == ["train/Track00002"]
    assert (tmp_path / "out" / "train" / "Track00001.safetensors").is_file()
    assert not (tmp_path / "out" / "train" / "Track00002.safetensors").exists()


@pytest.mark.parametrize("flags, sentence", [
    (["--num-samples", "0"], "--num-samples must be at least 1, got 0."),
    (["--max-stem-seconds", "nan"], "--max-stem-seconds must be a positive number of seconds, got nan."),
    (["--duration", "inf"], "--duration must be a positive number of seconds, got inf."),
    (["--extend", "-3"], "--extend must be a positive number of seconds, got -3."),
    (["--overlap", "nan"], "--overlap must be zero or a positive number of seconds, got nan."),
])
def test_generate_refuses_numbers_that_would_slip_through(flags, sentence, tmp_path):
    """Checked before the pipeline is even loaded (the pipeline path does not exist)."""
    from mslddm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--pipeline", str(tmp_path / "none"), "--out", str(tmp_path / "out"), *flags])
    assert str(exit_.value.code) == sentence
    assert not (tmp_path / "out").exists()


def test_generate_checks_its_output_folder_before_any_work(saved_pipeline, tmp_path):
    from mslddm.cli import main

    target = tmp_path / "a-file"
    target.write_text("mine")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        main(["generate", "--pipeline", str(saved_pipeline), "--duration", "0.5", "--steps", "1", "--out",
              str(target)])
    assert target.read_text() == "mine"


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a small tmpfs (``tmpfs("64k", read_only=False)``): real full and read-only file systems; skipped
    where mounting is not allowed (not root)."""
    import subprocess

    mounted = []

    def mount(size: str, read_only: bool = False):
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


@pytest.mark.parametrize("read_only, sentence", [(True, "Cannot write to --out .*: the file system is read-only"),
                                                 (False, "has 65.5 KB free, but the samples' WAVs need about")])
def test_generate_stops_on_a_full_or_read_only_disk_before_any_work(saved_pipeline, tmpfs, read_only, sentence,
                                                                     monkeypatch):
    from mslddm.cli import main
    from mslddm.commands import generate

    monkeypatch.setattr(generate, "_write_sample", lambda *a: pytest.fail("wrote a sample"))
    disk = tmpfs("64k", read_only)
    with pytest.raises(SystemExit, match=sentence):
        main(["generate", "--pipeline", str(saved_pipeline), "--duration", "2", "--steps", "1", "--out",
              str(disk / "out")])


def test_an_interrupted_generate_leaves_only_complete_samples(saved_pipeline, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the second sample is written: the first is complete, the second's .partial folder is gone, and
    the command ends in one line (exit 130)."""
    from mslddm.cli import main
    from mslddm.commands import generate

    written = []
    real = generate._write_sample

    def interrupt_second(folder, kind, result, j, *args):
        written.append(folder.name)
        if len(written) == 2:
            raise KeyboardInterrupt
        return real(folder, kind, result, j, *args)

    monkeypatch.setattr(generate, "_write_sample", interrupt_second)
    out = tmp_path / "out"
    code = main(["generate", "--pipeline", str(saved_pipeline), "--duration", "0.5", "--steps", "1", "--seed", "3",
                 "--num-samples", "2", "--out", str(out)])
    assert code == 130 and written == [".sample_000_seed3.partial", ".sample_001_seed4.partial"]
    assert sorted(p.name for p in out.iterdir()) == ["sample_000_seed3"]
    assert sorted(p.name for p in (out / "sample_000_seed3").iterdir()) == [
        "bass.wav", "drums.wav", "guitar.wav", "mix.wav", "piano.wav", "settings.json"]
    assert "Interrupted:" in capsys.readouterr().err


@pytest.mark.parametrize("text, sentence", [
    ('{"gain_applied": 0.5,', "settings.json is not a settings file of `mslddm generate` (Expecting"),
    ('[1, 2]', "settings.json is not a settings file of `mslddm generate`"),
    ('{"gain_applied": 0}', "records gain_applied 0; the stems cannot be divided by it"),
    ('{"gain_applied": "nan"}', "records gain_applied nan"),
])
def test_from_result_names_a_bad_settings_file(saved_pipeline, tmp_path, text, sentence):
    from mslddm.cli import main

    result = tmp_path / "sample_000_seed0"
    result.mkdir()
    (result / "settings.json").write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--pipeline", str(saved_pipeline), "--from-result", str(result), "--extend", "1",
              "--steps", "1", "--out", str(tmp_path / "out")])
    assert sentence in str(exit_.value.code) and str(result / "settings.json") in str(exit_.value.code)
