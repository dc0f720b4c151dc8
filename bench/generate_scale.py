"""Time generate mode at scale: --n_generate 50 on 10 classes (issue #10), from a tiny 1-epoch checkpoint.

    python bench/generate_scale.py                                     # this checkout's script
    python bench/generate_scale.py --script /tmp/old.py --timeout 120  # another version, stopped after 120 s

It writes a 10-class synthetic dataset (0.5 s tones) to a temporary folder, trains 1 epoch of 2 steps at tiny sizes,
then times `--mode generate --n_generate 50` (500 wavs, 500 thumbnails, one grid plot) as a fresh subprocess, and
prints the command and its wall time. The vocoder is Griffin-Lim (no download); the plot's cost does not depend on it.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_frames", "64", "--batch_size", "4", "--g_channels", "4", "--d_channels", "4", "--latent_dim", "8",
        "--embed_dim", "4", "--vocoder", "griffinlim", "--device", "cpu"]


def make_dataset(root, n_classes=10, clips=4, sr=22050):
    """n_classes folders of clips 0.5 s tones, one pitch per class."""
    t = np.arange(sr // 2) / sr
    for c in range(n_classes):
        for i in range(clips):
            os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
            wav = 0.3 * np.sin(2 * np.pi * (200 * (c + 1) + 10 * i) * t)
            sf.write(os.path.join(root, f"class{c}", f"{i}.wav"), wav.astype(np.float32), sr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--script", default=os.path.join(REPO, "train_audio_gan.py"))
    p.add_argument("--n_generate", type=int, default=50)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--timeout", type=float, default=1800, help="stop generate mode after this many seconds")
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "data"), os.path.join(tmp, "out")
        make_dataset(data, args.classes)
        train = [sys.executable, args.script, "--base_path", data, "--out_dir", out, "--epochs", "1",
                 "--epoch_steps", "2", *TINY]
        subprocess.run(train, check=True, capture_output=True, env=env)
        gen = [sys.executable, args.script, "--mode", "generate", "--out_dir", out, "--n_generate",
               str(args.n_generate), *TINY]
        print("$", " ".join(os.path.basename(a) if a == args.script else a for a in gen))
        start = time.perf_counter()
        try:
            run = subprocess.run(gen, capture_output=True, text=True, timeout=args.timeout, env=env)
        except subprocess.TimeoutExpired:
            print(f"stopped after {args.timeout:.0f} s, unfinished")
            return
        took = time.perf_counter() - start
        wavs = len(os.listdir(os.path.join(out, "gan_generated_audio", "generated")))
        thumbs = len(os.listdir(os.path.join(out, "gan_spectrogram_plots", "generated")))
        status = "ok" if run.returncode == 0 else f"exit {run.returncode}: {run.stderr.strip().splitlines()[-1:]}"
        print(f"generate mode: {took:.1f} s wall ({status}); {wavs} wavs, {thumbs} thumbnails")


if __name__ == "__main__":
    main()
