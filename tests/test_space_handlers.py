"""The Space's handlers and render files, without a server: tiny pipeline, 2 steps, 1 s of audio."""

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `space/` sits next to the package

import gradio as gr
from conftest import STEMS, tiny_pipeline

from mslddm.audio import load_audio, read_audio
from space.handlers import Limits, Studio, parse_variation, variation_label
from space.render import MIX, Render, linear_gains, read_render, write_render
from space.ui import api_names, build_demo, find_examples

SR = 22050
PCM16 = 2.0 / 32768  # two quantisation steps of 16-bit PCM


def tone(path, freq=110.0, seconds=2.0, sr=44100, channels=2, amplitude=0.3):
    t = np.arange(int(seconds * sr)) / sr
    audio = np.stack([amplitude * np.sin(2 * np.pi * freq * t)] * channels, axis=1)
    sf.write(path, audio, sr)
    return str(path)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    studio = Studio(tiny_pipeline(), "tiny", Limits(max_duration_s=4, max_upload_s=3, max_steps=10),
                    workdir=str(tmp_path_factory.mktemp("space")))
    yield studio
    studio.close()


def run(studio, uploads=None, generate=None, duration=1.0, steps=2, sampler="dpmpp_2m", churn=0.0, seed="0",
        variations=1, mixer=None, **kwargs):
    generate = {n: True for n in STEMS} if generate is None else generate
    return studio.generate(uploads or {}, generate, duration, steps, sampler, churn, seed, variations,
                           mixer=mixer, **kwargs)


def wavs(zip_path, folder, channels=False):
    """``(settings, {name: audio})`` of a variation's folder: the first channel, or ``(channels, samples)``."""
    with zipfile.ZipFile(zip_path) as zf:
        settings = json.loads(zf.read("settings.json"))
        return settings, {Path(n).stem: read_audio(zf.read(n))[0][slice(None) if channels else 0]
                          for n in zf.namelist() if n.startswith(folder + "/")}


def member_bytes(zip_path, folder):
    with zipfile.ZipFile(zip_path) as zf:
        return {Path(n).stem: zf.read(n) for n in zf.namelist() if n.startswith(folder + "/")}


def test_partial_generation_gives_the_upload_back_untouched_in_its_format(studio, tmp_path):
    bass = tone(tmp_path / "bass.wav")  # stereo, 44.1 kHz, 2 s: the model hears it mono at 22.05 kHz
    steps_seen = []
    out = run(studio, {"bass": bass}, seed="11", variations=2,
              progress=lambda value, desc=None, unit=None: steps_seen.append(value))
    assert set(out.players) == set(STEMS) | {MIX} and all(p.is_file() for p in out.players.values())
    assert out.spectrogram.is_file() and out.variation_labels == ["1 (seed 11)", "2 (seed 12)"]
    assert "Seeds: 11, 12" in out.info and "44100 Hz stereo (the uploads' format)" in out.info
    assert [v for v in steps_seen if isinstance(v, tuple)] == [(1, 2), (2, 2)]  # the progress bar follows steps

    settings, files = wavs(out.zip_path, "variation_1_seed11", channels=True)
    assert settings["given"] == {"bass": "bass.wav"} and settings["generated"] == STEMS[1:]
    assert settings["seeds"] == [11, 12] and settings["model_evaluations"] == 2
    # The upload's length (no duration given), rate and channels; the model's rate is an internal detail
    assert settings["sample_rate"] == 44100 and settings["channels"] == 2 and settings["model_sample_rate"] == SR
    assert settings["duration_s"] == 2.0 and settings["gain_applied"] == 1.0
    assert set(files) == set(STEMS) | {MIX} and all(a.shape == (2, 2 * 44100) for a in files.values())
    upload, _ = sf.read(bass, dtype="int16")
    with zipfile.ZipFile(out.zip_path) as zf:  # the user's stem: sample for sample the decoded upload
        given, rate = sf.read(io.BytesIO(zf.read("variation_1_seed11/bass.wav")), dtype="int16")
    assert rate == 44100 and np.array_equal(given, upload)
    for name in STEMS[1:]:  # generated stems: resampled, the same on both channels
        np.testing.assert_array_equal(files[name][0], files[name][1])
    mix_gain = settings["mix_gain_applied"]
    np.testing.assert_allclose(files[MIX], mix_gain * sum(files[n] for n in STEMS), atol=4 * PCM16)


