"""`mslddm augment-dataset`: augmented copies of the training songs (each stem through its own seeded effect
chain, at its own level), the originals and the other splits linked unchanged, resumable, bad arguments named."""

import json

import numpy as np
import pytest
import soundfile as sf
from eval_fixtures import write_dataset

from mslddm.audio import rms_db
from mslddm.cli import main

pytest.importorskip("pedalboard")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("songs")
    write_dataset(root, num_tracks=2, seconds=1.0, split="train")
    write_dataset(root, num_tracks=1, seconds=1.0, split="test")
    return root


def test_copies_change_the_sound_not_the_level_and_link_the_rest(data, tmp_path, capsys):
    out = tmp_path / "aug"
    assert main(["augment-dataset", str(data), str(out), "--copies", "2", "--seed", "3"]) == 0
    assert "4 augmented copies made" in capsys.readouterr().out
    names = sorted(p.name for p in (out / "train").iterdir())
    assert names == ["Track00001", "Track00001-aug0", "Track00001-aug1", "Track00002", "Track00002-aug0",
                     "Track00002-aug1"]
    assert (out / "train" / "Track00001").is_symlink() and (out / "test").is_symlink()
    copy = out / "train" / "Track00001-aug0"
    assert not (copy / "mix.wav").exists() and (copy / "metadata.json").read_bytes() == (
        data / "train" / "Track00001" / "metadata.json").read_bytes()
    for stem in ("bass", "drums", "guitar", "piano"):
        real, _ = sf.read(data / "train" / "Track00001" / f"{stem}.wav", dtype="float32")
        made, _ = sf.read(copy / f"{stem}.wav", dtype="float32")
        other, _ = sf.read(out / "train" / "Track00001-aug1" / f"{stem}.wav", dtype="float32")
        assert made.shape == real.shape and np.isfinite(made).all()
        assert rms_db(made) == pytest.approx(rms_db(real), abs=0.1)  # the chain colours, the level stays
        assert np.abs(made - real).max() > 1e-3 and np.abs(made - other).max() > 1e-3  # each copy its own chain
    assert json.loads((out / "augment.json").read_text())["copies"] == 2

    before = (copy / "bass.wav").stat().st_mtime_ns  # a second run keeps what is there
    assert main(["augment-dataset", str(data), str(out), "--copies", "2", "--seed", "3"]) == 0
    assert "0 augmented copies made, 4 already there" in capsys.readouterr().out
    assert (copy / "bass.wav").stat().st_mtime_ns == before


def test_gain_moves_each_stem_within_its_bound(data, tmp_path):
    out = tmp_path / "aug"
    assert main(["augment-dataset", str(data), str(out), "--gain-db", "6", "--no-originals"]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["Track00001-aug0", "Track00002-aug0"]
    moved = []
    for stem in ("bass", "drums", "guitar", "piano"):
        real, _ = sf.read(data / "train" / "Track00002" / f"{stem}.wav", dtype="float32")
        made, _ = sf.read(out / "train" / "Track00002-aug0" / f"{stem}.wav", dtype="float32")
        moved.append(rms_db(made) - rms_db(real))
    assert all(abs(m) <= 6.1 for m in moved) and max(abs(m) for m in moved) > 0.5


@pytest.mark.parametrize("flags, message", [
    (["--copies", "0"], "--copies must be at least 1"),
    (["--gain-db", "30"], "--gain-db must be from 0 to 24"),
])
def test_bad_arguments_are_named(data, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        main(["augment-dataset", str(data), str(tmp_path / "aug"), *flags])
    with pytest.raises(SystemExit, match="has no train/ folder of songs"):
        main(["augment-dataset", str(tmp_path), str(tmp_path / "aug2")])
    with pytest.raises(SystemExit, match="overlap"):
        main(["augment-dataset", str(data), str(data / "aug")])


def test_an_unreadable_stem_is_named_and_the_finished_copies_are_kept(data, tmp_path):
    import shutil

    songs = tmp_path / "songs"
    shutil.copytree(data, songs)
    (songs / "train" / "Track00002" / "piano.wav").write_bytes(b"RIFF but not audio")
    out = tmp_path / "aug"
    with pytest.raises(SystemExit, match=r"Track00002/piano\.wav could not be read"):
        main(["augment-dataset", str(songs), str(out)])
    assert (out / "train" / "Track00001-aug0" / "bass.wav").is_file()  # the song before it is finished
    assert not (out / "train" / "Track00002-aug0").exists()  # the broken one is not passed off as done
