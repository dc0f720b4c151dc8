"""Config as the single source of choices, bounds and presets; logs that fit where they go; a run that says where its
outputs are; TensorBoard."""
import dataclasses
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import tag, tiny_config, write_tone

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_audio_gan.py")


# ---------------------------------------------------------------- Config: choices, bounds and presets in one place

def test_choices_and_bounds_live_in_each_fields_metadata():
    checked = 0
    for f in dataclasses.fields(tag.Config):
        m = f.metadata
        bad = [("not-a-choice", m["choices"])] if m["choices"] else []
        bad += [(m["min"] - 1, "min")] if m["min"] is not None else []
        bad += [(m["above"], "above")] if m["above"] is not None else []
        bad += [(m["below"], "below"), (float("nan"), "nan")] if m["below"] is not None else []
        for value, why in bad:
            with pytest.raises(SystemExit, match=f"{f.name}="):
                tag.check_config(tag.Config(**{f.name: value}))
            checked += 1
        if m["choices"]:  # argparse reads the same choices: --help lists them, a wrong one is refused
            with pytest.raises(SystemExit):
                tag.parse_config([f"--{f.name}", "not-a-choice"])
    assert checked >= 30
    tag.check_config(tag.Config(device="cpu"))  # the shipped defaults pass
    with pytest.raises(SystemExit, match="epochs=0 must be at least 1"):
        tag.check_config(tag.Config(epochs=0))
    with pytest.raises(SystemExit, match="max_minutes=-1 must be 0 or more"):
        tag.check_config(tag.Config(max_minutes=-1))
    with pytest.raises(SystemExit, match="aux_weight=inf must be a finite number 0 or more"):
        tag.check_config(tag.Config(aux_weight=float("inf")))


def test_presets_fill_only_the_shipped_defaults_so_an_edited_default_wins():
    @dataclasses.dataclass
    class Edited(tag.Config):  # a user who edited two defaults in the file and left base_path="demo"
        epochs: int = tag.arg(20, "training epochs", min=1)
        scaling: str = tag.arg("per_bin", "GAN-side mel scaling", choices=("per_bin", "affine", "log1p"))

    cfg, sources = tag.apply_preset(*tag.parse_flags([], config=Edited))
    assert cfg.epochs == 20 and cfg.batch_size == tag.PRESETS["demo"]["batch_size"]  # their value; the rest demo
    assert sources["epochs"] == "edited default" and sources["batch_size"] == "preset demo"
    assert tag.parse_config(["--epochs", "7"], config=Edited).epochs == 7  # a flag still wins
    assert tag.parse_config([]).epochs == tag.PRESETS["demo"]["epochs"]  # unedited: the demo preset
    demo, own_data = tag.parse_config([]), tag.parse_config(["--base_path", "x"])
    assert (demo.lr_decay, demo.aux_weight) == (0.0, 0.0)  # the recipe the demo was timed and judged with
    assert (own_data.lr_decay, own_data.aux_weight) == (1.0, 1.0)  # a run on your data: the measured defaults
    assert tag.parse_config(["--arch", "seed", "--base_path", "x"], config=Edited).scaling == "per_bin"
    assert tag.parse_config(["--arch", "seed", "--base_path", "x"]).scaling == "log1p"
    assert tag.parse_config(["--preset", "seed", "--base_path", "x"]).arch == "seed"  # the preset sets the arch too
    defaults = {f.name: f.default for f in dataclasses.fields(tag.Config)}
    assert tag.SHIPPED == {k: defaults[k] for k in tag.SHIPPED}  # the defaults as shipped
    assert all(set(p) <= set(tag.SHIPPED) for p in tag.PRESETS.values())  # a preset only fills fields SHIPPED names