def test_an_explicit_duration_cuts_the_upload_and_the_note_survives_a_remix(studio, tmp_path):
    bass = tone(tmp_path / "bass.wav", seconds=2.0, sr=48000, channels=1)
    out = run(studio, {"bass": bass}, duration=1.0, whole_song=False)
    assert "cut to the first 1 s of its 2.0 s" in out.info
    settings, files = wavs(out.zip_path, "variation_1_seed0", channels=True)
    assert settings["sample_rate"] == 48000 and settings["channels"] == 1
    assert all(a.shape == (1, 48000) for a in files.values())
    again = studio.remix(str(out.zip_path), None, {"drums": (-6.0, False)})
    assert "cut to the first 1 s of its 2.0 s" in again.info  # issue 26 item 7: the note stays
    # Without an upload, the duration is the length even with "as long as the uploads" ticked
    alone = wavs(run(studio, duration=1.5, whole_song=True).zip_path, "variation_1_seed0")[0]
    assert alone["duration_s"] == 1.5 and alone["sample_rate"] == SR and alone["channels"] == 1


def test_several_uploads_give_the_highest_rate_and_most_channels(studio, tmp_path):
    bass = tone(tmp_path / "bass.wav", seconds=1.0, sr=44100, channels=2)
    drums = tone(tmp_path / "drums.flac", seconds=1.0, sr=48000, channels=1, freq=220.0)
    out = run(studio, {"bass": bass, "drums": drums})
    settings, files = wavs(out.zip_path, "variation_1_seed0", channels=True)
    assert settings["sample_rate"] == 48000 and settings["channels"] == 2
    decoded, _ = sf.read(drums, dtype="float32")
    np.testing.assert_array_equal(files["drums"][0], decoded)  # at the format's rate: untouched, on both channels
    np.testing.assert_array_equal(files["drums"][1], decoded)
    bass_48k = load_audio(bass, 48000)  # the other one resampled (its channels are equal)
    np.testing.assert_allclose(files["bass"][0], bass_48k[:48000], atol=2 * PCM16)


def test_seed_reproduces_a_variation_and_empty_seed_is_random(studio):
    pair = read_render(run(studio, seed="5", variations=2).zip_path)
    alone = read_render(run(studio, seed="6").zip_path)
    np.testing.assert_allclose(pair.stems[1], alone.stems[0], atol=1e-3)  # per-sample seeds, as in EDM
    seeds = {read_render(run(studio, seed="").zip_path).seeds[0] for _ in range(2)}
    assert len(seeds) == 2


def test_remix_applies_gains_and_mutes_without_sampling_and_keeps_the_stem_files(studio):
    first = run(studio, seed="3")
    before = read_render(first.zip_path)
    mixer = {"drums": (6.0, False), "piano": (0.0, True)}
    out = studio.remix(str(first.zip_path), first.variation_labels[0], mixer)
    after = read_render(out.zip_path)
    np.testing.assert_allclose(after.stems, before.stems, atol=1e-3)  # the same stems: nothing re-generated
    settings, files = wavs(out.zip_path, "variation_1_seed3")
    assert settings["mixer"]["drums"] == {"gain_db": 6.0, "mute": False} and settings["mixer"]["piano"]["mute"]
    gains = linear_gains(mixer, STEMS)
    assert gains[3] == 0 and np.isclose(gains[1], 10 ** 0.3)
    np.testing.assert_allclose(files[MIX], settings["mix_gain_applied"] / settings["gain_applied"]
                               * sum(g * files[n] for g, n in zip(gains, STEMS)), atol=6 * PCM16)
    # Issue 26 item 9: a stem downloaded twice is the same file, however loud the re-mix
    loud = studio.remix(str(out.zip_path), None, {"drums": (24.0, False)})
    old, new = member_bytes(first.zip_path, "variation_1_seed3"), member_bytes(loud.zip_path, "variation_1_seed3")
    assert all(old[n] == new[n] for n in STEMS) and old[MIX] != new[MIX]


