"""Nothing written outside out_dir, nothing overwritten or deleted unasked, no traceback from a damaged checkpoint."""
import dataclasses
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import tag, tiny_config, write_tone

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_audio_gan.py")


def flags(data, out, **kw):
    """tiny_config's settings as command-line flags, for main()."""
    cfg = tiny_config(data, out, **kw)
    return [a for k in ("base_path", "out_dir", "n_frames", "batch_size", "latent_dim", "embed_dim", "g_channels",
                        "d_channels", "epochs", "epoch_steps", "n_critic", "log_every", "vocoder", "device", *kw)
            for a in (f"--{k}", str(getattr(cfg, k)))]


@pytest.fixture
def trained(tmp_path, tiny_dataset):
    """A finished one-epoch run's folder."""
    tag.train(tiny_config(tiny_dataset, tmp_path / "run"))
    return tmp_path / "run"


def test_a_rerun_without_resume_is_refused_and_overwrite_starts_over_alone(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "run"
    tag.train(tiny_config(tiny_dataset, out, epochs=2))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"holds a run that has trained 2 of 2 epochs\. Pass --resume .* --overwrite"):
        tag.train(tiny_config(tiny_dataset, out, epochs=1))  # a notebook cell run again, with another --epochs
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2  # untouched
    capsys.readouterr()
    tag.train(tiny_config(tiny_dataset, out, epochs=1, overwrite=True))
    said = capsys.readouterr().out
    assert re.search(r"deleted the earlier run's \d+ files \(checkpoint.pt, gan_generated_audio, gan_loss_plot.png, "
                     r"gan_spectrogram_plots, index.html, losses.csv\)", said)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert sorted(os.listdir(out / "gan_generated_audio")) == ["epoch_001"]  # no epoch_002 of the other run
    assert "epoch_002" not in (out / "index.html").read_text()
    assert (out / "notes.txt").read_text() == "mine" and (out / "mel_cache").is_dir()
    with pytest.raises(SystemExit, match="resume and overwrite contradict"):
        tag.check_config(tiny_config(tiny_dataset, out, resume=True, overwrite=True))


