"""Reliability, round four: `--overwrite` deletes only what this script wrote, and only once the new run is checked;
generate runs never share or reuse a folder; a checkpoint that is a link stays one; a notebook's mistyped flag is
refused; a checkpoint.pt that is a folder or is damaged is named for what it is."""
import argparse
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import tag, tiny_config, write_tone
from test_reliability import HOLD_LOCK


def epoch_of(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]


@pytest.fixture
def earlier(tmp_path, tiny_dataset):
    """A finished two-epoch run in tmp_path/run."""
    tag.train(tiny_config(tiny_dataset, tmp_path / "run", epochs=2))
    return tmp_path / "run"


@pytest.mark.parametrize("mistake", ["base_path", "batch_size", "vocoder"])
def test_overwrite_deletes_nothing_when_the_new_run_is_refused(earlier, tiny_dataset, mistake):
    wrong = {"base_path": dict(base_path=str(earlier / "typo")), "batch_size": dict(batch_size=64),
             "vocoder": dict(vocoder="bigvgan:" + str(earlier / "no_such_model"))}[mistake]  # offline, say
    before = sorted(p.relative_to(earlier) for p in earlier.rglob("*"))
    with pytest.raises(SystemExit):
        tag.train(tiny_config(**{"base_path": tiny_dataset, "out_dir": earlier, "overwrite": True, **wrong}))
    assert sorted(p.relative_to(earlier) for p in earlier.rglob("*")) == before and epoch_of(earlier) == 2


