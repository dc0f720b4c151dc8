"""The mel front end must be HiFi-GAN's recipe exactly, or the pretrained vocoder turns it into noise."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tag

librosa = pytest.importorskip("librosa", reason="librosa (requirements-dev.txt) is the filterbank reference")


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(22050, 1024, 80, 0, 8000), (16000, 512, 40, 20, 7600),
                                                       (44100, 2048, 128, 0, 22050)])
def test_filterbank_equals_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = tag.mel_filterbank(sr, n_fft, n_mels, fmin, fmax).numpy()
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-6


def reference_mel(wav, sr=22050, n_fft=1024, hop=256, win=1024, n_mels=80, fmin=0, fmax=8000):
    """HiFi-GAN's meldataset.mel_spectrogram written independently in numpy (float64)."""
    pad = (n_fft - hop) // 2
    y = np.pad(wav.astype(np.float64), (pad, pad), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann, as torch.hann_window
    frames = np.stack([y[i:i + n_fft] * window for i in range(0, len(y) - n_fft + 1, hop)], 1)
    spec = np.fft.rfft(frames, axis=0)
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    mel = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float64) @ mag
    return np.log(np.clip(mel, 1e-5, None))


@pytest.mark.core
def test_mel_matches_hifigan_recipe():
    rng = np.random.default_rng(0)
    t = np.arange(22050) / 22050
    wav = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    ours = tag.MelSpectrogram(tag.Config())(torch.from_numpy(wav)[None])[0].numpy()
    ref = reference_mel(wav)
    assert ours.shape == ref.shape == (80, 22050 // 256)
    assert np.abs(ours - ref).max() < 1e-3


def test_shapes_and_log_floor():
    mel = tag.MelSpectrogram(tag.Config())
    assert mel(torch.zeros(2, 131072)).shape == (2, 80, 512)  # 512 frames at hop 256, the original size
    silence = mel(torch.zeros(1, 4096))
    assert torch.allclose(silence, torch.full_like(silence, math.log(1e-5)))  # silence sits exactly at the floor


def test_load_audio_resamples_mixes_and_normalises(tmp_path):
    sr = 8000
    t = np.arange(sr) / sr
    left, right = 0.2 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)
    path = str(tmp_path / "stereo.wav")
    sf.write(path, np.stack([left, right], 1).astype(np.float32), sr)
    audio = tag.load_audio(path, 22050)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 22050) <= 1  # one second at the new rate
    assert abs(np.abs(audio).max() - 0.95) < 1e-6  # HiFi-GAN's peak normalisation
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 22050 / len(audio) - 440) < 2  # the tone survives resampling
    mel = tag.MelSpectrogram(tag.Config())(torch.from_numpy(audio)[None])[0]
    assert mel.shape == (80, len(audio) // 256)


def test_load_audio_rejects_unusable(tmp_path):
    empty = str(tmp_path / "empty.wav")
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="no audio samples"):
        tag.load_audio(empty, 22050)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(ValueError, match="unreadable"):
        tag.load_audio(str(junk), 22050)


@pytest.mark.core
@pytest.mark.parametrize("kind", ["per_bin", "affine", "log1p"])
def test_gan_scaling_round_trip(kind):
    torch.manual_seed(0)
    frames = math.log(1e-5) + 13 * torch.rand(80, 500)  # (n_mels, N) training log-mels, for the per-bin statistics
    frames[70:] = math.log(1e-5)  # bins that are always silent (8 kHz audio above 4 kHz): their std is floored
    scale = tag.GanScale.from_data(kind, frames)
    logmel = math.log(1e-5) + 14 * torch.rand(3, 80, 40)  # (B, n_mels, T), beyond the data's range too
    assert torch.allclose(scale.from_gan(scale.to_gan(logmel)), logmel, atol=1e-4)
    floor = scale.to_gan(torch.full((80, 1), math.log(1e-5)))
    assert torch.allclose(scale.from_gan(floor), torch.full((80, 1), math.log(1e-5)), atol=1e-5)
    again = tag.GanScale.from_state(scale.state())  # what a checkpoint holds is enough to rebuild the map
    assert torch.equal(again.from_gan(scale.to_gan(logmel)), scale.from_gan(scale.to_gan(logmel)))


@pytest.mark.core
def test_per_bin_scaling_normalises_each_bin():
    torch.manual_seed(0)
    spread, centre = torch.tensor([[0.6], [1.0], [2.0], [3.0]]), torch.tensor([[-9.0], [-5.0], [-3.0], [0.0]])
    frames = torch.randn(4, 10000) * spread + centre
    x = tag.GanScale.from_data("per_bin", frames).to_gan(frames)
    assert torch.allclose(x.mean(1), torch.zeros(4), atol=1e-3)
    assert torch.allclose(x.std(1), torch.full((4,), 1 / 3), atol=1e-3)  # 3 standard deviations = 1: tanh's range


def test_dataset_clips_per_bin_values_to_tanh_range(tiny_dataset, tmp_path):
    from conftest import tiny_config
    data = tag.MelClips(tiny_config(tiny_dataset, tmp_path / "out", scaling="per_bin"), torch.device("cpu"))
    assert data.frames.abs().max() <= 1
    raw = torch.load(next((tmp_path / "out" / "mel_cache").glob("*.pt")), weights_only=True)["frames"]
    inside = data.scale.to_gan(raw).abs() < 1
    restored = data.scale.from_gan(data.frames.float())
    half_step = tag.PER_BIN_STDS * data.scale.std / 4096  # fp16's rounding below 1 (2^-12), in nats of each bin
    assert ((restored - raw).abs() <= half_step)[inside].all()  # lossless inside 3 std, but for fp16's rounding
    assert inside.float().mean() > 0.9


@pytest.mark.core
def test_affine_scaling_fits_tanh_range():
    # Silence maps to -1 exactly, and a loud peak-normalised log-mel (about 2.1) still fits under tanh's +1.
    assert tag.GanScale().to_gan(torch.tensor(math.log(1e-5))).item() == pytest.approx(-1.0)
    assert tag.GanScale().to_gan(torch.tensor(2.1)).item() < 1.0
