"""Audio quality on real spoken digits (FSDD): train variants for the same number of steps, score them alike.

    python bench/quality.py                    # all variants, 1500 generator steps each, on cuda if present
    python bench/quality.py --steps 300 --variants log1p

Trains on ../shared/data/fsdd/train (10 digits, 2,700 recordings at 8 kHz, resampled to 22.05 kHz) with a
short-clip preset (64 frames = 0.74 s) and scores against ../shared/data/fsdd/test with the script's own Evaluator:
one classifier trained once on the real training clips, so every variant is judged by the same judge. The
generated mels are vocoded with HiFi-GAN and re-analysed first. Prints a markdown table with the real-data
reference beside it.
"""
import argparse
import dataclasses
import math
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_audio_gan as tag  # noqa: E402

FSDD = os.path.join(REPO, "..", "shared", "data", "fsdd")
PRESET = dict(n_frames=64, batch_size=16, g_channels=32, d_channels=16, samples_per_class=1, log_every=25,
              vocoder="universal", eval_samples=20)
VARIANTS = {  # name: the settings compared, spelled out so the table does not change meaning with the defaults
    "affine": {"scaling": "affine", "critic_cond": "concat"},
    "log1p": {"scaling": "log1p", "critic_cond": "concat"},
    "affine+projection": {"scaling": "affine", "critic_cond": "projection"},
    "log1p+projection": {"scaling": "log1p", "critic_cond": "projection"},
}  # every variant is scored twice: with its EMA generator and with its raw weights


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500, help="generator steps per variant (the budget)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=os.path.join(REPO, "runs", "quality"))
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if not os.path.isdir(os.path.join(FSDD, "train")):
        raise SystemExit(f"FSDD not found at {os.path.normpath(FSDD)}")
    epochs = math.ceil(args.steps / 250)  # at most 250 steps an epoch: one sample set, plot and checkpoint each
    base = tag.Config(base_path=os.path.join(FSDD, "train"), eval_path=os.path.join(FSDD, "test"), device=args.device,
                      epochs=epochs, epoch_steps=args.steps // epochs, **PRESET)
    steps = base.epochs * base.epoch_steps
    rows, evaluator = [], None
    for name in args.variants.split(","):
        cfg = dataclasses.replace(base, out_dir=os.path.join(args.out, name), **VARIANTS[name])
        t0 = time.time()
        result = tag.train(cfg)
        minutes = (time.time() - t0) / 60
        device = next(result["generator"].parameters()).device
        if evaluator is None or evaluator.cfg.scaling != cfg.scaling:
            evaluator = tag.Evaluator(dataclasses.replace(cfg, out_dir=args.out), tag.MelDataset(cfg, device), device)
        vocoder = tag.load_vocoder(cfg, device)
        scored = [(f"{name}, EMA", result["generator_ema"]), (f"{name}, no EMA", result["generator"])]
        for label, generator in scored:
            m = evaluator.evaluate(generator, vocoder, cfg.epochs)
            rows.append((label, m, minutes))
    ref = evaluator.reference
    print(f"\nFSDD, {steps} generator steps per variant, {tag.pick_device(args.device)}; "
          f"{PRESET['eval_samples']} generated clips per digit, vocoded by HiFi-GAN (universal) and re-analysed")
    print("| variant | accuracy | worst digit | Inception Score | Frechet distance | within-class diversity | "
          "train minutes |")
    print("|---|---|---|---|---|---|---|")
    for label, m, minutes in rows:
        print(f"| {label} | {m['accuracy']:.3f} | {min(m['per_class']):.2f} | {m['inception_score']:.2f} | "
              f"{m['frechet']:.1f} | {m['diversity']:.2f} | {minutes:.1f} |")
    print(f"| real test clips | {ref['accuracy']:.3f} | {min(ref['per_class']):.2f} | {ref['inception_score']:.2f} | "
          f"{ref['frechet']:.1f} (train vs test) | {ref['diversity']:.2f} | |")


if __name__ == "__main__":
    main()
