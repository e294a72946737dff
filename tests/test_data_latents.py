"""encode-latents with a tiny random SourceVAE: posterior means of every stem, resume, the latent dataset."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mslddm import SourceVAE
from mslddm.cli import main
from mslddm.data.datasets import LatentSegmentDataset, load_tracks

SR = 22050
STEMS = ["bass", "drums", "guitar", "piano"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    for split, name, seconds in [("train", "Track00001", 1.0), ("train", "Track00002", 0.6),
                                 ("test", "Track00003", 0.8)]:
        folder = root / "data" / split / name
        folder.mkdir(parents=True)
        for stem in STEMS[:-1]:  # piano missing: silence
            sf.write(folder / f"{stem}.wav", (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR)
    torch.manual_seed(0)
    vae = SourceVAE(encoder_dim=4, decoder_dim=16, latent_channels=8)
    pipeline = root / "pipeline"
    vae.save_pretrained(pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "MultiSourceLatentPipeline",
                                                           "stem_names": STEMS}))
    out = root / "out"
    assert main(["encode-latents", str(root / "data"), "--vae", str(pipeline), str(out), "--quiet"]) == 0
    return root, vae.eval(), out


def test_latents_are_the_posterior_means_of_every_stem(setup):
    root, vae, out = setup
    header = json.loads((out / "latents.json").read_text())
    assert header["stems"] == STEMS and header["hop_length"] == vae.hop_length and header["latent_channels"] == 8
    assert len(header["silence_latent"]) == 8 and len(header["vae_fingerprint"]) == 8
    for split in ("train", "test"):
        for track in load_tracks(root / "data", split):
            from safetensors.torch import load_file

            saved = load_file(out / split / f"{track.name}.safetensors")["latents"]
            with torch.no_grad():
                expected = vae.encode(torch.from_numpy(track.read())[:, None]).latent_dist.mean
            assert saved.shape == (4, 8, vae.num_frames(track.num_samples))
            torch.testing.assert_close(saved, expected, rtol=1e-5, atol=1e-5)


def test_resume_and_option_mismatch(setup, capsys):
    root, _, out = setup
    args = ["encode-latents", str(root / "data"), "--vae", str(root / "pipeline" / "vae"), str(out), "--quiet",
            "--device", "cpu"]
    target = out / "train" / "Track00002.safetensors"
    before = target.read_bytes()
    target.unlink()
    assert main(args) == 0
    assert "1 tracks encoded, 2 already done" in capsys.readouterr().out
    assert target.read_bytes() == before and not list(out.rglob(".*partial*"))
    with pytest.raises(SystemExit, match="made differently"):
        main(args + ["--stems", "bass,drums"])
    # Another fresh VAE: the same latent of silence (zero biases: 0), other weights. The fingerprint tells them apart.
    torch.manual_seed(1)
    SourceVAE(encoder_dim=4, decoder_dim=16, latent_channels=8).save_pretrained(root / "other_vae")
    with pytest.raises(SystemExit, match="made differently"):
        main(args[:3] + [str(root / "other_vae")] + args[4:])


def test_folders_without_a_fingerprint_are_checked_on_silence(setup, tmp_path):
    """Latent folders written before the fingerprint existed resume with the same VAE and refuse another one."""
    import shutil

    root, _, out = setup
    old = tmp_path / "old"
    shutil.copytree(out, old)
    header = json.loads((old / "latents.json").read_text())
    del header["vae_fingerprint"]
    (old / "latents.json").write_text(json.dumps(header))
    args = ["encode-latents", str(root / "data"), "--vae", str(root / "pipeline" / "vae"), str(old), "--quiet",
            "--device", "cpu"]
    assert main(args) == 0
    header["silence_latent"] = [v + 1.0 for v in header["silence_latent"]]
    (old / "latents.json").write_text(json.dumps(header))
    with pytest.raises(SystemExit, match="made differently"):
        main(args)


def test_latent_dataset(setup):
    from safetensors.torch import load_file

    _, _, out = setup
    data = LatentSegmentDataset(out, "train", segment_frames=16, segments_per_epoch=60)
    assert data.stem_names == STEMS and len(data) == 60 and data[0].shape == (4, 8, 16)
    saved = {f.stem: load_file(f)["latents"] for f in (out / "train").glob("*.safetensors")}

    def windows_equal_to(item):  # every (track, first frame) of the saved latents whose 16 frames are the item
        return [(name, s) for name, t in sorted(saved.items()) for s in range(t.shape[-1] - 15)
                if torch.equal(t[..., s:s + 16], item)]

    drawn = [windows_equal_to(data[i]) for i in range(len(data))]
    assert all(len(found) == 1 for found in drawn), drawn  # each item is one window of one track's latents
    assert len({found[0] for found in drawn}) > 20  # not one window again and again
    lengths = {name: t.shape[-1] for name, t in saved.items()}  # tracks drawn in proportion to their length
    share = sum(found[0][0] == "Track00001" for found in drawn) / len(drawn)
    assert share == pytest.approx(lengths["Track00001"] / sum(lengths.values()), abs=0.2)
    rebuilt = LatentSegmentDataset(out, "train", segment_frames=16, segments_per_epoch=60)
    assert [windows_equal_to(rebuilt[i]) for i in range(5)] == drawn[:5]  # the seed fixes the draws
    rebuilt.set_epoch(1)
    assert [windows_equal_to(rebuilt[i]) for i in range(5)] != drawn[:5]  # and the epoch changes them
    whole = LatentSegmentDataset(out, "test", segment_frames=200, random_offsets=False)
    x = whole[0]
    frames = whole.lengths[0]
    silence = torch.tensor(json.loads((out / "latents.json").read_text())["silence_latent"])
    assert x.shape == (4, 8, 200)
    assert torch.equal(x[:, :, :frames], load_file(out / "test" / "Track00003.safetensors")["latents"])
    torch.testing.assert_close(x[:, :, frames:], silence[None, :, None].expand(4, 8, 200 - frames))
    with pytest.raises(ValueError, match="encode-latents"):
        LatentSegmentDataset(out, None)  # the root holds no latent file itself


def _undecodable_flac(path, seconds=0.5):
    """A FLAC whose header reads but whose audio cannot be decoded (libsndfile fails on the frames)."""
    sf.write(path, (0.1 * np.random.default_rng(3).standard_normal(int(seconds * SR))).astype(np.float32), SR)
    data = bytearray(path.read_bytes())
    data[200:] = np.random.default_rng(4).integers(0, 256, len(data) - 200, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_skip_failed_finishes_and_names_what_it_left_out(setup, tmp_path, capsys):
    root, _, _ = setup
    data = tmp_path / "data"
    import shutil

    shutil.copytree(root / "data", data)
    bad = data / "train" / "Track00009"
    bad.mkdir()
    for stem in STEMS:
        _undecodable_flac(bad / f"{stem}.flac")
    args = ["encode-latents", str(data), "--vae", str(root / "pipeline"), str(tmp_path / "out"), "--quiet"]
    assert main(args) == 1  # by default a bad track fails the run (a later run retries it)
    assert "pass --skip-failed" in capsys.readouterr().out
    assert main(args + ["--skip-failed"]) == 0
    out = capsys.readouterr().out
    assert "FAILED train/Track00009" in out and "left out and named in" in out
    header = json.loads((tmp_path / "out" / "latents.json").read_text())
    assert list(header["failed_tracks"]) == ["train/Track00009"] and "statistics" in header
    assert header["data_report"]["train"]["missing_stems"] == {"Track00001": ["piano"], "Track00002": ["piano"]}
    assert not (tmp_path / "out" / "train" / "Track00009.safetensors").exists()