def test_only_the_scripts_own_temporary_files_are_removed(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("notes.tmp1", "data.json.tmp4242", f"x.wav{tag.TMP_MARK}"):
        (out / name).write_text("mine")
    (out / "folder.tmp7").mkdir()
    (out / f"folder{tag.TMP_MARK}7").mkdir()  # a folder, even with our name: never removed
    (out / f"checkpoint.pt{tag.TMP_MARK}4242").write_text("left by a killed run")
    tag.train(tiny_config(tiny_dataset, out))
    left = set(os.listdir(out))
    assert {"notes.tmp1", "data.json.tmp4242", f"x.wav{tag.TMP_MARK}", "folder.tmp7", f"folder{tag.TMP_MARK}7"} <= left
    assert f"checkpoint.pt{tag.TMP_MARK}4242" not in left


@pytest.mark.parametrize("bad", ["../../escape", "/abs/escape", "", "..", "a\0b"])
def test_class_names_from_a_checkpoint_must_be_single_folder_names(trained, tmp_path, tiny_dataset, bad):
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    bad = str(tmp_path / "abs_escape") if bad == "/abs/escape" else bad
    ckpt["classes"][0] = bad
    torch.save(ckpt, trained / "checkpoint.pt")
    before = set(os.listdir(tmp_path))
    with pytest.raises(SystemExit, match=r"class .* is not a single folder name") as err:
        tag.generate(tag.Config(mode="generate", out_dir=str(trained / "gen"),
                                checkpoint=str(trained / "checkpoint.pt"), vocoder="griffinlim", device="cpu"))
    assert "\n" not in str(err.value)
    assert set(os.listdir(tmp_path)) == before and not (trained / "gen").exists()  # nothing written anywhere


def test_long_class_folder_names_are_refused_up_front_and_dollar_signs_plot(tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("x$_$y", "plain"):
        for i in range(3):
            write_tone(str(data / name / f"{i}.wav"), 300 + 200 * i + 700 * (name == "plain"))
    tag.train(tiny_config(str(data), tmp_path / "out"))  # matplotlib reads "$_$" as maths unless escaped
    assert (tmp_path / "out" / "gan_spectrogram_plots" / "epoch_001.png").is_file()
    os.rename(data / "plain", data / ("p" * 210))
    capsys.readouterr()
    with pytest.raises(SystemExit, match=r"Class folder 'p{40}'\.\.\. is longer than 200 bytes"):
        tag.train(tiny_config(str(data), tmp_path / "out2"))
    assert "Computing mels" not in capsys.readouterr().out  # refused before any work


def test_a_lock_that_is_a_link_or_a_folder_is_refused_and_not_followed(tmp_path, tiny_dataset):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not overwrite")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(precious, out / ".lock")
    with pytest.raises(SystemExit, match=r"\.lock' is a link, not the lock file"):
        tag.train(tiny_config(tiny_dataset, out))
    assert precious.read_text() == "do not overwrite"
    os.remove(out / ".lock")
    (out / ".lock").mkdir()
    with pytest.raises(SystemExit, match=r"\.lock' is a folder"):
        tag.train(tiny_config(tiny_dataset, out))


def test_class_folders_that_link_into_or_above_the_dataset_are_not_classes(tiny_dataset, capsys):
    os.symlink("..", os.path.join(tiny_dataset, "up"))
    os.symlink(".", os.path.join(tiny_dataset, "self"))
    os.symlink(os.path.join(tiny_dataset, "low"), os.path.join(tiny_dataset, "low_again"))
    classes, files, _ = tag.discover(tiny_dataset)
    assert classes == ["high", "low", "noise"] and len(files) == 12
    said = capsys.readouterr().out
    assert all(f"Not a class: {os.path.join(tiny_dataset, n)!r}" in said for n in ("up", "self", "low_again"))


def damaged(ckpt, case):
    """ckpt with one field damaged as a crafted or corrupted file could have it."""
    if case == "history shape":
        ckpt["history"]["step"] = ckpt["history"]["step"] + [7]
    elif case == "history type":
        ckpt["history"]["gp"] = "nan"
    elif case == "fixed_noise list":
        ckpt["fixed_noise"] = ckpt["fixed_noise"].tolist()
    elif case == "running shape":
        ckpt["running"] = torch.zeros(2, 3)
    elif case == "g_channels -1":
        ckpt["config"]["g_channels"] = -1
    elif case == "n_mels str":
        ckpt["config"]["n_mels"] = "80"
    elif case == "classes str":
        ckpt["classes"] = "high"
    elif case == "scalers":
        ckpt["scalers"] = [{}]
    elif case == "rng dtype":
        ckpt["rng_cpu"] = ckpt["rng_cpu"].float()
    return ckpt


@pytest.mark.parametrize("case", ["history shape", "history type", "fixed_noise list", "running shape",
                                  "g_channels -1", "n_mels str", "classes str", "scalers", "rng dtype"])
def test_damaged_checkpoint_fields_are_refused_in_one_line(trained, tiny_dataset, case):
    torch.save(damaged(torch.load(trained / "checkpoint.pt", weights_only=True), case), trained / "checkpoint.pt")
    for run in (lambda: tag.train(tiny_config(tiny_dataset, trained, epochs=2, resume=True)),
                lambda: tag.generate(tag.Config(mode="generate", out_dir=str(trained), vocoder="griffinlim",
                                                device="cpu"))):
        with pytest.raises(SystemExit, match="is damaged") as err:
            run()
        assert str(trained / "checkpoint.pt") in str(err.value) and "\n" not in str(err.value), case


CTRL_C_WHILE_READING = """
import sys
sys.path.insert(0, {repo!r})
import train_audio_gan as tag
def interrupted(path, sample_rate):
    raise KeyboardInterrupt
tag.load_audio = interrupted
tag.main(sys.argv[1:])
"""


def test_ctrl_c_while_the_mels_are_computed_is_one_line(tmp_path, tiny_dataset):
    code = CTRL_C_WHILE_READING.format(repo=os.path.dirname(SCRIPT))
    run = subprocess.run([sys.executable, "-c", code, *flags(tiny_dataset, tmp_path / "out")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines() == ["Interrupted; no file is left half-written."]


def test_resume_keeps_the_runs_own_lr_unless_a_flag_sets_it(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "run"
    tag.main(flags(tiny_dataset, out, lr=1e-4, beta1=0.0, lr_decay=0.0))  # constant: the optimiser's lr is the setting
    capsys.readouterr()
    tag.main(flags(tiny_dataset, out, epochs=2) + ["--resume"])  # lr and beta1 not given: the run's own
    said = capsys.readouterr().out
    assert "lr 0.0001 ->" not in said and "Kept the run's own lr 0.0001, lr_decay 0.0, beta1 0.0" in said
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["lr"] == 1e-4 and ckpt["opt_g"]["param_groups"][0]["lr"] == 1e-4
    tag.main(flags(tiny_dataset, out, epochs=3, lr=5e-5) + ["--resume"])  # given: it wins, and says so
    assert "lr 0.0001 -> 5e-05" in capsys.readouterr().out


def test_a_run_from_before_lr_decay_resumes_with_its_constant_lr(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    tag.main(flags(tiny_dataset, out))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    lr = ckpt["config"]["lr"]  # the run's own (the device's preset's)
    del ckpt["config"]["lr_decay"]  # as an older version of the script wrote it
    torch.save(ckpt, out / "checkpoint.pt")
    tag.main(flags(tiny_dataset, out, epochs=2) + ["--resume"])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["lr_decay"] == 0.0 and ckpt["opt_g"]["param_groups"][0]["lr"] == lr


def test_each_generate_run_writes_folders_of_its_own(trained, capsys):
    cfg = tag.Config(mode="generate", out_dir=str(trained), vocoder="griffinlim", device="cpu", n_generate=3)
    first = tag.generate(cfg)
    second = tag.generate(dataclasses.replace(cfg, n_generate=1))
    assert os.path.basename(first) == "generated" and os.path.basename(second) == "generated_2"
    assert len(os.listdir(first)) == 9 and len(os.listdir(second)) == 3  # the first run's files untouched
    assert (trained / "gan_spectrogram_plots" / "generated_2.png").is_file()
    assert "Wrote 3 wav files to" in capsys.readouterr().out.splitlines()[-1]