def test_loud_stems_share_one_fixed_gain_and_the_mix_its_own(tmp_path):
    stems = np.full((1, 2, 1, 100), 0.6, dtype=np.float32)
    files = write_render(Render(stems, ["a", "b"], SR, [0]), {"a": (6.0, False)}, tmp_path / "1")
    peak_mix = 0.6 * (10 ** 0.3 + 1)
    assert files.settings["gain_applied"] == 1.0  # the stems fit: written as they are
    assert np.isclose(files.settings["mix_gain_applied"], 0.99 / peak_mix)
    mix = read_audio(files.variations[0][MIX])[0][0]
    a = read_audio(files.variations[0]["a"])[0][0]
    assert np.abs(mix).max() < 1 and np.isclose(a[0], 0.6, atol=PCM16)
    clipping = write_render(Render(stems * 2, ["a", "b"], SR, [0]), {}, tmp_path / "2")
    assert np.isclose(clipping.settings["gain_applied"], 0.99 / 1.2)  # one would clip: one gain for all stems


def test_show_switches_variation(studio):
    out = run(studio, seed="20", variations=2)
    second = studio.show(str(out.zip_path), out.variation_labels[1])
    assert second.variation == 1 and second.players[MIX].name == "mix.wav"
    _, files = wavs(out.zip_path, "variation_2_seed21")
    np.testing.assert_array_equal(read_audio(second.players["drums"])[0][0], files["drums"])


@pytest.mark.parametrize("case, message", [
    ("all_given", "nothing is left to generate"),
    ("nothing", "Nothing to generate"),
    ("unreadable", "could not be read as audio"),
    ("empty", "empty.wav"),
    ("silent", "is silent"),
    ("too_long", "stems may be at most 3 s"),
    ("duration", "Duration must be between 0 and 4"),
    ("steps", "Steps must be between 1 and 10"),
    ("no_steps", r"Steps must be between 1 and 10 \(a whole number\), got 0"),
    ("churn_range", "Churn must be between 0 and 100, got -1"),
    ("churn", "takes no churn"),
    ("seed", "Seed must be a whole number"),
    ("variations", "Variations must be a whole number"),
])
def test_bad_inputs_become_sentences(studio, tmp_path, case, message):
    good = tone(tmp_path / "good.wav")
    (tmp_path / "bad.wav").write_text("not audio")
    (tmp_path / "empty.wav").write_bytes(b"")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SR, dtype=np.float32), SR)
    kwargs = {
        "all_given": {"uploads": {n: good for n in STEMS}},
        "nothing": {"generate": {n: False for n in STEMS}},
        "unreadable": {"uploads": {"bass": str(tmp_path / "bad.wav")}},
        "empty": {"uploads": {"bass": str(tmp_path / "empty.wav")}},
        "silent": {"uploads": {"bass": str(silent)}},
        "too_long": {"uploads": {"bass": tone(tmp_path / "long.wav", seconds=3.5)}, "whole_song": False},
        "duration": {"duration": 5.0},
        "steps": {"steps": 11},
        "no_steps": {"steps": 0},
        "churn_range": {"churn": -1.0, "sampler": "euler"},
        "churn": {"churn": 5.0},
        "seed": {"seed": "abc"},
        "variations": {"variations": 9},
    }[case]
    with pytest.raises(gr.Error, match=message):
        run(studio, **kwargs)


def test_remix_before_generating_and_of_a_foreign_file(studio, tmp_path):
    with pytest.raises(gr.Error, match="press Generate first"):
        studio.remix(None, None, {})
    (tmp_path / "x.zip").write_bytes(b"PK not really")
    with pytest.raises(gr.Error, match="could not be read back"):
        studio.remix(str(tmp_path / "x.zip"), None, {})


def test_uploads_are_checked_when_they_arrive(studio, tmp_path):
    """Issue 26 item 5: a text file renamed .wav or an empty file is refused at upload, naming the file; the same
    file in two slots is a warning."""
    (tmp_path / "notes.wav").write_text("not audio")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(gr.Error, match=r"The bass stem \(notes.wav\) could not be read as audio"):
        studio.check_upload("bass", str(tmp_path / "notes.wav"))
    with pytest.raises(gr.Error, match=r"empty.wav"):
        studio.check_upload("drums", str(tmp_path / "empty.wav"))
    take = tone(tmp_path / "take.wav")
    assert studio.check_upload("guitar", take, {"guitar": take, "bass": None}) is None
    copy = tmp_path / "copy" / "take.wav"
    copy.parent.mkdir()
    copy.write_bytes(Path(take).read_bytes())
    warning = studio.check_upload("piano", str(copy), {"guitar": take, "piano": str(copy)})
    assert "the piano upload (take.wav) is the same file as the guitar upload" in warning
    out = run(studio, {"guitar": take, "piano": str(copy)})
    assert "the piano upload is the same file as the guitar upload" in out.info


