"""Dataset discovery, labels, padding and cropping, and the on-disk mel cache."""
import math
import os

import numpy as np
import pytest
import torch

from conftest import tag, tiny_config, write_tone


def test_discovery_sorted_classes_nested_and_hidden_ignored(tiny_dataset):
    write_tone(os.path.join(tiny_dataset, "low", ".hidden.wav"), 300)
    write_tone(os.path.join(tiny_dataset, "low", ".cache", "x.wav"), 300)
    write_tone(os.path.join(tiny_dataset, ".trash", "y.wav"), 300)
    with open(os.path.join(tiny_dataset, "high", "notes.txt"), "w") as f:
        f.write("not audio")
    classes, files, skipped = tag.discover(tiny_dataset)
    assert classes == ["high", "low", "noise"]
    assert len(files) == 12
    assert {os.path.basename(p) for p, y in files if y == 2} == {f"n{i}.wav" for i in range(4)}  # nested sub/
    assert all(classes[y] in p for p, y in files)


def test_missing_dataset_names_path_and_layout(tmp_path):
    with pytest.raises(SystemExit, match=r"does-not-exist.*<class_name>"):
        tag.discover(str(tmp_path / "does-not-exist"))


def test_single_class_is_refused(tmp_path):
    write_tone(str(tmp_path / "only" / "a.wav"), 440)
    with pytest.raises(SystemExit, match="at least 2"):
        tag.discover(str(tmp_path))


def test_dataset_tensor_labels_and_counts(tiny_dataset, tmp_path):
    data = tag.MelClips(tiny_config(tiny_dataset, tmp_path / "out"), torch.device("cpu"))
    assert len(data) == 12
    assert torch.bincount(data.labels).tolist() == [4, 4, 4]
    assert data.frames.dim() == 2 and data.frames.shape[0] == 80
    assert data.frames.shape[1] == int(data.lengths.sum())  # every clip's frames in one tensor


@pytest.mark.parametrize("scaling", ["affine", "per_bin", "log1p"])
def test_clips_are_kept_in_fp16_within_its_rounding_and_batches_are_fp32(tiny_dataset, tmp_path, scaling):
    data = tag.MelClips(tiny_config(tiny_dataset, tmp_path / "out", scaling=scaling), torch.device("cpu"))
    assert data.frames.dtype == torch.float16  # half the memory of fp32
    logmel = torch.load(next((tmp_path / "out" / "mel_cache").glob("*.pt")), weights_only=True)["frames"]
    exact = data.scale.to_gan(logmel)
    exact = exact.clamp(-1, 1) if scaling == "per_bin" else exact  # the dataset's own clip is not fp16's doing
    error = (data.scale.from_gan(data.frames.float()) - data.scale.from_gan(exact)).abs()
    heard = logmel > tag.LOG_FLOOR + 1  # log1p's fp16 loses relative precision only in near-silence
    if scaling == "log1p":
        bound = 0.002  # measured (docs/speed.md): log1p's slope grows towards silence
    else:  # fp16 rounds a value below 1 by at most 2^-12, times the map's slope
        bound = (tag.AFFINE_SPAN / 2 if scaling == "affine" else tag.PER_BIN_STDS * data.scale.std.max()) / 4096
    assert error[heard].max() <= bound * 1.001
    x, y = data.crops(torch.arange(4))
    assert x.dtype == torch.float32 and y.dtype == torch.long


def test_short_clips_pad_with_silence_long_clips_crop(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path / "out", n_frames=32)
    data = tag.MelClips(cfg, torch.device("cpu"))
    floor = data.silence.view(80, 1)
    short = int(torch.argmin(data.lengths))
    n = int(data.lengths[short])
    assert n < 32
    x, y = data.crops(torch.tensor([short]))
    assert x.shape == (1, 1, 80, 32) and y.item() == data.labels[short]
    clip = data.frames[:, data.offsets[short]:data.offsets[short] + n].float()
    assert torch.equal(x[0, 0, :, :n], clip)
    assert torch.all(x[0, 0, :, n:] == floor)

    long = int(torch.argmax(data.lengths))
    n = int(data.lengths[long])
    assert n > 32
    clip = data.frames[:, data.offsets[long]:data.offsets[long] + n].float()
    starts = set()
    for _ in range(30):
        x, _ = data.crops(torch.tensor([long]))
        window = x[0, 0]
        found = [s for s in range(n - 32 + 1) if torch.equal(clip[:, s:s + 32], window)]
        assert found, "a crop must be a contiguous window of the clip"
        starts.add(found[0])
    assert len(starts) > 1  # random crops, not always the same window


