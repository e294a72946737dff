"""Loaders on fixtures the tests write: the stem-folder layout (any stem names), original Slakh2100 (flac stems
summed per inst_class, 44.1 kHz resampled), VAE clips, diffusion segments, and bad input."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from mslddm.audio import resample
from mslddm.data.datasets import (
    MultiSourceSegmentDataset,
    SourceClipDataset,
    is_silent,
    load_tracks,
)
from mslddm.data.tracks import index_stem_folders

SR = 22050


def tone(freq, seconds, sr=SR, amp=0.3, phase=0.0):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_stem_track(folder, stems, sr=SR, ext="wav"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, audio in stems.items():
        sf.write(folder / f"{name}.{ext}", audio, sr)


@pytest.fixture
def stem_dataset(tmp_path):
    root = tmp_path / "stems"
    write_stem_track(root / "train" / "Track00001", {s: tone(110 * (i + 1), 2.0) for i, s in
                                                    enumerate(["bass", "drums", "guitar", "piano"])})
    write_stem_track(root / "train" / "Track00002", {"bass": tone(55, 3.0), "piano": tone(440, 3.0)})  # 2 missing
    write_stem_track(root / "train" / "Track00003", {"bass": tone(55, 1.0), "drums": tone(99, 1.5)})  # lengths
    bad = root / "train" / "Track00004"
    bad.mkdir(parents=True)
    (bad / "bass.wav").write_bytes(b"RIFF not really a wav")
    (root / "train" / "Track00005").mkdir()  # empty folder: no stem file
    return root


def test_stem_folders_with_bad_input(stem_dataset, caplog):
    with caplog.at_level(logging.WARNING):
        tracks, summary = index_stem_folders(stem_dataset, "train")
    assert [t.name for t in tracks] == ["Track00001", "Track00002", "Track00003"]
    assert summary.missing_stems == {"drums": 1, "guitar": 2, "piano": 1}
    assert "unreadable" in summary.skipped["Track00004"] and "Track00004" in caplog.text
    assert summary.skipped["Track00005"] == "no stem file found"
    assert summary.length_mismatches == 1

    one, two, three = tracks
    audio = one.read()
    assert audio.shape == (4, 2 * SR) and audio.dtype == np.float32
    np.testing.assert_allclose(audio[2], tone(330, 2.0), atol=1e-4)  # 16-bit file
    assert not two.read_stem("drums").any() and two.read_stem("bass").any()  # missing stem = silence
    assert three.num_samples == int(1.5 * SR) and not three.read_stem("bass", SR, SR // 2).any()  # padded


def test_length_policies(stem_dataset):
    def track3(policy):
        tracks, summary = index_stem_folders(stem_dataset, "train", on_length_mismatch=policy)
        return next((t for t in tracks if t.name == "Track00003"), None), summary

    assert track3("trim")[0].num_samples == SR
    skipped, summary = track3("skip")
    assert skipped is None and "differ in length" in summary.skipped["Track00003"]
    with pytest.raises(ValueError, match="on_length_mismatch"):
        track3("stretch")


def test_any_stem_names_formats_and_rates(tmp_path):
    root = tmp_path / "custom"
    write_stem_track(root / "song", {"vocals": tone(220, 1.0, sr=44100)}, sr=44100, ext="flac")
    write_stem_track(root / "song", {"other": np.stack([tone(330, 1.0), tone(330, 1.0)], axis=1)}, ext="wav")
    tracks = load_tracks(root, None, stem_names=["vocals", "other"])
    (track,) = tracks
    audio = track.read()
    assert audio.shape == (2, SR)
    np.testing.assert_allclose(audio[0][1000:-1000], tone(220, 1.0)[1000:-1000], atol=2e-3)  # resampled
    np.testing.assert_allclose(audio[1], tone(330, 1.0), atol=1e-4)  # stereo -> mono


def test_windowed_resampled_reads_match_the_whole_file(tmp_path):
    rng = np.random.default_rng(0)
    noise = (0.2 * rng.standard_normal(44100 * 3)).astype(np.float32)
    write_stem_track(tmp_path / "t" / "a", {"x": noise}, sr=44100, ext="flac")
    (track,) = load_tracks(tmp_path / "t", None, stem_names=["x"])
    full = resample(sf.read(tmp_path / "t" / "a" / "x.flac", dtype="float32")[0], 44100, SR)
    for start in (0, 12345, 2 * SR):
        piece = track.read_stem("x", start, 8000)
        reference = np.pad(full, (0, 8000))[start:start + 8000]
        n = min(8000, len(full) - start) - 200  # away from the file's end
        np.testing.assert_allclose(piece[:n], reference[:n], atol=2e-3)


def test_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="No usable tracks"):
        load_tracks(tmp_path / "empty", "train")
    with pytest.raises(FileNotFoundError, match="holds"):
        load_tracks(tmp_path / "empty", "test")


# ---------------------------------------------------------------------------------------------------------------
# Slakh2100
# ---------------------------------------------------------------------------------------------------------------
SLAKH_META = """UUID: 0123
audio_dir: stems
midi_dir: MIDI
normalized: true
overall_gain: 0.5
stems:
  S00:
    audio_rendered: true
    inst_class: Guitar
    is_drum: false
    midi_program_name: Electric Guitar (clean)
    program_num: 27
  S01:
    audio_rendered: true
    inst_class: Bass
    is_drum: false
    program_num: 33
  S02:
    audio_rendered: true
    inst_class: Guitar
    is_drum: false
    program_num: 25
  S03:
    audio_rendered: true
    inst_class: Strings
    is_drum: false
    program_num: 48
  S04:
    audio_rendered: false
    inst_class: Piano
    is_drum: false
    program_num: 0
  S05:
    audio_rendered: true
    inst_class: Drums
    is_drum: true
    program_num: 0