def test_closing_the_page_while_files_are_written(tmp_path):
    """Issue 26 item 4: the page's unload removed the folder under the event still writing into it
    (FileNotFoundError: spectrogram.png)."""
    studio = Studio(tiny_pipeline(), "tiny", workdir=str(tmp_path))

    def close_the_tab(value, desc=None, **_):
        if desc == "Writing the files":
            studio.end_session("browser-0")

    out = run(studio, session="browser-0", progress=close_the_tab)
    assert out.spectrogram.is_file() and out.zip_path.is_file()
    studio.close()


def test_temporary_files_are_removed(tmp_path):
    import os

    studio = Studio(tiny_pipeline(), "tiny", workdir=str(tmp_path))
    out = run(studio, session="browser-1")
    assert out.zip_path.is_file() and str(out.zip_path).startswith(str(studio.workdir / "browser-1"))
    os.utime(out.zip_path.parent, (0, 0))  # Gradio has long copied the outputs
    studio.end_session("browser-1")
    assert not (studio.workdir / "browser-1").exists()
    run(studio, session="browser-2")
    studio.close()
    assert not studio.workdir.exists() and tmp_path.exists()  # only the studio's own folder goes


def test_helpers(tmp_path):
    assert parse_variation(variation_label(1, 7), 2) == 1 and parse_variation(None, 2) == 0
    assert parse_variation("9 (seed 1)", 2) == 0
    assert api_names(["bass", "lead vocals", "class"]) == ["bass", "stem_1", "stem_2"]
    assert find_examples(str(tmp_path / "missing"), STEMS) == []
    (tmp_path / "ex1").mkdir()
    tone(tmp_path / "ex1" / "bass.wav")
    (tmp_path / "ex1" / "example.json").write_text(json.dumps({"label": "a bass", "duration": 2}))
    (tmp_path / "empty").mkdir()
    examples = find_examples(str(tmp_path), STEMS)
    assert len(examples) == 1 and examples[0]["label"] == "a bass" and examples[0]["duration"] == 2.0
    assert examples[0]["uploads"]["bass"].endswith("bass.wav") and examples[0]["uploads"]["drums"] is None


def test_demo_exposes_generate_and_extend(studio, tmp_path):
    (tmp_path / "ex").mkdir()
    tone(tmp_path / "ex" / "drums.wav")
    demo = build_demo(studio, examples_dir=str(tmp_path))
    info = demo.get_api_info()
    assert list(info["named_endpoints"]) == ["/generate", "/extend"]
    params = [p["parameter_name"] for p in info["named_endpoints"]["/generate"]["parameters"]]
    assert params[:8] == STEMS + [f"generate_{n}" for n in STEMS]
    assert params[8:15] == ["duration", "steps", "sampler", "churn", "seed", "variations", "whole_song"]
    params = [p["parameter_name"] for p in info["named_endpoints"]["/extend"]["parameters"]]
    assert params[:6] == ["zip_path", "selected", "extend_s", "steps", "sampler", "churn"]


@pytest.mark.parametrize("sampler, churn, evaluations", [("euler", 20.0, 2), ("heun", 0.0, 3), ("dpmpp_2m", 0.0, 2)])
def test_every_sampler_and_its_model_evaluations(studio, sampler, churn, evaluations):
    seen = []
    out = run(studio, sampler=sampler, churn=churn, progress=lambda value, **_: seen.append(value))
    settings = json.loads(zipfile.ZipFile(out.zip_path).read("settings.json"))
    assert settings["sampler"] == sampler and settings["model_evaluations"] == evaluations
    assert [v for v in seen if isinstance(v, tuple)][-1] == (evaluations, evaluations)


