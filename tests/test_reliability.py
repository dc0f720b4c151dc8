"""Bad input, bad configuration, interruptions and numerical failure never crash a run or lose work."""
import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import tag, tiny_config, write_tone

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_audio_gan.py")
SR = 16000
TONE = (0.3 * np.sin(np.arange(SR) / 5)).astype(np.float32)


def malformed_corpus(folder):
    """{file name: expected outcome}: "ok", "ignored", or a fragment of the skip reason."""
    os.makedirs(folder, exist_ok=True)
    p = lambda name: os.path.join(folder, name)
    sf.write(p("good.wav"), TONE, SR)
    wav = open(p("good.wav"), "rb").read()
    open(p("empty.wav"), "wb").close()
    open(p("header_only.wav"), "wb").write(wav[:44])
    open(p("cut_header.wav"), "wb").write(wav[:30])
    open(p("random_bytes.wav"), "wb").write(np.random.default_rng(0).bytes(4000))
    sf.write(p("g.mp3"), TONE, SR)
    mp3 = open(p("g.mp3"), "rb").read()
    os.remove(p("g.mp3"))
    open(p("truncated.mp3"), "wb").write(mp3[:len(mp3) // 2])  # libsndfile returns a short array, no error
    sf.write(p("g.flac"), TONE, SR)
    flac = open(p("g.flac"), "rb").read()
    os.remove(p("g.flac"))
    open(p("truncated.flac"), "wb").write(flac[:len(flac) // 2])
    open(p("truncated.wav"), "wb").write(wav[:len(wav) // 2])  # the header is corrected: the half that is there
    sf.write(p("nan.wav"), np.where(np.arange(SR) % 100 == 0, np.nan, TONE).astype(np.float32), SR, subtype="FLOAT")
    sf.write(p("inf.wav"), np.where(np.arange(SR) % 100 == 0, np.inf, TONE).astype(np.float32), SR, subtype="FLOAT")
    sf.write(p("pcm8.wav"), TONE, SR, subtype="PCM_U8")
    sf.write(p("pcm24.wav"), TONE, SR, subtype="PCM_24")
    sf.write(p("stereo96k.wav"), np.stack([TONE, -TONE], 1).repeat(6, 0), 96000)
    sf.write(p("silence.wav"), np.zeros(SR, np.float32), SR)
    open(p("notes.txt"), "w").write("hello")
    open(p(".DS_Store"), "wb").write(b"\0\0\0\1Bud1")
    open(p("cover.png"), "wb").write(b"\x89PNG\r\n\x1a\n" + bytes(100))
    open(p("image_named.mp3"), "wb").write(b"\x89PNG\r\n\x1a\n" + bytes(100))
    os.symlink(p("missing-target.wav"), p("broken_link.wav"))
    os.mkfifo(p("fifo.wav"))
    return {"good.wav": "ok", "empty.wav": "unreadable", "header_only.wav": "no audio samples",
            "cut_header.wav": "unreadable", "random_bytes.wav": "unreadable", "truncated.mp3": "truncated",
            "truncated.flac": "unreadable", "truncated.wav": "ok", "nan.wav": "NaN", "inf.wav": "NaN", "pcm8.wav": "ok",
            "pcm24.wav": "ok", "stereo96k.wav": "ok", "silence.wav": "silent", "notes.txt": "ignored",
            ".DS_Store": "ignored", "cover.png": "ignored", "image_named.mp3": "unreadable",
            "broken_link.wav": "broken link", "fifo.wav": "not a regular file"}


def test_every_malformed_file_is_skipped_with_its_reason(tmp_path, capsys):
    expected = malformed_corpus(str(tmp_path / "data" / "bad"))
    for i in range(4):
        write_tone(str(tmp_path / "data" / "fine" / f"{i}.wav"), 300 + 50 * i)
    result = tag.train(tiny_config(str(tmp_path / "data"), tmp_path / "out"))  # training goes on with the rest
    out = capsys.readouterr().out
    for name, outcome in expected.items():
        lines = [line for line in out.splitlines() if line.startswith("Skipping") and f"/{name}':" in line]
        if outcome in ("ok", "ignored"):
            assert not lines, f"{name} should not be skipped: {lines}"
        else:
            assert len(lines) == 1 and outcome in lines[0], f"{name}: expected one line with {outcome!r}: {lines}"
    n_skipped = sum(v not in ("ok", "ignored") for v in expected.values())
    assert f"Skipped {n_skipped} of" in out
    assert "Ignored 2 non-audio file(s)" in out  # notes.txt and cover.png; .DS_Store is hidden
    assert "bad (5)" in out and "fine (4)" in out  # the usable ones: good, truncated.wav, 8-bit, 24-bit, 96k stereo
    assert torch.isfinite(torch.tensor(result["history"]["loss/critic"])).all()
    tag.MelClips(tiny_config(str(tmp_path / "data"), tmp_path / "out"), torch.device("cpu"))  # cache hit
    assert capsys.readouterr().out.count("Skipping") == n_skipped  # still reported when the cache is used


def test_unreadable_file_is_skipped(tmp_path, monkeypatch, capsys):
    for c in ("a", "b"):
        for i in range(2):
            write_tone(str(tmp_path / "data" / c / f"{i}.wav"), 300 + 100 * i)
    locked = str(tmp_path / "data" / "a" / "0.wav")
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):  # root reads anything: make the read fail the way a permission error does
        real = tag.sf.SoundFile
        monkeypatch.setattr(tag.sf, "SoundFile", lambda path, *a, **k: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied", path)) if path == locked else real(path, *a, **k))
    data = tag.MelClips(tiny_config(str(tmp_path / "data"), tmp_path / "out", batch_size=2), torch.device("cpu"))
    assert len(data) == 3
    assert f"Skipping {locked!r}: unreadable" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"), ("no_classes", "0 class folder"), ("one_class", "at least 2"),
    ("class_without_audio", "have no usable audio"), ("batch_too_big", "larger than the dataset"),
    ("out_dir_unwritable", "Cannot write to out_dir"), ("bad_n_frames", "n_frames=40"), ("bad_n_mels", "n_mels=0"),
])
def test_bad_configuration_is_refused_before_work(tmp_path, tiny_dataset, case, message):
    base, out, kw = tiny_dataset, tmp_path / "out", {}
    if case == "missing":
        base = str(tmp_path / "nowhere")
    elif case in ("no_classes", "one_class", "class_without_audio"):
        base = str(tmp_path / "d")
        os.makedirs(base)
        if case != "no_classes":
            write_tone(os.path.join(base, "a", "x.wav"), 440)
        if case == "class_without_audio":
            os.makedirs(os.path.join(base, "b"))
            sf.write(os.path.join(base, "b", "quiet.wav"), np.zeros(100, np.float32), SR)
    elif case == "batch_too_big":
        kw["batch_size"] = 13
    elif case == "out_dir_unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"  # a path through a regular file can never be created, even by root
    elif case == "bad_n_frames":
        kw["n_frames"] = 40
    else:
        kw["n_mels"] = 0
    with pytest.raises(SystemExit, match=message):
        tag.train(tiny_config(base, out, **kw))
    assert not (out / "checkpoint.pt").exists() if out.parent.is_dir() else True


def test_checkpoint_of_other_classes_or_garbage_is_refused(tmp_path, tiny_dataset):
    tag.train(tiny_config(tiny_dataset, tmp_path / "a"))
    os.rename(os.path.join(tiny_dataset, "noise"), os.path.join(tiny_dataset, "static"))
    with pytest.raises(SystemExit, match="trained on classes"):
        tag.train(tiny_config(tiny_dataset, tmp_path / "a", epochs=2, resume=True))
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        tag.generate(tag.Config(mode="generate", out_dir=str(tmp_path / "a"), vocoder="griffinlim"))


@pytest.mark.parametrize("poisoned", [6, 7])  # 6 is read at a log interval; 7 is followed by epoch 2's checkpoint
def test_nan_loss_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_dataset, monkeypatch, poisoned):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", epochs=3, epoch_steps=4, n_critic=1, log_every=3, ema=0.0)
    calls, real_gp = [], tag.gradient_penalty
    # one gradient-penalty call per step (n_critic=1): poison one step inside epoch 2
    monkeypatch.setattr(tag, "gradient_penalty", lambda *a: calls.append(1) or (
        real_gp(*a) * float("nan") if len(calls) == poisoned else real_gp(*a)))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(SystemExit, match=rf"Non-finite loss at step {poisoned}\b.*checkpoint.*untouched") as err:
        tag.train(cfg)
    assert str(ckpt) in str(err.value)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # epoch 1's checkpoint, not overwritten


def test_diverging_critic_is_reported(tmp_path, tiny_dataset, capsys):
    tag.train(tiny_config(tiny_dataset, tmp_path / "a"))
    assert "the critic is diverging" not in capsys.readouterr().out  # (the tmp path holds the test's name)
    tag.train(tiny_config(tiny_dataset, tmp_path / "b", max_wdist=0.0))
    assert "the critic is diverging" in capsys.readouterr().out


# ---- interruptions, in real subprocesses

def cli(data, out, *extra):
    return [sys.executable, SCRIPT, "--base_path", data, "--out_dir", str(out), "--n_frames", "16", "--batch_size",
            "4", "--latent_dim", "8", "--embed_dim", "4", "--g_channels", "4", "--d_channels", "4", "--n_critic", "1",
            "--log_every", "7", "--vocoder", "griffinlim", "--device", "cpu", "--epochs", "2", *extra]


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def final_weights(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["generator"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_mid_epoch_and_resume_matches_uninterrupted(tmp_path, tiny_dataset, sig):
    args = ["--epoch_steps", "120"]
    subprocess.run(cli(tiny_dataset, tmp_path / "straight", *args), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(cli(tiny_dataset, tmp_path / "cut", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "cut" / "gan_spectrogram_plots" / "real_examples.png", proc)  # the loop is starting
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"Stopped by {sig.name}" in out and "--resume" in out and "Traceback" not in err
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert 0 < ckpt["step"] < 240
    resumed_run = subprocess.run(cli(tiny_dataset, tmp_path / "cut", *args, "--resume"), check=True,
                                 capture_output=True, text=True, timeout=300)
    assert f"at epoch {ckpt['epoch']}, step {ckpt['step']}" in resumed_run.stdout  # it continued; it did not start over
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "cut")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # as if never interrupted


KILL_DURING_SECOND_CHECKPOINT = """
import sys, time, torch
sys.path.insert(0, {repo!r})
import train_audio_gan as tag
save, writes = torch.save, []
def slow_save(obj, f, *a, **k):
    save(obj, f, *a, **k)
    if "checkpoint.pt" + tag.TMP_MARK in str(f):
        writes.append(f)
        if len(writes) == 2:
            time.sleep(60)  # the temp file is written but not yet moved into place: killed here
torch.save = slow_save
tag.main(sys.argv[1:])
"""


def test_kill_9_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, tiny_dataset):
    code = KILL_DURING_SECOND_CHECKPOINT.format(repo=os.path.dirname(SCRIPT))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", code, *cli(tiny_dataset, out, "--epoch_steps", "5")[2:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def second_write_paused():  # both at once only inside the second write: os.replace is atomic
        partial = "checkpoint.pt" + tag.TMP_MARK
        return (out / "checkpoint.pt").exists() and any(n.startswith(partial) for n in os.listdir(out))

    t0 = time.time()
    while not (out.exists() and second_write_paused()):
        assert proc.poll() is None and time.time() - t0 < 240
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert [n for n in os.listdir(out) if n.startswith("checkpoint.pt" + tag.TMP_MARK)], "killed during the write"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the previous one, intact
    done = subprocess.run(cli(tiny_dataset, out, "--epoch_steps", "5", "--resume"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert not [n for n in os.listdir(out) if tag.TMP_MARK in n]  # the stale temp file is cleared


# ---- properties over arbitrary inputs

@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 200), min_size=1, max_size=6), n_frames=st.sampled_from([16, 32, 64]),
       seed=st.integers(0, 2 ** 16))
def test_crops_are_windows_or_padded_clips(lengths, n_frames, seed):
    torch.manual_seed(seed)
    frames = torch.randn(3, sum(lengths))
    lengths_t = torch.tensor(lengths)
    offsets = torch.cumsum(lengths_t, 0) - lengths_t
    x = tag.random_crops(frames, offsets, lengths_t, n_frames, floor=-7.0)
    assert x.shape == (len(lengths), 1, 3, n_frames)
    for i, (o, n) in enumerate(zip(offsets.tolist(), lengths)):
        clip, crop = frames[:, o:o + n], x[i, 0]
        if n <= n_frames:
            assert torch.equal(crop[:, :n], clip) and torch.all(crop[:, n:] == -7.0)
        else:
            assert any(torch.equal(clip[:, s:s + n_frames], crop) for s in range(n - n_frames + 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 30000), rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000]),
       channels=st.integers(1, 4), subtype=st.sampled_from(["PCM_16", "PCM_24", "FLOAT", "PCM_U8"]),
       seed=st.integers(0, 1000))
def test_loader_on_arbitrary_lengths_rates_and_channels(tmp_path, n, rate, channels, subtype, seed):
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, channels)).astype(np.float32)
    path = str(tmp_path / f"clip_{seed}_{n}_{rate}_{channels}.wav")
    sf.write(path, audio, rate, subtype=subtype)
    try:
        wav = tag.load_audio(path, 22050)
    except ValueError as e:  # refused only when all zeros after quantising, or under 10 ms, or lost in resampling
        assert ("silent" in str(e) and not sf.read(path)[0].any()) or \
            ("too short" in str(e) and (n < rate / 100 or n * 22050 < rate))
        return
    assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
    assert abs(len(wav) - n * 22050 / rate) <= 1
    assert abs(np.abs(wav).max() - 0.95) < 1e-5
    mel = tag.MelSpectrogram(tag.Config())(torch.from_numpy(wav)[None])
    assert mel.shape[-1] >= 4 and torch.isfinite(mel).all()


