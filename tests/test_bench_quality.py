"""bench/quality.py: a budget in minutes must still let the default's lr decay to 0 by the end of the run, and --resume
continues only the runs that have a checkpoint, and a variant that asks for the GPU sizes gets them on a CPU;
bench/same_judge.py: shorter clips are padded with silence; bench/kid_probe.py: its harmonicity tells a voice's stripes
from stripes at no common pitch."""
import argparse
import os
import sys

import pytest
import torch
from conftest import tag

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import quality  # noqa: E402  (bench/quality.py)
import kid_probe  # noqa: E402  (bench/kid_probe.py)
import same_judge  # noqa: E402  (bench/same_judge.py)


def test_a_minutes_budget_plans_the_epochs_a_decaying_lr_falls_over(tiny_dataset, tmp_path, monkeypatch):
    probes = []
    cfg = tag.Config(base_path=tiny_dataset, out_dir=str(tmp_path), max_minutes=15.0, **quality.PRESET)
    monkeypatch.setattr(tag, "train", lambda c: probes.append(c) or {"steps_per_s": 10.0})
    plan = quality.planned(cfg)
    assert (probes[0].epochs, probes[0].epoch_steps, probes[0].max_minutes) == (1, 60, 0.0)  # a short timed run
    assert (plan.epochs, plan.epoch_steps, plan.max_minutes) == (36, 250, 15.0)  # 15 min x 10 steps/s = 36 x 250


def test_resume_continues_the_runs_with_a_checkpoint_and_starts_the_others(tmp_path):
    args = argparse.Namespace(data=str(tmp_path), device="cpu", out=str(tmp_path / "out"), n_frames=64,
                              vocoder="universal", minutes=0.0, steps=500, score_only=False, resume=True)
    os.makedirs(tmp_path / "out" / "default-42")
    open(tmp_path / "out" / "default-42" / "checkpoint.pt", "wb").close()  # a stopped run
    stopped, new = quality.run_config(args, "default", 42, {}), quality.run_config(args, "default", 43, {})
    assert (stopped.resume, stopped.overwrite) == (True, False)  # never replaced
    assert (new.resume, new.overwrite) == (False, True)
    assert (stopped.epochs, stopped.epoch_steps) == (new.epochs, new.epoch_steps) == (2, 250)  # the same plan
    args.resume = False
    assert (quality.run_config(args, "default", 42, {}).resume, quality.run_config(args, "default", 42, {}).overwrite) \
        == (False, True)  # without --resume a rerun replaces the run


def test_a_variant_that_asks_for_the_gpu_sizes_trains_them_on_a_cpu(tmp_path):
    args = argparse.Namespace(data=str(tmp_path), device="cpu", out=str(tmp_path / "out"), n_frames=64,
                              vocoder="universal", minutes=0.0, steps=250, score_only=False, resume=False)
    sizes = lambda name: tuple(getattr(tag.apply_preset(quality.run_config(args, name, 42, {}))[0], k)
                               for k in ("batch_size", "g_channels", "d_channels"))  # what train(cfg) trains
    assert (sizes("gpu"), sizes("b128"), sizes("w64")) == ((128, 64, 64), (128, 32, 16), (16, 64, 64))
    assert sizes("default") == (16, 32, 16)  # the CPU sizes quality.py's PRESET spells out


def test_same_judge_pads_shorter_clips_with_silence_and_refuses_longer():
    clips = torch.randn(2, 80, 64)
    x = same_judge.padded(clips, 256)
    assert x.shape == (2, 80, 256) and torch.equal(x[..., :64], clips)
    assert (x[..., 64:] == tag.LOG_FLOOR).all()  # HiFi-GAN's silence, as after every real clip
    with pytest.raises(SystemExit, match="64 frames, more than the judge's 16"):
        same_judge.padded(clips, 16)


def test_kid_probe_harmonicity_tells_whole_multiples_of_one_pitch_from_partials_at_no_common_pitch():
    cfg, t = tag.Config(), torch.arange(11025) / 22050  # 0.5 s
    rng = torch.Generator().manual_seed(0)
    tone = lambda hz: sum(torch.sin(2 * torch.pi * f * t) for f in hz) / len(hz)  # equal partials, 150 Hz - 3 kHz
    voiced = tone([150.0 * k for k in range(1, 21)])
    scattered = tone((150 + 2850 * torch.rand(20, generator=rng)).tolist())
    mel = tag.MelSpectrogram(cfg)(torch.stack([voiced, scattered]))  # (2, n_mels, T)
    assert kid_probe.harmonicity(mel[:1], cfg) > 1.5 * kid_probe.harmonicity(mel[1:], cfg)
    assert kid_probe.kept(mel, mel) == pytest.approx(1.0)
    depth, on = kid_probe.comb(mel)
    smooth = torch.nn.functional.avg_pool1d(mel.transpose(1, 2), 9, 1, 4, count_include_pad=False).transpose(1, 2)
    assert on.all() and kid_probe.kept(mel, smooth) < 0.5  # stripes smeared across bins lose their depth