def test_make_examples_from_a_test_split(tmp_path):
    from space.make_examples import main as make_examples

    for k in range(2):
        track = tmp_path / "test" / f"Track{k:05d}"
        track.mkdir(parents=True)
        for i, name in enumerate(STEMS):
            tone(track / f"{name}.wav", freq=55.0 * (i + 1), seconds=3.0, sr=SR, channels=1)
    assert make_examples(["--split", str(tmp_path / "test"), "--out", str(tmp_path / "ex"), "--seconds", "1"]) == 0
    examples = find_examples(str(tmp_path / "ex"), STEMS)
    assert [sorted(n for n, p in ex["uploads"].items() if p) for ex in examples] == [
        ["bass"], ["drums"], ["bass", "drums"], ["piano"]]
    assert all(ex["duration"] == 1.0 and ex["seed"] == 0 for ex in examples)


@pytest.fixture(scope="module")
def song_studio(tmp_path_factory):
    """Windows of 48 frames (0.7 s), so that a few seconds already take several."""
    pipe = tiny_pipeline()
    pipe.unet.register_to_config(window_frames=48)
    studio = Studio(pipe, "tiny", Limits(max_duration_s=1, max_upload_s=4, max_song_s=4, max_steps=10),
                    workdir=str(tmp_path_factory.mktemp("songs")))
    yield studio
    studio.close()


def test_whole_song_accompanies_the_whole_upload_in_windows(song_studio, tmp_path):
    take = tone(tmp_path / "guitar.wav", freq=196.0, seconds=3.0, sr=SR, channels=1)
    out = run(song_studio, uploads={"guitar": take}, duration=1.0, whole_song=True)
    settings = json.loads(zipfile.ZipFile(out.zip_path).read("settings.json"))
    assert settings["windows"] > 3 and settings["duration_s"] == pytest.approx(3.0)
    np.testing.assert_array_equal(load_audio(out.players["guitar"], SR), load_audio(take, SR))  # untouched
    for name in ("bass", "drums", "piano"):
        assert len(load_audio(out.players[name], SR)) == 3 * SR
    assert "windows" in out.info and "3 s" in out.info


def test_whole_song_needs_an_upload_within_the_limit(song_studio, tmp_path):
    long_take = tone(tmp_path / "long.wav", seconds=5.0, sr=SR, channels=1)
    with pytest.raises(gr.Error, match="Trim it"):
        run(song_studio, uploads={"bass": long_take}, whole_song=True)


def test_extend_continues_the_shown_variation_with_its_seed(song_studio):
    first = run(song_studio, generate={"bass": True, "drums": True, "guitar": True, "piano": False},
                duration=1.0, seed="5", variations=2)
    out = song_studio.extend(str(first.zip_path), variation_label(1, 6), 1.5, 2, "dpmpp_2m", 0.0)
    settings = json.loads(zipfile.ZipFile(out.zip_path).read("settings.json"))
    assert settings["seeds"] == [6] and settings["extended_from_s"] == pytest.approx(1.0)
    assert settings["duration_s"] == pytest.approx(2.5) and settings["windows"] > 1
    assert settings["silent"] == ["piano"] and settings["generated"] == ["bass", "drums", "guitar"]
    before = read_render(first.zip_path).stems[1, :, 0]
    after = read_render(out.zip_path).stems[0, :, 0]
    assert after.shape == (4, round(2.5 * SR))
    np.testing.assert_allclose(after[:, :SR - 512], before[:, :SR - 512], atol=2 * PCM16 / settings["gain_applied"])
    assert np.all(after[3] == 0) and np.abs(after[:3, SR:]).max() > 0  # the silent stem stays silent
    assert "extended" in out.info


def test_extend_refuses_what_it_cannot_do(song_studio):
    with pytest.raises(gr.Error, match=r"press Generate first \(Extend continues a result\)"):
        song_studio.extend(None, None, 1.0, 2, "dpmpp_2m", 0.0)
    first = run(song_studio, duration=1.0)
    with pytest.raises(gr.Error, match="at most 4 s"):
        song_studio.extend(str(first.zip_path), None, 3.5, 2, "dpmpp_2m", 0.0)
    with pytest.raises(gr.Error, match="positive"):
        song_studio.extend(str(first.zip_path), None, 0, 2, "dpmpp_2m", 0.0)