def test_train_from_python_takes_the_same_preset_as_the_command_line(monkeypatch):
    monkeypatch.setattr(tag.torch.cuda, "is_available", lambda: False)
    for argv, cfg in (([], tag.Config()), (["--base_path", "x"], tag.Config(base_path="x")),
                      (["--base_path", "x", "--lr", "1e-3"], tag.Config(base_path="x", lr=1e-3))):
        assert tag.apply_preset(cfg)[0] == tag.apply_preset(*tag.parse_flags(argv))[0], argv
    seen = []
    monkeypatch.setattr(tag, "setup_distributed", lambda cfg: seen.append(cfg) or (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        tag.train(tag.Config(base_path="x"))  # stops where the processes would start: the preset has applied
    assert (seen[0].batch_size, seen[0].g_channels, seen[0].d_channels) == (16, 32, 16)


def test_the_first_line_names_the_recipe_and_where_each_value_came_from(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tag.torch.cuda, "is_available", lambda: False)
    argv = ["--base_path", tiny_dataset, "--out_dir", str(tmp_path / "run"), "--n_frames", "16", "--batch_size", "4",
            "--epochs", "1", "--epoch_steps", "2", "--n_critic", "1", "--vocoder", "griffinlim", "--lr", "1e-3"]
    tag.main(argv)
    first = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert first.startswith("Recipe, preset cpu (auto: no GPU); --preset gpu for the GPU sizes:"), first
    assert "batch_size 4 [flag]" in first and "g_channels 32 [preset cpu]" in first and "lr 0.001 [flag]" in first
    assert "n_critic 1 [flag]" in first and "lambda_gp 10.0," in first  # a shipped default: no source
    tag.main(argv[:-2] + ["--epochs", "2", "--resume"])  # lr not given: the run's own 1e-3 is kept
    out = " ".join(capsys.readouterr().out.split())
    assert "lr 0.001 [checkpoint]" in out and "epochs 2 [flag]" in out


def test_help_shows_choices_and_the_preset_values_that_apply(capsys):
    with pytest.raises(SystemExit):
        tag.parse_config(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: 100; demo: 4)" in out and "(default: 'affine'; seed: 'log1p')" in out
    assert "{per_bin,affine,log1p}" in out and "{train,generate,evaluate}" in out
    assert out.count("(default:") == len(dataclasses.fields(tag.Config)) and "default: None" not in out

    @dataclasses.dataclass
    class Edited(tag.Config):
        epochs: int = tag.arg(20, "training epochs", min=1)

    with pytest.raises(SystemExit):
        tag.parse_config(["--help"], config=Edited)
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 20)" in out and "demo: 4" not in out  # the demo does not override an edited default


# ---------------------------------------------------------------- progress that fits where the output goes

def test_progress_prints_plain_lines_when_output_is_not_a_terminal(capsys):
    assert [i for i in tag.progress(range(50), "work")] == list(range(50))  # capsys: neither stream is a tty
    out, err = capsys.readouterr()
    assert "\r" not in out + err and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("work: 5/50 (10%)") and len(lines) == 9  # every tenth, not the end (others say so)
    bar = tag.progress(range(3, 10), "epoch 2/5", total=10, initial=3)  # a resumed epoch counts from its step
    for _ in bar:
        bar.set_postfix({"wdist": "0.5"})
    assert capsys.readouterr().out.splitlines()[0] == "epoch 2/5: 4/10 (40%) 0s, wdist 0.5"
    slow = tag.PlainProgress(range(1000), "slow", every=0.0)  # and at least every `every` seconds
    list(slow)
    assert len(capsys.readouterr().out.splitlines()) == 999


def test_progress_keeps_the_live_bar_in_a_terminal_and_a_text_bar_in_a_notebook_without_widgets(monkeypatch):
    monkeypatch.setattr(tag, "is_tty", lambda stream: True)
    bar = tag.progress(range(5), "x")
    assert isinstance(bar, tag.tqdm_std.tqdm) and not bar.leave
    bar.close()
    monkeypatch.setattr(tag, "in_notebook", lambda: True)
    monkeypatch.setattr(tag.importlib.util, "find_spec", lambda name, *a: None)  # no ipywidgets
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no TqdmWarning ("IProgress not found")
        bar = tag.progress(range(5), "x")
        list(bar)
    assert type(bar) is tag.tqdm_std.tqdm and bar.leave  # one text bar per loop, kept
    assert isinstance(tag.progress(range(5), "x", disable=True), tag.tqdm_std.tqdm)


def test_training_log_has_no_carriage_returns(tiny_dataset, tmp_path, capsys):
    tag.train(tiny_config(tiny_dataset, tmp_path / "run", epoch_steps=4))
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    assert "epoch 1/1: 1/4 (25%)" in out and "Computing mels: " in out


# ---------------------------------------------------------------- a run says where its outputs are

def test_train_generate_and_evaluate_say_where_to_look_and_evaluate_refreshes_the_gallery(tiny_dataset, tmp_path,
                                                                                         capsys):
    out = tmp_path / "run"
    tag.train(tiny_config(tiny_dataset, out))
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (f"Outputs: gallery {out / 'index.html'}, samples {out / 'gan_generated_audio'}{os.sep}, "
                    f"checkpoint {out / 'checkpoint.pt'}")
    tag.generate(tag.Config(mode="generate", out_dir=str(out), n_generate=1, vocoder="griffinlim", device="cpu"))
    said = capsys.readouterr().out
    assert str(out / "gan_generated_audio" / "generated") in said
    assert str(out / "gan_spectrogram_plots" / "generated.png") in said
    assert "<h2>Evaluation" not in (out / "index.html").read_text()
    tag.evaluate(tag.Config(mode="evaluate", out_dir=str(out), eval_samples=2, eval_steps=5, vocoder="griffinlim",
                            device="cpu"))
    page = (out / "index.html").read_text()
    assert "<h2>Evaluation" in page and "inception_score" in page and "vocoder ceiling" in page  # new metrics shown
    assert f"Gallery updated: {out / 'index.html'}" in capsys.readouterr().out
    assert "<td>epochs</td><td>1</td>" in page  # the configuration shown is the run's, not the evaluate command's


def test_the_demo_names_its_data_folder(tmp_path):
    (tmp_path / "demo_data").mkdir()
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    line = tag.where_to_look(tag.Config(out_dir=str(tmp_path)))
    assert line == f"Outputs: checkpoint {tmp_path / 'checkpoint.pt'}, demo data {tmp_path / 'demo_data'}{os.sep}"


# ---------------------------------------------------------------- TensorBoard, when it is installed and asked for

def test_tensorboard_logs_losses_metrics_grids_and_audio_and_resumes(tiny_dataset, tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    cfg = tiny_config(tiny_dataset, out, tensorboard=True, eval_every=1, eval_steps=5, eval_samples=2)
    tag.train(cfg)
    tag.train(dataclasses.replace(cfg, epochs=2, resume=True))
    acc = accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "audio": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tag.METRICS) | {f"eval/{m}" for m in tag.EVAL_METRICS} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss/gen")] == [1, 2, 3, 4, 5, 6]  # each reading once, across the resume
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [3, 6]
    assert tags["images"] == ["samples/spectrograms"] and [e.step for e in acc.Images("samples/spectrograms")] == [3, 6]
    assert sorted(tags["audio"]) == ["samples/high", "samples/low", "samples/noise"]
    assert [e.step for e in acc.Audio("samples/low")] == [3, 6]


def test_tensorboard_is_never_required_and_asking_for_it_without_it_is_one_line(tiny_dataset, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(SystemExit) as refused:
        tag.train(tiny_config(tiny_dataset, tmp_path / "tb", tensorboard=True))
    lines = [line for line in str(refused.value).splitlines() if "tensorboard" in line]
    assert len(lines) == 1 and "pip install tensorboard" in lines[0]
    assert not (tmp_path / "tb").exists()  # refused before any work
    tag.train(tiny_config(tiny_dataset, tmp_path / "off"))  # off: trains without it
    assert not (tmp_path / "off" / "tensorboard").exists()


GPU_SIZES = {k: tag.SHIPPED[k] for k in tag.CPU_SIZES}
CPU_SIZES = tag.CPU_SIZES


def sizes(cfg):
    return {k: getattr(cfg, k) for k in tag.CPU_SIZES}


def test_a_cpu_run_takes_the_cpu_sizes_and_says_so_unless_a_flag_or_an_edit_sets_them(monkeypatch, capsys):
    monkeypatch.setattr(tag.torch.cuda, "is_available", lambda: False)
    assert sizes(tag.parse_config(["--base_path", "data"])) == CPU_SIZES == {"batch_size": 16, "g_channels": 32,
                                                                             "d_channels": 16}
    cfg, sources = tag.apply_preset(*tag.parse_flags(["--base_path", "data", "--batch_size", "32"]))
    assert sizes(cfg) == {**CPU_SIZES, "batch_size": 32}  # a flag wins
    line = " ".join(tag.recipe_line(cfg, sources).split())  # names the sizes it took, and how to undo that
    assert line.startswith("Recipe, preset cpu (auto: no GPU); --preset gpu for the GPU sizes: ")
    assert "batch_size 32 [flag]" in line and "g_channels 32 [preset cpu]" in line
    assert sizes(tag.parse_config(["--base_path", "data", "--preset", "gpu"])) == GPU_SIZES

    @dataclasses.dataclass
    class Edited(tag.Config):  # a user who set the batch size in the file
        batch_size: int = tag.arg(64, "examples per step", min=1)

    assert tag.parse_config(["--base_path", "data"], config=Edited).batch_size == 64  # an edited default wins
    assert sizes(tag.parse_config(["--base_path", "data", "--device", "cpu"])) == CPU_SIZES
    capsys.readouterr()
    cfg = tag.parse_config([])
    assert sizes(cfg) == CPU_SIZES and cfg.n_frames == 64


def test_the_lr_follows_the_widths_it_was_measured_at(monkeypatch):
    """Widths 64 blew the penalty up at lr 2e-4 (bench/RESULTS.md): the GPU sizes get 1e-4, the CPU sizes keep 2e-4."""
    for cuda, lr in ((True, 1e-4), (False, 2e-4)):
        monkeypatch.setattr(tag.torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert tag.parse_config(["--base_path", "data"]).lr == lr
        assert tag.parse_config(["--base_path", "data", "--lr", "3e-4"]).lr == 3e-4  # a flag wins
    assert tag.parse_config(["--base_path", "data", "--preset", "gpu"]).lr == 1e-4  # on a CPU too, when asked
    assert tag.parse_config(["--base_path", "data", "--preset", "cpu"]).lr == 2e-4


def test_a_gpu_run_keeps_the_gpu_sizes(monkeypatch, capsys):
    monkeypatch.setattr(tag.torch.cuda, "is_available", lambda: True)  # a mocked CUDA machine
    assert sizes(tag.parse_config(["--base_path", "data"])) == GPU_SIZES
    assert sizes(tag.parse_config(["--base_path", "data", "--device", "cuda:0"])) == GPU_SIZES
    assert sizes(tag.parse_config(["--base_path", "data", "--preset", "cpu"])) == CPU_SIZES  # asked for them
    assert sizes(tag.parse_config(["--base_path", "data", "--device", "cpu"])) == CPU_SIZES  # asked for the CPU


def test_the_run_says_how_long_it_will_take(tiny_dataset, tmp_path, capsys):
    tag.train(tiny_config(tiny_dataset, tmp_path / "run", epochs=3, epoch_steps=12))
    out = capsys.readouterr().out
    speed = re.search(r"Speed: ([\d.]+) steps/s \(batch 4, 16 frames, cpu\): an epoch of 12 steps takes about "
                      r"([\d.]+) s, the (\d+) steps left about ([\d.]+) s", out)
    rate, left, seconds = float(speed[1]), int(speed[3]), float(speed[4])
    assert rate > 0 and 0 < left < 36 and seconds == pytest.approx(left / rate, rel=0.06, abs=0.06)  # at that rate
    assert re.search(r"epoch 1/3  step 12  [\d.]+s  about [\d.]+ s left", out)
    assert re.search(r"epoch 3/3  step 36  [\d.]+s  \{", out)  # nothing left to wait for
    assert out.count("Speed:") == 1


def test_a_slow_first_step_is_estimated_at_once_and_epoch_end_work_is_not_a_step(capsys):
    from types import SimpleNamespace
    now = tag.time.time()
    run = SimpleNamespace(device=tag.torch.device("cpu"), cfg=tag.Config(epochs=10, max_minutes=10, n_frames=512), epoch=0,
                          epoch_step=1, step=1, deadline=now + 600)
    pace = tag.Pace()
    pace.start = (now - 40, 0)  # the first step took 40 s: no need to wait for 20 more
    pace.step(run, epoch_steps=4)
    assert pace.said and capsys.readouterr().out.startswith(
        "Speed: 40.0 s per step (batch 128, 512 frames, cpu): an epoch of 4 steps takes about 3 min, the 39 steps "
        "left about 26 min, plus sampling and a checkpoint at each epoch's end; --max_minutes 10 stops it after 10 min")
    pace = tag.Pace(steps=4)
    pace.warm, pace.done, pace.start = True, (2.0, 3), (now - 1, 0)  # 3 steps in 2 s, then 1 step in 1 s
    run.step = 1
    pace.step(run, epoch_steps=100)
    assert "Speed: 1.33 steps/s" in capsys.readouterr().out  # 4 steps in 3 s: the pause between is not counted


def test_n_frames_auto_is_the_95th_percentile_rounded_up_to_16_in_32_to_512():
    cfg = tag.Config()
    assert cfg.n_frames == 0  # auto is the shipped default
    cases = (([57] * 20, 64), ([129] * 10, 144), ([5] * 10, 32), ([2000] * 3, 512), ([30] * 94 + [90] * 6, 96),
             ([43] * 12 + [41369], 48))  # one 20-minute clip among 12 short ones does not set the size
    for lengths, frames in cases:
        assert tag.auto_frames(torch.tensor(lengths)) == frames, lengths


def test_norm_frames_auto_is_where_the_clips_are_said_stored_and_kept_on_resume(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "run"
    result = tag.train(tiny_config(tiny_dataset, out, n_frames=128))  # clips of 0.3-0.7 s: the data's size is 64
    assert "BatchNorm takes its statistics from the first 64 of the 128 frames" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["norm_frames"] == 64
    norms = [m for m in result["generator"].modules() if isinstance(m, tag.SoundBatchNorm)]
    assert norms and all((m.frames, m.of) == (64, 128) for m in norms)
    tag.train(tiny_config(tiny_dataset, out, n_frames=128, epochs=2, resume=True))  # auto again: the run's own 64
    with pytest.raises(SystemExit, match="norm_frames: checkpoint 64, now 32"):
        tag.train(tiny_config(tiny_dataset, out, n_frames=128, norm_frames=32, epochs=3, resume=True))
    old = tmp_path / "old"  # as the script wrote it before --norm_frames: statistics over every frame, no such key
    tag.train(tiny_config(tiny_dataset, old, n_frames=128, norm_frames=128))
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["norm_frames"]
    torch.save(ckpt, old / "checkpoint.pt")
    tag.train(tiny_config(tiny_dataset, old, n_frames=128, epochs=2, resume=True))
    assert torch.load(old / "checkpoint.pt", weights_only=True)["config"]["norm_frames"] == 128
    tag.train(tiny_config(tiny_dataset, tmp_path / "auto", n_frames=0))  # at the data's own size: every frame
    assert torch.load(tmp_path / "auto" / "checkpoint.pt", weights_only=True)["config"]["norm_frames"] == 64


def test_coarse_critic_auto_is_on_for_long_sounds_only_stored_and_kept_on_resume(tmp_path, tiny_dataset, capsys):
    long = tmp_path / "long"
    for i in range(4):  # 2.5-s clips: 213 frames, n_frames auto 224, sound 224 frames >= 192
        write_tone(str(long / "a" / f"a{i}.wav"), 300 + 10 * i, seconds=2.5)
        write_tone(str(long / "b" / f"b{i}.wav"), 900, noise=0.3, seconds=2.5, seed=i)
    out, quick = tmp_path / "run", dict(n_frames=0, epoch_steps=1, samples_per_class=1)
    result = tag.train(tiny_config(str(long), out, **quick))
    assert result["config"].n_frames == 224 and result["config"].coarse_critic == 4
    assert "A second critic hears the mel pooled 4x over time, as the sound lasts 224 frames" in capsys.readouterr().out
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["coarse_critic"] == 4 and any(k.startswith("coarse.") for k in ckpt["critic"])
    tag.train(tiny_config(str(long), out, epochs=2, resume=True, **quick))  # auto again: the run's own 4
    with pytest.raises(SystemExit, match="coarse_critic: checkpoint 4, now 1"):
        tag.train(tiny_config(str(long), out, coarse_critic=1, epochs=3, resume=True, **quick))
    short = tag.train(tiny_config(tiny_dataset, tmp_path / "short", n_frames=128))  # sound 64 frames: none
    assert short["config"].coarse_critic == 1
    ckpt = torch.load(tmp_path / "short" / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("coarse.") for k in ckpt["critic"])
    del ckpt["config"]["coarse_critic"]  # as the script wrote it before --coarse_critic: read as none
    torch.save(ckpt, tmp_path / "short" / "checkpoint.pt")
    tag.train(tiny_config(tiny_dataset, tmp_path / "short", n_frames=128, epochs=2, resume=True))
    with pytest.raises(SystemExit, match="coarse_critic=4 leaves the coarse critic 8 of n_frames=32"):
        tag.train(tiny_config(tiny_dataset, tmp_path / "bad", n_frames=32, coarse_critic=4))
    with pytest.raises(SystemExit, match="coarse_critic=8 leaves the coarse critic 8 of n_frames=64"):
        tag.train(tiny_config(tiny_dataset, tmp_path / "bad_auto", n_frames=0, coarse_critic=8))  # auto size: 64


def test_n_frames_auto_is_said_stored_and_kept_on_resume(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "run"
    result = tag.train(tiny_config(tiny_dataset, out, n_frames=0))
    said = capsys.readouterr().out
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["n_frames"] == 64 and result["config"].n_frames == 64  # the clips: 0.3-0.7 s
    assert "n_frames 64 (0.74 s), from the data: 12 of its 12 clips fit whole, longer ones are cropped" in said
    tag.train(tiny_config(tiny_dataset, out, n_frames=0, epochs=2, resume=True))  # auto again: the run's own size
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    with pytest.raises(SystemExit, match="n_frames: checkpoint 64, now 16"):  # an explicit size still has to match
        tag.train(tiny_config(tiny_dataset, out, n_frames=16, epochs=3, resume=True))
