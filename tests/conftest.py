"""Shared fixtures: a tiny class-folder dataset written by the tests themselves, and a CPU-sized config. Every test
runs in a temporary working directory, and the suite fails if it leaves or changes anything in the repository."""
import os
import sys

import tempfile

import numpy as np
import pytest
import soundfile as sf
from hypothesis import configuration, settings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_audio_gan as tag  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDD = os.path.join(REPO, "..", "shared", "data", "fsdd")
# No .hypothesis/ folder in the clone: no example database (each run draws afresh), and its other files go elsewhere.
settings.register_profile("suite", database=None)
settings.load_profile("suite")
configuration.set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "tfq-hypothesis"))
OWN_CACHES = ("__pycache__", ".pytest_cache", ".git")  # Python's and pytest's, not the suite's


def pytest_configure(config):
    config.addinivalue_line("markers", "core: the algorithm's tests (loss directions, penalty, EMA, a short run that "
                                       "must learn); `-m core` runs them alone, as bench/mutations.py does")


def repository_files():
    """{path: (size, mtime)} of every file in the repository outside OWN_CACHES: what the suite must leave alone."""
    files = {}
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in OWN_CACHES]
        for name in names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            files[os.path.relpath(path, REPO)] = (st.st_size, st.st_mtime_ns)
    return files


def pytest_sessionstart(session):
    session.config.repository_before = repository_files()


def pytest_sessionfinish(session, exitstatus):
    before, after = session.config.repository_before, repository_files()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:  # a test wrote into the clone (the default out_dir is "."): a user's second command would trip on it
        print(f"\nThe test suite left or changed {len(changed)} file(s) in the repository, e.g. {changed[:5]}; "
              f"every test must write under its tmp_path.", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Each test runs in its own empty working directory: a default out_dir ('.') or a relative path lands there."""
    monkeypatch.chdir(tmp_path)


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
