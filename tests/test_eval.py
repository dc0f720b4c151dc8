"""The evaluation: Frechet distance and Inception Score, and the classifier-based scores on easy synthetic classes."""
import csv
import os

import pytest
import torch

from conftest import tag, tiny_config, write_tone


def test_frechet_distance_closed_forms():
    torch.manual_seed(0)
    a = torch.randn(4000, 4)
    assert tag.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0])
    assert tag.frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)  # same covariance: |mu_a - mu_b|^2
    # b = 3a: covariance 9S and mean 3mu, so FD = 4|mu|^2 + Tr(S + 9S - 2 * 3S) = 4|mu|^2 + 4 Tr(S)
    expected = 4 * (a.mean(0) ** 2).sum() + 4 * torch.cov(a.T).trace()
    assert tag.frechet_distance(a, 3 * a) == pytest.approx(expected.item(), rel=1e-5)


def test_inception_score_and_diversity_bounds():
    labels = torch.arange(4).repeat_interleave(5)
    confident = torch.nn.functional.one_hot(labels, 4).float() * 50
    emb = torch.randn(20, 8)
    s = tag.scores(confident, emb, labels, 4)
    assert s["accuracy"] == 1.0 and s["inception_score"] == pytest.approx(4.0, rel=1e-3)  # sure and balanced: C
    s = tag.scores(torch.zeros(20, 4), torch.zeros(20, 8), labels, 4)
    assert s["inception_score"] == pytest.approx(1.0) and s["diversity"] == 0.0  # undecided, identical clips


@pytest.fixture
def easy_classes(tmp_path):
    root = tmp_path / "easy"
    for i in range(12):
        write_tone(str(root / "low" / f"{i}.wav"), 150 + 10 * i, seconds=0.4)
        write_tone(str(root / "high" / f"{i}.wav"), 3000 + 50 * i, seconds=0.4)
        write_tone(str(root / "noise" / f"{i}.wav"), 500, noise=1.0, seconds=0.4, seed=i)
    return str(root)


def test_classifier_scores_real_high_and_noise_at_chance(easy_classes, tmp_path):
    cfg = tiny_config(easy_classes, tmp_path / "out", eval_steps=150)
    data = tag.MelClips(cfg, torch.device("cpu"))
    ev = tag.Evaluator(cfg, data, torch.device("cpu"))
    assert ev.reference["accuracy"] == 1.0  # the classifier separates the easy classes on held-out clips
    idx = torch.arange(len(data))
    real = ev.score(ev.real(data, idx), data.labels, None)  # real clips, through the (Griffin-Lim) vocoder
    torch.manual_seed(1)
    noise = ev.score(torch.randn(36, 80, 16) * 2 - 4, torch.arange(3).repeat_interleave(12), None)
    assert real["accuracy"] >= 0.9
    assert 0.1 <= noise["accuracy"] <= 0.6  # chance is 1/3: the labels asked for make no difference
    assert real["frechet"] < noise["frechet"] / 5


def test_eval_every_writes_metrics_and_evaluate_mode(easy_classes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    tag.train(tiny_config(easy_classes, out, epochs=2, eval_every=1, eval_samples=4, eval_steps=50))
    rows = list(csv.DictReader(open(out / "eval_metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"accuracy", "inception_score", "frechet", "diversity", "real_accuracy", "real_frechet",
            "accuracy/low"} <= set(rows[0])
    assert (out / "gan_eval_plot.png").stat().st_size > 1000
    assert os.path.exists(out / "checkpoint.pt")
    monkeypatch.setattr(tag.Evaluator, "train_classifier", lambda *a, **k: pytest.fail("the cached classifier must be reused"))
    m = tag.evaluate(tag.Config(mode="evaluate", out_dir=str(out), eval_samples=4, eval_steps=50,
                                vocoder="griffinlim", device="cpu"))
    assert 0 <= m["accuracy"] <= 1 and len(m["per_class"]) == 3
    assert len(list(csv.DictReader(open(out / "eval_metrics.csv")))) == 2  # epoch 2 rescored, not duplicated