def test_overwrite_deletes_only_what_this_script_wrote(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "mine"  # the user's own files, some with the names of run outputs, and no earlier run
    for rel in ("index.html", "losses.csv", "tensorboard/notes.txt", "gan_generated_audio/keep.txt"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("mine")
    tag.train(tiny_config(tiny_dataset, out, overwrite=True))
    assert "deleted" not in capsys.readouterr().out  # no earlier run: nothing of the user's is "the earlier run's"
    for rel in ("tensorboard/notes.txt", "gan_generated_audio/keep.txt"):
        assert (out / rel).read_text() == "mine"
    tag.train(tiny_config(tiny_dataset, out, overwrite=True, epochs=1, epoch_steps=2))  # over a run of ours
    said = capsys.readouterr().out
    assert "--overwrite: deleted the earlier run's" in said and "checkpoint.pt" in said
    assert (out / "gan_generated_audio" / "keep.txt").read_text() == "mine"  # a user's file in our folder stays
    assert (out / "tensorboard" / "notes.txt").read_text() == "mine"
    assert epoch_of(out) == 1 and torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2


def test_a_kill_midway_through_overwrite_leaves_the_checkpoint_so_a_plain_rerun_is_still_refused(
        earlier, tiny_dataset, monkeypatch):
    removed, remove = [], os.remove

    def killed_after_three(path):  # the fourth deletion never happens: as if the process were killed there
        if len(removed) == 3:
            raise KeyboardInterrupt
        removed.append(path)
        remove(path)

    monkeypatch.setattr(tag.os, "remove", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        tag.train(tiny_config(tiny_dataset, earlier, overwrite=True))
    monkeypatch.setattr(tag.os, "remove", remove)
    assert str(earlier / "checkpoint.pt") not in removed and epoch_of(earlier) == 2
    with pytest.raises(SystemExit, match="holds a run that has trained 2 of 2 epochs"):
        tag.train(tiny_config(tiny_dataset, earlier, epochs=1))
    tag.train(tiny_config(tiny_dataset, earlier, epochs=1, overwrite=True))  # --overwrite again finishes the job
    assert sorted(os.listdir(earlier / "gan_generated_audio")) == ["epoch_001"] and epoch_of(earlier) == 1


def test_what_evaluate_mode_writes_is_the_runs_and_overwrite_deletes_it(earlier, tiny_dataset):
    tag.evaluate(tag.Config(mode="evaluate", out_dir=str(earlier), eval_steps=5, eval_samples=2, vocoder="griffinlim",
                            device="cpu"))
    assert (earlier / "eval_metrics.csv").is_file()
    tag.train(tiny_config(tiny_dataset, earlier, overwrite=True))  # no evaluation in the new run
    assert not (earlier / "eval_metrics.csv").exists() and not (earlier / "gan_eval_plot.png").exists()


def test_a_checkpoint_that_is_a_link_is_written_through(tmp_path, tiny_dataset):
    drive = tmp_path / "drive"
    drive.mkdir()
    out = tmp_path / "run"
    tag.train(tiny_config(tiny_dataset, out))
    os.replace(out / "checkpoint.pt", drive / "checkpoint.pt")
    os.symlink(drive / "checkpoint.pt", out / "checkpoint.pt")
    tag.train(tiny_config(tiny_dataset, out, epochs=2, resume=True))
    assert os.path.islink(out / "checkpoint.pt")
    assert torch.load(drive / "checkpoint.pt", weights_only=True)["epoch"] == 2  # the linked file moved on


def test_generate_takes_the_lock_and_never_reuses_a_name(earlier):
    cfg = tag.Config(mode="generate", out_dir=str(earlier), vocoder="griffinlim", device="cpu", n_generate=1)
    first = tag.generate(cfg)
    plot = earlier / "gan_spectrogram_plots" / "generated.png"
    stamp = plot.stat().st_mtime_ns
    for name in os.listdir(first):  # the user deletes the first run's wavs, and generates again
        os.remove(os.path.join(first, name))
    os.rmdir(first)
    again = tag.generate(cfg)
    assert os.path.basename(again) == "generated_2" and plot.stat().st_mtime_ns == stamp  # the old plot untouched
    if tag.fcntl is None:
        pytest.skip("no advisory locks on this platform")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(earlier / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(SystemExit, match=rf"pid {holder.pid}\b.*training or generating"):
            tag.generate(cfg)  # another generate, or an --overwrite, is at work there
    finally:
        holder.kill()
        holder.wait()
    assert sorted(os.listdir(earlier / "gan_generated_audio")) == ["epoch_001", "epoch_002", "generated_2"]


def test_partial_files_a_killed_run_left_in_sample_folders_are_cleared(earlier, tiny_dataset):
    partial = earlier / "gan_generated_audio" / "epoch_001" / f"high_0.wav{tag.TMP_MARK}4242"
    partial.write_text("half")
    mine = earlier / "gan_generated_audio" / "epoch_001" / "high_0.wav.tmp7"
    mine.write_text("the user's")
    tag.train(tiny_config(tiny_dataset, earlier, epochs=3, resume=True))
    assert not partial.exists() and mine.exists()


def test_a_mistyped_flag_is_refused_in_a_notebook_too(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # as inside a Jupyter kernel
    monkeypatch.setattr(sys, "argv", ["train_audio_gan.py", "--base_path", "ds", "--epoch", "1"])
    with pytest.raises(SystemExit):
        tag.parse_config()
    assert "unknown flag(s) --epoch" in capsys.readouterr().err
    for kernel in (["-f", "/root/.local/share/jupyter/runtime/kernel-1.json"], ["--f=/tmp/kernel-2.json"]):
        monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", *kernel, "--epochs", "3"])
        assert tag.parse_config().epochs == 3  # the kernel's own -f FILE is not ours to judge


@pytest.mark.parametrize("damage", ["folder", "empty", "truncated"])
def test_a_checkpoint_that_is_a_folder_or_damaged_is_named_once(earlier, tiny_dataset, damage):
    path = earlier / "checkpoint.pt"
    data = path.read_bytes()
    path.unlink()
    if damage == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    why = {"folder": "is a folder, not a checkpoint", "empty": "it is empty",
           "truncated": "it is cut short, or not a file torch.save wrote"}[damage]
    for resume in (False, True):  # the plain rerun and --resume say the same thing
        with pytest.raises(SystemExit, match=why) as e:
            tag.train(tiny_config(tiny_dataset, earlier, epochs=3, resume=resume))
        assert len(str(e.value)) < 300 and "\n" not in str(e.value)


# ---------------------------------------------------------------- crashes and hangs

def test_generate_makes_vocodes_and_writes_a_chunk_at_a_time(earlier, monkeypatch):
    batches, forward = [], tag.Generator.forward
    monkeypatch.setattr(tag.Generator, "forward", lambda self, z, y: batches.append(len(z)) or forward(self, z, y))
    monkeypatch.setattr(tag, "SAMPLE_CHUNK", 4)  # 200,000 samples at the real chunk size, at test size
    wav_dir = tag.generate(tag.Config(mode="generate", out_dir=str(earlier), vocoder="griffinlim", device="cpu",
                                      n_generate=5))
    assert max(batches) <= 4 and sum(batches) == 15  # never every sample at once
    assert sorted(os.listdir(wav_dir)) == sorted(f"{c}_{k}.wav" for c in ("high", "low", "noise") for k in range(5))


@pytest.mark.parametrize("content", ["a dict", "a list", "another shape"])
def test_a_wrongly_shaped_ceiling_cache_is_vocoded_afresh(tmp_path, tiny_dataset, capsys, content):
    cfg = tiny_config(tiny_dataset, tmp_path / "out", eval_steps=5, eval_samples=2)
    data = tag.MelClips(cfg, torch.device("cpu"))
    first = tag.Evaluator(cfg, data, torch.device("cpu"), None)
    (ceiling,) = (tmp_path / "out" / "mel_cache").glob("ceiling-*.pt")
    torch.save({"a dict": {"a": 1}, "a list": [1, 2], "another shape": torch.zeros(2, 3).half()}[content], ceiling)
    again = tag.Evaluator(cfg, data, torch.device("cpu"), None)
    assert again.ceiling["frechet_mel"] == first.ceiling["frechet_mel"]  # vocoded again: the same clips
    assert torch.load(ceiling, weights_only=True).shape[0] == 2  # the two held-out clips


def test_many_classes_draw_at_most_plot_rows(tmp_path, monkeypatch, capsys):
    for i in range(tag.PLOT_ROWS + 6):  # more classes than a figure shows, one clip each
        write_tone(str(tmp_path / "data" / f"c{i:02d}" / "a.wav"), 200 + 50 * i, seconds=0.2)
    drawn, plot = [], tag.plot_mels
    monkeypatch.setattr(tag, "plot_mels", lambda mels, rows, path, cfg, title: (drawn.append((len(rows), title)),
                                                                                plot(mels, rows, path, cfg, title)))
    tag.train(tiny_config(str(tmp_path / "data"), tmp_path / "out", samples_per_class=1, epoch_steps=1))
    n = tag.PLOT_ROWS + 6
    assert drawn == [(tag.PLOT_ROWS, f"Real examples, first {tag.PLOT_ROWS} of {n} classes"),
                     (tag.PLOT_ROWS, f"Epoch 1, first {tag.PLOT_ROWS} of {n} classes")]
    assert len(os.listdir(tmp_path / "out" / "gan_generated_audio" / "epoch_001")) == n  # every class is heard


# ---------------------------------------------------------------- misleading: every message names the real cause

def test_a_full_disk_during_generate_says_so_and_what_was_written(earlier, monkeypatch):
    written, write = [], tag.sf.write

    def fills_the_disk(path, *a, **k):
        if len(written) == 2:
            raise RuntimeError("System error.")  # what libsndfile says on ENOSPC
        written.append(path)
        write(path, *a, **k)

    monkeypatch.setattr(tag.sf, "write", fills_the_disk)
    monkeypatch.setattr(tag.shutil, "disk_usage", lambda path: tag.shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    with pytest.raises(SystemExit, match=r"No space left on device\. 2 of 6 wav files were written to .*generated"):
        tag.main(["--mode", "generate", "--out_dir", str(earlier), "--vocoder", "griffinlim", "--device", "cpu",
                  "--n_generate", "2"])


def test_evaluation_sets_are_told_apart(earlier, tiny_dataset, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="eval_path='.*' is base_path: held-out clips must not be training clips"):
        tag.check_config(tiny_config(tiny_dataset, earlier, eval_path=tiny_dataset))
    other = tmp_path / "held_out"
    shutil.copytree(tiny_dataset, other)
    cfg = tiny_config(tiny_dataset, earlier, eval_steps=5, eval_samples=2)
    data = tag.MelClips(cfg, torch.device("cpu"))
    generator = tag.build_models(cfg, 3)[0]
    for held in ("", str(other), ""):  # the default set, another, the default again
        c = tag.dataclasses.replace(cfg, eval_path=held)
        tag.Evaluator(c, data, torch.device("cpu"), None).evaluate(generator, data.scale, None, 1)
    rows = tag.read_rows(str(earlier / "eval_metrics.csv"))
    assert [r["epoch"] for r in rows] == ["1", "1"] and rows[0]["eval_set"] != rows[1]["eval_set"]
    os.rename(tiny_dataset, tmp_path / "moved")  # evaluate from elsewhere: the dataset is not where it trained
    monkeypatch.chdir(earlier)
    with pytest.raises(SystemExit, match=r"The checkpoint's dataset, --base_path .* as given when it trained, is not"):
        tag.evaluate(tag.Config(mode="evaluate", out_dir=".", vocoder="griffinlim", device="cpu"))


def test_an_epoch_shorter_than_log_every_still_reads_and_writes_its_losses(tiny_dataset, tmp_path, capsys):
    tag.train(tiny_config(tiny_dataset, tmp_path, epoch_steps=2, log_every=10))
    out = capsys.readouterr().out
    assert "Losses are read every 2 steps, an epoch's worth (--log_every 10 is more)" in out
    assert "{}" not in out and (tmp_path / "losses.csv").is_file() and (tmp_path / "gan_loss_plot.png").is_file()


@pytest.mark.parametrize("names", [("caf\u00e9", "cafe\u0301"), ("Dog", "dog")])
def test_class_folders_that_differ_only_in_case_or_unicode_form_are_refused(tmp_path, names):
    for name in names:
        write_tone(str(tmp_path / "data" / name / "a.wav"), 440)
    with pytest.raises(SystemExit, match="differ only in letter case or Unicode form"):
        tag.discover(str(tmp_path / "data"))


def test_audio_files_say_what_is_wrong_with_them(tmp_path):
    tag_only = tmp_path / "tag.mp3"
    tag_only.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x0aTIT2\x00\x00\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="no audio stream libsndfile can read in it") as e:
        tag.load_audio(str(tag_only), 22050)
    assert "pipe" not in str(e.value)
    one = tmp_path / "one.wav"
    tag.sf.write(str(one), torch.zeros(1).numpy(), 8000, subtype="PCM_16")  # a header that claims 2 bytes of data
    with pytest.raises(ValueError, match="too short: 1 sample"):
        tag.load_audio(str(one), 22050)


def test_bigvgan_folders_and_pickles_are_refused_for_what_they_are(tmp_path):
    from test_vocoder import bigvgan_folder
    folder = type(tmp_path)(bigvgan_folder(tmp_path))
    (folder / "config.json").write_text("{broken")
    for where in (folder, "/etc"):
        with pytest.raises(SystemExit, match="from the folder .* it needs config.json and bigvgan_generator.pt") as e:
            tag.load_vocoder(tag.Config(vocoder=f"bigvgan:{where}"), torch.device("cpu"))
        assert "connection" not in str(e.value)
    (tmp_path / "pickled").mkdir()
    folder = type(tmp_path)(bigvgan_folder(tmp_path / "pickled"))
    torch.save({"generator": argparse.Namespace(x=1)}, folder / "bigvgan_generator.pt")
    with pytest.raises(SystemExit, match="never unpickles") as e:
        tag.load_vocoder(tag.Config(vocoder=f"bigvgan:{folder}"), torch.device("cpu"))
    assert "weights_only" not in str(e.value) and "\x1b" not in str(e.value)


def test_flags_say_what_they_need(earlier, capsys):
    wav_dir = tag.generate(tag.Config(mode="generate", checkpoint=str(earlier), out_dir=str(earlier / "g"),
                                      vocoder="griffinlim", device="cpu", n_generate=1))  # a run's folder
    assert len(os.listdir(wav_dir)) == 3
    with pytest.raises(SystemExit):
        tag.parse_config(["--generate_class", "-kick"])
    assert "needs the = form: --generate_class=-kick" in capsys.readouterr().err
    assert tag.parse_config(["--generate_class=-kick"]).generate_class == "-kick"
    with pytest.raises(SystemExit) as e:
        tag.check_config(tag.Config(lr_decay=float("nan")))
    assert str(e.value).count("lr_decay=nan") == 1  # one line, not two