"""


@pytest.fixture
def slakh_root(tmp_path):
    root = tmp_path / "slakh2100_flac_redux"
    track = root / "test" / "Track01877"
    (track / "stems").mkdir(parents=True)
    (track / "MIDI").mkdir()
    (track / "metadata.yaml").write_text(SLAKH_META)
    freqs = {"S00": 330.0, "S01": 55.0, "S02": 660.0, "S03": 880.0, "S05": 123.0}
    for stem_id, f in freqs.items():
        sf.write(track / "stems" / f"{stem_id}.flac", tone(f, 2.0, sr=44100, amp=0.2), 44100)
    mix = sum(tone(f, 2.0, sr=44100, amp=0.2) for f in freqs.values())
    sf.write(track / "mix.flac", mix / 2, 44100)
    return root


def test_slakh_stems_are_summed_per_class_and_resampled(slakh_root):
    (track,) = load_tracks(slakh_root, "test")  # layout detected
    assert track.stem_names == ["bass", "drums", "guitar", "piano"]
    assert [f.path.name for f in track.stems["guitar"]] == ["S00.flac", "S02.flac"]
    assert track.stems["piano"] == []  # audio_rendered: false -> silence
    audio = track.read()
    assert audio.shape == (4, 2 * SR)
    expected_guitar = tone(330, 2.0, amp=0.2) + tone(660, 2.0, amp=0.2)
    inner = slice(500, -500)
    np.testing.assert_allclose(audio[2][inner], expected_guitar[inner], atol=3e-3)
    np.testing.assert_allclose(audio[0][inner], tone(55, 2.0, amp=0.2)[inner], atol=3e-3)
    assert not audio[3].any()


def test_slakh_custom_stem_classes(slakh_root):
    (track,) = load_tracks(slakh_root, "test", stem_names=["strings", "guitar"], layout="slakh")
    assert [f.path.name for f in track.stems["strings"]] == ["S03.flac"]
    (track,) = load_tracks(slakh_root, "test", stem_names=["keys"], layout="slakh",
                           stem_classes={"keys": ("Piano", "Strings")})
    assert [f.path.name for f in track.stems["keys"]] == ["S03.flac"]


def test_slakh_missing_rendered_stem_skips_the_track(slakh_root, caplog):
    (slakh_root / "test" / "Track01877" / "stems" / "S01.flac").unlink()
    with pytest.raises(ValueError, match="S01.flac is listed as rendered but missing"):
        load_tracks(slakh_root, "test")


# ---------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------
def test_multisource_segments(stem_dataset):
    tracks = load_tracks(stem_dataset, "train")
    data = MultiSourceSegmentDataset(tracks, segment_length=8000, seed=3)
    assert len(data) == sum(t.num_samples for t in tracks) // 8000
    x = data[0]
    assert x.shape == (4, 8000) and x.dtype == torch.float32
    assert torch.equal(data[0], MultiSourceSegmentDataset(tracks, segment_length=8000, seed=3)[0])
    draws = {tuple(data.locate(i)) for i in range(len(data))}
    data.set_epoch(1)
    assert {tuple(data.locate(i)) for i in range(len(data))} != draws

    sequential = MultiSourceSegmentDataset(tracks, segment_length=SR, random_offsets=False)
    assert len(sequential) == 2 + 3 + 2
    whole = torch.cat([sequential[i] for i in range(2)], dim=-1)
    assert torch.equal(whole, torch.from_numpy(tracks[0].read()))
    long = MultiSourceSegmentDataset(tracks, segment_length=5 * SR)  # longer than every track: zero-padded
    assert long[0].shape == (4, 5 * SR)


def test_vae_clips_are_never_silent(tmp_path):
    root = tmp_path / "sparse"
    quiet = np.zeros(10 * SR, dtype=np.float32)
    burst = quiet.copy()
    burst[4 * SR:5 * SR] = tone(200, 1.0)
    write_stem_track(root / "a", {"bass": burst, "drums": quiet})
    tracks = load_tracks(root, None, stem_names=["bass", "drums"])
    clips = SourceClipDataset(tracks, clip_length=SR // 4, clips_per_epoch=20, seed=0)
    for i in range(len(clips)):
        clip = clips[i]
        assert clip.shape == (1, SR // 4) and not is_silent(clip.numpy())
    assert torch.equal(clips[5], SourceClipDataset(tracks, clip_length=SR // 4, clips_per_epoch=20)[5])

    silent_only = tmp_path / "silent"
    write_stem_track(silent_only / "a", {"bass": quiet})
    with pytest.raises(RuntimeError, match="non-silent"):
        SourceClipDataset(load_tracks(silent_only, None, stem_names=["bass"]), max_tries=5)[0]


def test_silence_rule_threshold():
    n = 22050
    assert is_silent(np.zeros(n))
    # ||x||_2 / n with a constant a: a / sqrt(n). The boundary sits at a = 1.5e-5 * sqrt(n).
    a = 1.5e-5 * np.sqrt(n)
    assert is_silent(np.full(n, 0.99 * a)) and not is_silent(np.full(n, 1.01 * a))


def test_unreadable_file_during_training_does_not_stop_the_run(stem_dataset, caplog):
    tracks = load_tracks(stem_dataset, "train")
    data = MultiSourceSegmentDataset(tracks, segment_length=4000, segments_per_epoch=30)
    (tracks[0].stems["bass"][0].path).write_bytes(b"broken after indexing")
    with caplog.at_level(logging.ERROR):
        items = [data[i] for i in range(len(data))]
    assert all(x.shape == (4, 4000) for x in items)
    assert data.bad == {0} and "Skipping item 0" in caplog.text