def test_overlapping_calls_on_one_pipeline_give_the_sequential_results(song_studio):
    """No lock: sampling keeps no state in the pipeline. Two generations of two windows each, with different
    samplers, advance in lockstep (a barrier after every model evaluation) and equal the same calls made one by one."""
    import threading

    calls = [{"sampler": "euler", "churn": 20.0, "steps": 3, "seed": "1"},
             {"sampler": "dpmpp_2m", "churn": 0.0, "steps": 3, "seed": "2"}]  # 3 evaluations per window each
    sequential = [read_render(run(song_studio, duration=1.0, **c).zip_path) for c in calls]
    assert all(r.settings["windows"] == 2 for r in sequential)
    barrier, results, errors = threading.Barrier(2, timeout=60), [None, None], []

    def lockstep(value, desc=None, **_):
        if desc == "Sampling":
            barrier.wait()

    def call(i):
        try:
            results[i] = read_render(run(song_studio, duration=1.0, progress=lockstep, **calls[i]).zip_path)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for alone, together in zip(sequential, results):
        assert together.settings["sampler"] == alone.settings["sampler"]
        np.testing.assert_array_equal(together.stems, alone.stems)


def test_extend_keeps_a_stereo_take_sample_for_sample(song_studio, tmp_path):
    take = tone(tmp_path / "guitar.wav", freq=196.0, seconds=1.0, sr=44100, channels=2)
    first = run(song_studio, uploads={"guitar": take}, seed="3")
    out = song_studio.extend(str(first.zip_path), None, 0.5, 2, "dpmpp_2m", 0.0)
    settings, files = wavs(out.zip_path, "variation_1_seed3", channels=True)
    assert settings["sample_rate"] == 44100 and settings["channels"] == 2 and settings["duration_s"] == 1.5
    upload, _ = sf.read(take, dtype="float32")
    fade = round(512 * 44100 / SR)  # the continuation's crossfade, at the result's rate
    np.testing.assert_array_equal(files["guitar"][:, :44100 - fade], upload.T[:, :44100 - fade])
    assert np.abs(files["guitar"][:, 44100:]).max() > 0


def test_normalise_mix_sets_the_mix_to_minus_14_lufs_and_leaves_the_stems(studio, tmp_path):
    take = tone(tmp_path / "bass.wav", seconds=2.0, amplitude=0.05)
    first = run(studio, {"bass": take})
    out = studio.remix(str(first.zip_path), None, {"bass": (24.0, False)}, normalise=True)
    settings, files = wavs(out.zip_path, "variation_1_seed0", channels=True)
    assert settings["normalise_mix"] and settings["mix_loudness_lufs"] == pytest.approx(-14.0, abs=0.2)
    assert "normalised to -14 LUFS" in out.info
    from mslddm.loudness import integrated_loudness_lufs

    assert integrated_loudness_lufs(files[MIX], 44100) == pytest.approx(-14.0, abs=0.2)
    old, new = member_bytes(first.zip_path, "variation_1_seed0"), member_bytes(out.zip_path, "variation_1_seed0")
    assert all(old[n] == new[n] for n in STEMS)  # the stems' files unchanged


def click_track(path, bpm=140.0, seconds=6.0, sr=44100):
    t = np.arange(int(seconds * sr)) / sr
    hits = 0.5 * np.exp(-(t % (60 / bpm)) * 40) * np.sin(2 * np.pi * 80 * t)
    sf.write(path, np.stack([hits, hits], 1), sr)
    return str(path)


def test_the_drums_tempo_is_in_the_summary_settings_and_file_names(studio, tmp_path):
    from mslddm.evaluation.beats import _madmom

    try:
        _madmom()
    except ImportError as error:
        pytest.skip(str(error))
    out = run(Studio(studio.pipe, "tiny", Limits(max_upload_s=10), workdir=str(tmp_path)),
              {"drums": click_track(tmp_path / "drums.wav")})
    settings, _ = wavs(out.zip_path, "variation_1_seed0")
    assert settings["tempo_of"] == "drums" and settings["tempo_bpm"][0] == pytest.approx(140, abs=2)
    bpm = round(settings["tempo_bpm"][0])
    assert settings["files"]["stems"]["drums"] == f"drums_{bpm}bpm.wav" and "Tempo (drums): 14" in out.info
    with zipfile.ZipFile(out.zip_path) as zf:
        assert f"variation_1_seed0/bass_{bpm}bpm.wav" in zf.namelist()
    again = Studio(studio.pipe, "tiny", workdir=str(tmp_path)).remix(str(out.zip_path), None, {"bass": (-3.0, False)})
    assert wavs(again.zip_path, "variation_1_seed0")[0]["files"]["stems"]["drums"] == f"drums_{bpm}bpm.wav"
