"""The synthetic dataset generator (MMA + FluidSynth): layout, mix = sum of stems, stems sound where their MIDI
plays, determinism, resume, splits. A few ~4-s tracks rendered with the small TimGM6mb SoundFont."""

import io
import json
import shutil
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

from mslddm.data.grooves import GROOVE_FAMILIES, families_of_split
from mslddm.data.songs import STEMS, GeneratorOptions, iter_splits, mma_chart, plan_song
from mslddm.data.system import MissingDependencyError, check_generator_dependencies

SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"
HOURS = 3 * 5.5 / 3600  # three tracks of about 4 s (+ 2-s tail): one per split


def _options(seed=0):
    return GeneratorOptions(seed=seed, soundfonts=(SOUNDFONT,), track_seconds=(4.0, 4.0))


@pytest.fixture(scope="session")
def system_deps():
    try:
        check_generator_dependencies([SOUNDFONT])
    except MissingDependencyError as error:
        pytest.skip(f"system dependencies of make-dataset are missing: {error}")


@pytest.fixture(scope="session")
def synth_dataset(system_deps, tmp_path_factory):
    from mslddm.data.synth import make_dataset

    out = tmp_path_factory.mktemp("synth") / "a"
    report = make_dataset(out, HOURS, _options(), workers=1, progress=False)
    assert not report.failed, report.failed
    return out


def _tracks(root):
    return sorted(p.parent for p in Path(root).glob("*/Track*/metadata.json"))


def _read_int16(path):
    data, sr = sf.read(path, dtype="int16")
    return data, sr


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
def test_layout_rate_and_lengths(synth_dataset):
    tracks = _tracks(synth_dataset)
    assert {t.parent.name for t in tracks} == {"train", "validation", "test"}
    header = json.loads((synth_dataset / "dataset.json").read_text())
    assert header["options"]["seed"] == 0 and header["stems"] == list(STEMS)
    for track in tracks:
        meta = json.loads((track / "metadata.json").read_text())
        assert meta["name"] == track.name and meta["split"] == track.parent.name
        assert meta["num_samples"] == round(meta["duration_seconds"] * 22050)
        for name in (*STEMS, "mix"):
            info = sf.info(track / f"{name}.wav")
            assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
            assert info.frames == meta["num_samples"]
        assert not list(track.glob(".*")), "temporary files left behind"


def test_mix_is_the_sum_of_the_stems(synth_dataset):
    for track in _tracks(synth_dataset):
        stems = [_read_int16(track / f"{s}.wav")[0].astype(np.int32) for s in STEMS]
        mix = _read_int16(track / "mix.wav")[0].astype(np.int32)
        np.testing.assert_array_equal(mix, sum(stems))
        assert np.abs(mix).max() > 1000, "the mix is (nearly) silent"
        # Float reads agree too: what training code sees.
        floats = [sf.read(track / f"{s}.wav", dtype="float32")[0] for s in STEMS]
        np.testing.assert_array_equal(sf.read(track / "mix.wav", dtype="float32")[0], np.sum(floats, axis=0))