def test_cache_hit_skips_decoding(tiny_dataset, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_dataset, tmp_path / "out")
    first = tag.MelClips(cfg, torch.device("cpu"))
    assert not first.cache_hit

    def fail(*a, **k):
        raise AssertionError("cache hit must not decode audio again")
    monkeypatch.setattr(tag, "compute_mels", fail)
    second = tag.MelClips(cfg, torch.device("cpu"))
    assert second.cache_hit
    assert torch.equal(first.frames, second.frames)


@pytest.mark.parametrize("change", ["rewrite", "add", "remove", "n_mels"])
def test_stale_cache_is_never_used(tiny_dataset, tmp_path, change):
    cfg = tiny_config(tiny_dataset, tmp_path / "out")
    first = tag.MelClips(cfg, torch.device("cpu"))
    target = os.path.join(tiny_dataset, "low", "l0.wav")
    if change == "rewrite":
        write_tone(target, 700, seconds=0.9)  # new content, size and mtime
    elif change == "add":
        write_tone(os.path.join(tiny_dataset, "low", "l9.wav"), 250)
    elif change == "remove":
        os.remove(target)
    else:
        cfg = tiny_config(tiny_dataset, tmp_path / "out", n_mels=64)
    second = tag.MelClips(cfg, torch.device("cpu"))
    assert not second.cache_hit
    if change == "add":
        assert len(second) == len(first) + 1
    elif change == "remove":
        assert len(second) == len(first) - 1
    elif change == "n_mels":
        assert second.frames.shape[0] == 64
    else:
        assert not torch.equal(first.frames, second.frames)


def test_demo_dataset_is_deterministic_and_distinct(tmp_path):
    a = tag.make_demo_dataset(str(tmp_path / "a"), 22050, clips_per_class=2)
    b = tag.make_demo_dataset(str(tmp_path / "b"), 22050, clips_per_class=2)
    classes, files, _ = tag.discover(a)
    assert len(classes) == 4 and len(files) == 8
    for (pa, _), (pb, _) in zip(files, tag.discover(b)[1]):
        assert open(pa, "rb").read() == open(pb, "rb").read()
    # The classes really differ: their mean spectra are far apart.
    mel = tag.MelSpectrogram(tag.Config())
    means = [mel(torch.from_numpy(tag.load_audio(p, 22050))[None])[0].mean(1) for p, _ in files[::2]]
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert (means[i] - means[j]).abs().mean() > 0.5


@pytest.mark.core
def test_balance_draws_every_class_equally_often_however_many_clips_it_has(tmp_path):
    for i in range(12):  # 12 "many" clips against 2 "few"
        write_tone(str(tmp_path / "data" / "many" / f"m{i}.wav"), 300, seconds=0.3)
    for i in range(2):
        write_tone(str(tmp_path / "data" / "few" / f"f{i}.wav"), 3000, seconds=0.3)
    torch.manual_seed(0)
    share = {}
    for balance in (False, True):
        cfg = tag.Config(base_path=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), n_frames=16, balance=balance)
        data = tag.MelClips(cfg, torch.device("cpu"))
        idx = data.sample(20000)
        few = data.classes.index("few")
        share[balance] = float((data.labels[idx] == few).float().mean())
        assert set(idx.tolist()) == set(range(14))  # every clip is drawn, from its own class
    assert share[False] == pytest.approx(2 / 14, abs=0.01) and share[True] == pytest.approx(0.5, abs=0.01)