# ---- issue 10: resume, files and flags that lost work or ended in a traceback

def snapshot(folder):
    """{relative path: (size, mtime)} of every file under folder."""
    return {os.path.relpath(os.path.join(r, n), folder): (os.stat(os.path.join(r, n)).st_size,
                                                          os.stat(os.path.join(r, n)).st_mtime_ns)
            for r, _, names in os.walk(folder) for n in names}


def test_resume_of_a_finished_run_says_so_and_writes_nothing(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    tag.train(tiny_config(tiny_dataset, out, epoch_steps=2))  # the same model flags as cli's
    before = snapshot(out)
    again = subprocess.run(cli(tiny_dataset, out, "--epochs", "1", "--resume"), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "Run complete" in again.stdout and "1 of 1 epochs" in again.stdout and "--epochs" in again.stdout
    assert "Traceback" not in again.stderr
    assert snapshot(out) == before  # no file written, rewritten or left behind


DISCOVER = """
import json, sys
sys.path.insert(0, {repo!r})
import train_audio_gan as tag
print(json.dumps(tag.discover(sys.argv[1])))
"""


def test_symlink_loops_are_not_followed_and_no_file_counts_twice(tmp_path, tiny_dataset):
    os.symlink("..", os.path.join(tiny_dataset, "low", "loop"))  # back to the dataset root: every class again
    os.symlink("../..", os.path.join(tiny_dataset, "high", "up"))  # above the root
    os.symlink("..", os.path.join(tiny_dataset, "noise", "sub", "self"))  # back into its own class
    os.symlink("../low/l0.wav", os.path.join(tiny_dataset, "noise", "again.wav"))  # a file listed under low
    code = DISCOVER.format(repo=os.path.dirname(SCRIPT))
    run = subprocess.run([sys.executable, "-c", code, tiny_dataset], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr  # the old walk never ended with loops in two classes
    lines = run.stdout.splitlines()
    classes, files, skipped = json.loads(lines[-1])
    assert len(files) == 12 and not skipped
    assert len({os.path.realpath(p) for p, _ in files}) == 12  # every file once
    assert all(os.path.realpath(p).startswith(os.path.join(tiny_dataset, classes[y], "")) for p, y in files)
    report = [line for line in lines[:-1] if line.startswith("Not followed")]
    assert len(report) == 1 and "3 folder(s)" in report[0] and "1 linked audio file" in report[0], lines


FULL_DISK = "[enforce fail at inline_container.cc:659] . unexpected pos 4224 vs 4112\nframe #0: c10::Error::Error"


def test_failed_write_is_one_line_and_advises_resume_only_with_a_checkpoint(tmp_path, tiny_dataset, monkeypatch):
    out, save = tmp_path / "run", torch.save
    args = cli(tiny_dataset, out, "--epoch_steps", "2", "--epochs", "1")[2:]

    def full_disk(obj, f, *a, **k):  # torch.save on a full disk raises RuntimeError, not OSError
        if "checkpoint.pt" in str(f):
            raise RuntimeError(FULL_DISK)
        return save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as first:  # before any checkpoint exists: nothing to resume
        tag.main(args)
    message = str(first.value)
    assert "checkpoint.pt" in message and "enforce fail" in message and "\n" not in message
    assert "--resume" not in message and not (out / "checkpoint.pt").exists()
    monkeypatch.setattr(torch, "save", save)
    tag.main(args)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit, match=r"checkpoint\.pt.*intact.*--resume") as second:
        tag.main(args + ["--epochs", "2", "--resume"])
    assert "\n" not in str(second.value)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the previous one, intact
    assert not [p for p in out.rglob(f"*{tag.TMP_MARK}*")]
    monkeypatch.setattr(tag.sf, "write", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("System error.")))
    with pytest.raises(SystemExit, match=r"high_0\.wav") as generating:  # generate mode: nothing to resume
        tag.main(["--mode", "generate", "--out_dir", str(out), "--vocoder", "griffinlim", "--device", "cpu"])
    assert "--resume" not in str(generating.value)


def test_nan_in_the_first_epoch_names_no_checkpoint(tmp_path, tiny_dataset, monkeypatch):
    real_gp = tag.gradient_penalty
    monkeypatch.setattr(tag, "gradient_penalty", lambda *a: real_gp(*a) * float("nan"))
    with pytest.raises(SystemExit, match="Non-finite loss at step 1") as err:
        tag.train(tiny_config(tiny_dataset, tmp_path / "run", n_critic=1))
    assert "no checkpoint was written" in str(err.value)
    assert "untouched" not in str(err.value) and "--resume" not in str(err.value)


HOLD_LOCK = """
import fcntl, os, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.write(str(os.getpid()))
f.flush()
print("holding", flush=True)
time.sleep(300)
"""


def test_second_run_on_one_out_dir_is_refused_with_the_holders_pid(tmp_path, tiny_dataset):
    pytest.importorskip("fcntl", reason="no advisory locks on this platform: out_dir is not locked")
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(SystemExit, match=rf"pid {holder.pid}\b.*--out_dir"):
            tag.train(tiny_config(tiny_dataset, out))
        assert os.listdir(out) == [".lock"]  # refused before any work
    finally:
        holder.kill()  # kill -9: the lock goes with the process
        holder.wait()
    assert tag.train(tiny_config(tiny_dataset, out))["steps"] == 3  # never stuck


@pytest.fixture
def trained(tmp_path, tiny_dataset):
    """A finished one-epoch run's folder."""
    tag.train(tiny_config(tiny_dataset, tmp_path / "run"))
    return tmp_path / "run"


def test_stale_or_foreign_checkpoints_are_refused_in_one_line(trained, tiny_dataset, tmp_path):
    good = torch.load(trained / "checkpoint.pt", weights_only=True)
    older = {k: v for k, v in good.items() if k != "gan_scale"}  # as an earlier version of the script wrote it
    older["config"] = {k: v for k, v in good["config"].items() if k != "critic_cond"}
    config_only = dict(good, config=older["config"])
    other = tag.build_models(tiny_config(tiny_dataset, trained, g_channels=8), 3)[0].state_dict()
    cases = {"older": (older, "lacks gan_scale, config.critic_cond"),
             "config": (config_only, "lacks config.critic_cond"), "weights": (other, "lacks generator, generator_ema"),
             "shapes": (dict(good, generator=other, generator_ema={}), "does not fit .*size mismatch")}
    for name, (ckpt, message) in cases.items():
        out = tmp_path / name
        out.mkdir()
        torch.save(ckpt, out / "checkpoint.pt")
        for run in (lambda: tag.train(tiny_config(tiny_dataset, out, epochs=2, resume=True)),
                    lambda: tag.generate(tag.Config(mode="generate", out_dir=str(out), vocoder="griffinlim",
                                                    device="cpu"))):
            with pytest.raises(SystemExit, match=message) as err:
                run()
            assert str(out / "checkpoint.pt") in str(err.value) and "\n" not in str(err.value), name


@pytest.mark.parametrize("content", ["right key, wrong shape", "a list", "truncated"])
def test_malformed_mel_cache_is_rebuilt_with_one_line(tmp_path, tiny_dataset, capsys, content):
    cfg = tiny_config(tiny_dataset, tmp_path / "out")
    first = tag.MelClips(cfg, torch.device("cpu"))
    (cache,) = (tmp_path / "out" / "mel_cache").glob("*.pt")
    if content == "right key, wrong shape":
        torch.save({"key": first.key, "frames": [1.0, 2.0], "lengths": [], "labels": [], "skipped": []}, cache)
    elif content == "a list":
        torch.save([1, 2, 3], cache)
    else:
        cache.write_bytes(cache.read_bytes()[:200])
    capsys.readouterr()
    again = tag.MelClips(cfg, torch.device("cpu"))
    assert not again.cache_hit and torch.equal(again.frames, first.frames)
    assert len([line for line in capsys.readouterr().out.splitlines() if "Rebuilding" in line]) == 1
    assert tag.MelClips(cfg, torch.device("cpu")).cache_hit  # the rebuilt cache was written


def test_truncated_evaluation_caches_are_rebuilt_with_one_line(tmp_path, tiny_dataset, capsys):
    cfg = tiny_config(tiny_dataset, tmp_path / "out", eval_steps=5, eval_samples=2)
    data = tag.MelClips(cfg, torch.device("cpu"))
    first = tag.Evaluator(cfg, data, torch.device("cpu"), None)
    (cache,) = (tmp_path / "out" / "mel_cache").glob("classifier-*.pt")
    (ceiling,) = (tmp_path / "out" / "mel_cache").glob("ceiling-*.pt")
    for damaged in (cache, ceiling):
        damaged.write_bytes(damaged.read_bytes()[:300])
    capsys.readouterr()
    again = tag.Evaluator(cfg, data, torch.device("cpu"), None)
    out = capsys.readouterr().out
    assert out.count("Rebuilding unreadable evaluation-classifier cache") == 1
    assert out.count("Rebuilding unreadable vocoder-ceiling cache") == 1
    assert again.ceiling["frechet_mel"] == first.ceiling["frechet_mel"]  # vocoded again: the same clips
    weights = zip(first.model.state_dict().values(), again.model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in weights)  # retrained from the same seed: the same classifier
    assert torch.load(cache, weights_only=True) and torch.load(ceiling, weights_only=True) is not None  # whole again


@pytest.mark.parametrize("flag,value,message", [
    ("lr", 0.0, "lr=0.0 must be a finite number above 0"), ("lr", float("nan"), "lr=nan"),
    ("lr", float("inf"), "lr=inf"), ("beta1", 1.0, r"beta1=1.0 must be in \[0, 1\)"), ("beta2", -0.1, "beta2=-0.1"),
    ("lambda_gp", -1.0, "lambda_gp=-1.0"), ("lambda_gp", float("inf"), "lambda_gp=inf"),
    ("hop_length", 0, "hop_length=0"), ("n_fft", 0, "n_fft=0"), ("win_length", 2048, "win_length=2048 must not exceed"),
    ("fmin", 9000.0, "fmin=9000, fmax=8000"), ("fmax", 12000.0, r"fmax=12000 must .*sample_rate/2 = 11025"),
    ("fmin", -1.0, "fmin=-1"), ("sample_rate", 0, "sample_rate=0"),
    ("device", "cpuu", "device='cpuu' is not available; this machine has auto, cpu"),
    ("device", "cuda:7", "device='cuda:7' is not available"),
])
def test_numeric_and_device_flags_are_refused_before_any_work(tmp_path, tiny_dataset, flag, value, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        tag.train(tiny_config(tiny_dataset, out, **{flag: value}))
    assert not out.exists()  # refused before the out_dir, the mel cache or the models


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_checkpoints_mid_epoch_like_sigterm(tmp_path, tiny_dataset):
    proc = subprocess.Popen(cli(tiny_dataset, tmp_path / "cut", "--epoch_steps", "120"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "cut" / "gan_spectrogram_plots" / "real_examples.png", proc)  # the loop is starting
    time.sleep(0.5)
    proc.send_signal(signal.SIGHUP)  # a closed terminal or SSH session
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Stopped by SIGHUP" in out and "--resume" in out and "Traceback" not in err
    assert 0 < torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] < 240


TWO_CTRL_C = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
import train_audio_gan as tag
with tag.stop_requests() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
    assert stop == ["SIGINT"], stop
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
print("not aborted")
"""


def test_second_ctrl_c_aborts_at_once_with_one_line():
    run = subprocess.run([sys.executable, "-c", TWO_CTRL_C.format(repo=os.path.dirname(SCRIPT))], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 130 and "not aborted" not in run.stdout
    assert "SIGINT received" in run.stdout
    assert len(run.stderr.strip().splitlines()) == 1 and "Aborted" in run.stderr, run.stderr


def test_generate_many_per_class_writes_every_sample_but_plots_at_most_plot_cols(trained, monkeypatch):
    shapes, plot = [], tag.plot_mels
    monkeypatch.setattr(tag, "plot_mels", lambda mels, rows, path, cfg, title: (shapes.append((mels.shape, title)),
                                                                                 plot(mels, rows, path, cfg, title)))
    n = tag.PLOT_COLS + 3
    tag.generate(tag.Config(mode="generate", out_dir=str(trained), vocoder="griffinlim", device="cpu", n_generate=n))
    names = {f"{c}_{k}" for c in ("high", "low", "noise") for k in range(n)}
    assert {f[:-4] for f in os.listdir(trained / "gan_generated_audio" / "generated")} == names
    assert {f[:-4] for f in os.listdir(trained / "gan_spectrogram_plots" / "generated")} == names  # thumbnails
    (shape, title), = shapes
    assert tuple(shape[:2]) == (3, tag.PLOT_COLS) and f"first {tag.PLOT_COLS} of {n} per class" in title


def test_base_path_that_is_a_file_says_so(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    run = subprocess.run(cli(str(tmp_path / "data.zip"), tmp_path / "out"), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and "is a file, not a folder" in run.stderr and "does not exist" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_out_dir_inside_base_path_is_not_a_class(tmp_path, tiny_dataset):
    out = os.path.join(tiny_dataset, "runs")
    os.makedirs(os.path.join(out, "gan_generated_audio"))
    write_tone(os.path.join(out, "gan_generated_audio", "old_0.wav"), 500)  # an earlier run's sample
    run = subprocess.run(cli(tiny_dataset, out, "--epochs", "1", "--epoch_steps", "1"), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "3 classes, 12 clips: high (4), low (4), noise (4)" in run.stdout
    assert len([line for line in run.stdout.splitlines() if "lies inside --base_path" in line]) == 1
    itself = subprocess.run(cli(tiny_dataset, tiny_dataset), capture_output=True, text=True, timeout=120)
    assert itself.returncode == 1 and "is the dataset folder itself" in itself.stderr
    assert len(itself.stderr.strip().splitlines()) == 1, itself.stderr


def test_names_with_newlines_keep_skip_reports_on_one_line(tmp_path, capsys):
    for c in ("a", "b\nc"):
        for i in range(2):
            write_tone(str(tmp_path / "data" / c / f"{i}.wav"), 300 + 100 * i)
    (tmp_path / "data" / "b\nc" / "bad\nname.wav").write_bytes(b"not audio")
    data = tag.MelClips(tiny_config(str(tmp_path / "data"), tmp_path / "out", batch_size=2), torch.device("cpu"))
    assert data.classes == ["a", "b\nc"]
    lines = capsys.readouterr().out.splitlines()
    skips = [line for line in lines if line.startswith("Skipping")]
    assert len(skips) == 1 and "bad\\nname.wav" in skips[0] and "unreadable" in skips[0], lines
    assert "2 classes, 4 clips: a (2), 'b\\nc' (2)" in lines


def test_sizes_seeds_and_frames_out_of_bounds_are_refused_before_any_work():
    for flag, value, says in (("latent_dim", -1, "latent_dim=-1 must be at least 1"),
                              ("g_channels", 0, "g_channels=0 must be at least 1"),
                              ("d_channels", -1, "d_channels=-1 must be at least 1"),
                              ("embed_dim", 0, "embed_dim=0 must be at least 1"),
                              ("seed", 2 ** 64, "seed=18446744073709551616 must be in [0, 9223372036854775808)"),
                              ("hop_length", 2048, "hop_length=2048 must not exceed win_length=1024")):
        with pytest.raises(SystemExit, match=re.escape(says)):
            tag.check_config(tag.Config(**{flag: value}))


def test_a_missing_eval_path_is_refused_up_front_and_resume_names_out_dir(tmp_path):
    with pytest.raises(SystemExit, match="eval_path='nowhere' is not a folder"):
        tag.check_config(tag.Config(eval_path="nowhere"))
    with pytest.raises(SystemExit) as e:
        tag.load_checkpoint(str(tmp_path / "checkpoint.pt"), tag.Config(resume=True))
    assert "--out_dir of the run to continue" in str(e.value) and "--checkpoint" not in str(e.value)
    with pytest.raises(SystemExit, match=r"--checkpoint is read only in generate and evaluate modes\)\.$"):
        tag.load_checkpoint(str(tmp_path / "checkpoint.pt"), tag.Config(resume=True, checkpoint="elsewhere.pt"))


def test_a_pickled_vocoder_or_checkpoint_is_refused_in_one_line_without_weights_only_advice(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"generator": argparse.Namespace(x=1)}, evil)  # a Python object: a weights-only load refuses it
    with pytest.raises(SystemExit) as e:  # a named vocoder that cannot load stops the run: no silent Griffin-Lim
        tag.load_vocoder(tag.Config(vocoder=str(evil)), torch.device("cpu"))
    message = str(e.value)
    assert "\n" not in message and "weights_only" not in message and "never unpickles" in message
    with pytest.raises(SystemExit) as e:
        tag.load_checkpoint(str(evil))
    assert "weights_only" not in str(e.value) and "never unpickles" in str(e.value)


def test_a_damaged_eval_metrics_csv_is_read_tolerantly(tmp_path, easy_tones):
    cfg = tiny_config(easy_tones, tmp_path / "out", eval_steps=5, eval_samples=2)
    ev = tag.Evaluator(cfg, tag.MelClips(cfg, torch.device("cpu")), torch.device("cpu"), None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "eval_metrics.csv"), "w", encoding="utf-8") as f:  # edited by hand, damaged
        f.write("epoch,accuracy,real_accuracy\n1,abc,0.9\n\u00b2,0.5,0.9\n2,0.7,x\n")
    generator, _ = tag.build_models(cfg, 3)
    ev.evaluate(generator, ev_scale(cfg), None, 3)  # no ValueError: unreadable cells are NaN, odd epochs dropped
    rows = tag.read_rows(os.path.join(cfg.out_dir, "eval_metrics.csv"))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and (tmp_path / "out" / "gan_eval_plot.png").exists()
    assert math.isnan(tag.number(rows[0], "accuracy")) and tag.number(rows[1], "accuracy") == 0.7


def ev_scale(cfg):
    return tag.GanScale.from_data(cfg.scaling, None)


@pytest.fixture
def easy_tones(tmp_path):
    root = tmp_path / "tones"
    for i in range(6):
        for name, freq in (("low", 200), ("mid", 800), ("high", 3000)):
            write_tone(str(root / name / f"{i}.wav"), freq + 10 * i, seconds=0.3)
    return str(root)