def _first_onsets(midi_path):
    """Earliest note-on per stem class, read with mido alone (channel 10 drums, GM families by program)."""
    family = {0: "piano", 3: "guitar", 4: "bass"}
    program, first, now = {}, {}, 0.0
    for msg in mido.MidiFile(midi_path):
        now += msg.time
        if msg.type == "program_change":
            program[msg.channel] = msg.program
        elif msg.type == "note_on" and msg.velocity > 0:
            stem = "drums" if msg.channel == 9 else family.get(program.get(msg.channel, -1) // 8)
            if stem:
                first.setdefault(stem, now)
    return first


def test_each_stem_sounds_where_its_midi_plays(synth_dataset):
    checked = 0
    for track in _tracks(synth_dataset):
        meta = json.loads((track / "metadata.json").read_text())
        onsets = _first_onsets(track / "song.mid")
        for stem in STEMS:
            audio, sr = sf.read(track / f"{stem}.wav", dtype="float32")
            if stem not in onsets:
                assert meta["stems"][stem]["silent"] and not audio.any()
                continue
            t0 = int(onsets[stem] * sr)
            assert meta["stems"][stem]["num_notes"] > 0
            rms_playing = np.sqrt(np.mean(audio[t0:t0 + sr // 2] ** 2))
            assert rms_playing > 1e-3, f"{track.name}/{stem} is silent where its first note plays"
            before = audio[: max(t0 - sr // 20, 0)]
            if before.size:
                assert np.abs(before).max() < 1e-3, f"{track.name}/{stem} sounds before its first note"
            checked += 1
    assert checked >= 8


def test_same_seed_same_bytes_in_parallel_and_resume(synth_dataset, tmp_path):
    from mslddm.data.synth import make_dataset

    reference = _files(synth_dataset)
    again = tmp_path / "b"
    make_dataset(again, HOURS, _options(), workers=2, progress=False)
    assert _files(again) == reference

    # A killed run: one track lost its metadata (unfinished) and holds a half-written temporary file.
    num_tracks = len(_tracks(again))
    victim = _tracks(again)[-1]
    (victim / "metadata.json").unlink()
    (victim / "piano.wav").write_bytes(b"half")
    (victim / ".bass.partial.wav").write_bytes(b"junk")
    report = make_dataset(again, HOURS, _options(), workers=1, progress=False)
    assert report.made == [victim.name] and len(report.skipped) == num_tracks - 1
    assert not (victim / ".bass.partial.wav").exists()  # the redo writes through the same temporary name
    assert _files(again) == reference

    other = tmp_path / "c"
    make_dataset(other, HOURS, _options(seed=1), workers=1, progress=False)
    assert _files(other) != reference
    with pytest.raises(ValueError, match="other options"):
        make_dataset(other, HOURS, _options(seed=0), workers=1, progress=False)


def test_cli_makes_a_dataset_and_reports_throughput(system_deps, tmp_path, capsys):
    from mslddm.cli import main

    out = tmp_path / "cli"
    code = main(["make-dataset", str(out), "--hours", str(2 / 3600), "--track-seconds", "2", "2",
                 "--soundfont", SOUNDFONT, "--workers", "1", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "stem-seconds per CPU-second" in printed
    assert (out / "test" / "Track00001" / "mix.wav").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Parts that need no system dependency
# ---------------------------------------------------------------------------------------------------------------
def test_split_rule():
    gen = iter_splits()
    splits = [next(gen) for _ in range(1000)]
    assert splits[:2] == ["test", "validation"]
    share = {s: splits.count(s) / 1000 for s in ("train", "validation", "test")}
    assert abs(share["train"] - 0.8) < 0.01 and abs(share["test"] - 0.1) < 0.01
    grooves = {s: {g.lower() for f in families_of_split(s) for g in f.grooves} for s in share}
    assert not grooves["train"] & grooves["test"] and not grooves["train"] & grooves["validation"]
    assert sum(len(f.grooves) for f in GROOVE_FAMILIES) == 153


def test_plans_are_deterministic_and_follow_the_split():
    a, b = plan_song(7, "test", _options()), plan_song(7, "test", _options())
    assert a == b and mma_chart(a) == mma_chart(b)
    assert plan_song(7, "test", _options(seed=1)) != a
    assert a.family in {f.name for f in families_of_split("test")}
    chart = mma_chart(a)
    assert f"Groove {a.grooves['A']}" in chart and f"RndSeed {a.mma_seed}" in chart
    assert len(a.chords) == a.num_bars == sum(n for _, n in a.sections)


def test_stem_split_of_a_handmade_midi():
    from mslddm.data.render import split_midi_by_stem

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    events = [
        mido.Message("program_change", channel=0, program=33),  # bass
        mido.Message("program_change", channel=1, program=48),  # strings: dropped
        mido.Message("note_on", channel=0, note=40, velocity=90),
        mido.Message("note_on", channel=1, note=60, velocity=90),
        mido.Message("note_on", channel=9, note=36, velocity=90),
        mido.Message("note_off", channel=0, note=40, time=480),
        mido.Message("note_off", channel=1, note=60),
        mido.Message("note_off", channel=9, note=36),
        mido.Message("program_change", channel=0, program=25),  # the channel becomes a guitar
        mido.Message("note_on", channel=0, note=52, velocity=90),
        mido.Message("note_off", channel=0, note=52, time=480),
    ]
    track.extend(events)
    buf = io.BytesIO()
    mid.save(file=buf)
    parts = split_midi_by_stem(buf.getvalue())
    assert set(parts) == {"bass", "drums", "guitar"}
    assert [n[2] for n in parts["bass"].notes] == [40] and [n[2] for n in parts["guitar"].notes] == [52]
    assert parts["guitar"].notes[0][0] == pytest.approx(0.5)  # 480 ticks at 120 bpm


def test_missing_program_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MSLDDM_MMA", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError, match="install_system_deps.sh"):
        check_generator_dependencies()


def test_missing_soundfont_is_a_clear_error(tmp_path):
    from mslddm.data.system import check_soundfonts

    with pytest.raises(MissingDependencyError, match="install_system_deps.sh"):
        check_soundfonts([tmp_path / "none.sf2"])
