"""bench/quality.py: a budget in minutes must still let the default's lr decay to 0 by the end of the run;
bench/same_judge.py: shorter clips are padded with silence."""
import os
import sys

import pytest
import torch
from conftest import tag

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import quality  # noqa: E402  (bench/quality.py)
import same_judge  # noqa: E402  (bench/same_judge.py)


def test_a_minutes_budget_plans_the_epochs_a_decaying_lr_falls_over(tiny_dataset, tmp_path, monkeypatch):
    probes = []
    cfg = tag.Config(base_path=tiny_dataset, out_dir=str(tmp_path), max_minutes=15.0, **quality.PRESET)
    monkeypatch.setattr(tag, "train", lambda c: probes.append(c) or {"steps_per_s": 10.0})
    plan = quality.planned(cfg)
    assert (probes[0].epochs, probes[0].epoch_steps, probes[0].max_minutes) == (1, 60, 0.0)  # a short timed run
    assert (plan.epochs, plan.epoch_steps, plan.max_minutes) == (36, 250, 15.0)  # 15 min x 10 steps/s = 36 x 250


def test_same_judge_pads_shorter_clips_with_silence_and_refuses_longer():
    clips = torch.randn(2, 80, 64)
    x = same_judge.padded(clips, 256)
    assert x.shape == (2, 80, 256) and torch.equal(x[..., :64], clips)
    assert (x[..., 64:] == tag.LOG_FLOOR).all()  # HiFi-GAN's silence, as after every real clip
    with pytest.raises(SystemExit, match="64 frames, more than the judge's 16"):
        same_judge.padded(clips, 16)
