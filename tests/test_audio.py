import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from mslddm.audio import AudioReadError, common_gain, load_audio, read_audio, resample, rms_db, to_mono, write_audio


def tone(freq, sr, seconds=1.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * sr / len(x)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_round_trip_through_libsndfile_formats(tmp_path, ext):
    stereo = np.stack([tone(440, 44100), tone(440, 44100)])
    path = write_audio(tmp_path / f"a.{ext}", stereo, 44100)
    audio, sr = read_audio(path)
    assert sr == 44100 and audio.shape[0] == 2
    mono = load_audio(path, 22050)
    assert mono.ndim == 1 and abs(len(mono) - 22050) < 1200  # lossy codecs pad a little
    assert peak_frequency(mono, 22050) == pytest.approx(440, abs=2)
    assert np.abs(mono).max() == pytest.approx(0.5, abs=0.05)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (apt-get install ffmpeg)")
def test_formats_libsndfile_cannot_read_go_through_ffmpeg(tmp_path):
    wav = write_audio(tmp_path / "a.wav", tone(330, 22050), 22050)
    m4a = tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    with pytest.raises(sf.LibsndfileError):
        sf.read(m4a)
    audio = load_audio(m4a, 22050)
    assert peak_frequency(audio, 22050) == pytest.approx(330, abs=2)
    assert load_audio(m4a.read_bytes(), 22050).shape == audio.shape


def test_unreadable_and_missing_files_give_clear_errors(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(AudioReadError, match="notes.wav"):
        read_audio(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_audio(tmp_path / "absent.flac")


def test_resample_keeps_pitch_and_length():
    x = tone(1000, 48000)
    y = resample(x, 48000, 22050)
    assert len(y) == 22050 and peak_frequency(y, 22050) == pytest.approx(1000, abs=2)
    assert np.array_equal(resample(x, 48000, 48000), x)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 22050)


def test_load_audio_accepts_arrays_tensors_and_tuples():
    import torch

    x = tone(220, 44100)
    assert len(load_audio((x, 44100), 22050)) == 22050
    assert len(load_audio(torch.from_numpy(np.stack([x, x])), 22050, source_sample_rate=44100)) == 22050
    np.testing.assert_allclose(to_mono(np.stack([x, -x])), 0)
    with pytest.raises(ValueError, match="channels"):
        load_audio(np.stack([x, x]).T, 22050)  # (samples, channels) by mistake
    with pytest.raises(ValueError, match="NaN"):
        load_audio(np.array([0.1, np.inf], dtype=np.float32), 22050)
    with pytest.raises(ValueError, match="no samples"):
        load_audio(np.zeros(0), 22050)


def test_write_never_clips_silently_and_never_leaves_partial_files(tmp_path):
    loud = tone(100, 22050, amp=1.5)
    with pytest.raises(ValueError, match="peaks at 1.500"):
        write_audio(tmp_path / "loud.wav", loud, 22050)
    assert not list(tmp_path.iterdir())
    scaled, _ = sf.read(write_audio(tmp_path / "scaled.wav", loud, 22050, on_clip="scale"))
    assert np.abs(scaled).max() == pytest.approx(0.99, abs=1e-3)
    floats, _ = sf.read(write_audio(tmp_path / "float.wav", loud, 22050, subtype="FLOAT"))
    assert np.abs(floats).max() == pytest.approx(1.5, abs=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        write_audio(tmp_path / "nan.wav", np.array([np.nan], dtype=np.float32), 22050)
    with pytest.raises(ValueError, match="extension"):
        write_audio(tmp_path / "a.xyz", loud, 22050)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.wav", "scaled.wav"]


def test_common_gain_keeps_relative_levels():
    a, b = tone(100, 22050, amp=1.6), tone(200, 22050, amp=0.4)
    g = common_gain(a, b)
    assert np.abs(a * g).max() == pytest.approx(0.99, abs=1e-3)
    assert rms_db(a * g) - rms_db(b * g) == pytest.approx(rms_db(a) - rms_db(b), abs=1e-6)
    assert common_gain(b) == 1.0  # never amplifies
    assert rms_db(np.zeros(10)) == float("-inf")
