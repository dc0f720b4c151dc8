"""Shared fixtures: a tiny class-folder dataset written by the tests themselves, and a CPU-sized config."""
import os
import sys

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_audio_gan as tag  # noqa: E402

FSDD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "fsdd")


def write_tone(path, freq, seconds=0.5, sr=16000, noise=0.0, seed=0):
    """A sine (plus optional noise) at sr: 16 kHz so that loading exercises resampling to 22.05 kHz."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(len(t))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, wav.astype(np.float32), sr)


@pytest.fixture
def tiny_dataset(tmp_path):
    """Three classes ("high", "low", "noise"), four clips each, one in a nested folder."""
    root = tmp_path / "data"
    for i in range(4):
        write_tone(str(root / "low" / f"l{i}.wav"), 200 + 20 * i, seconds=0.4 + 0.1 * i)
        write_tone(str(root / "high" / f"h{i}.wav"), 3000 + 100 * i, seconds=0.3)
        write_tone(str(root / "noise" / "sub" / f"n{i}.wav"), 1000, noise=0.5, seed=i)
    return str(root)


def tiny_config(base_path, out_dir, **kw):
    """A configuration small enough for a CPU test: seconds per epoch."""
    base = dict(base_path=base_path, out_dir=str(out_dir), n_frames=16, batch_size=4, latent_dim=8, embed_dim=4,
                g_channels=4, d_channels=4, epochs=1, epoch_steps=3, n_critic=2, log_every=1, samples_per_class=2,
                vocoder="griffinlim", device="cpu")
    base.update(kw)
    return tag.Config(**base)
