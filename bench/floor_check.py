"""Where the quiet frames of generated clips sit, against real ones, before and after the vocoder (issue #32).

    python bench/floor_check.py runs/gpu_per_step/default-42/checkpoint.pt --real ../shared/data/fsdd/test

Generates 30 fixed-noise samples per class from the checkpoint (its EMA weights, standing statistics re-estimated) and
reads every real clip under --real; prints, for each set, the quantiles of each frame's level (its loudest mel bin) in
dB below the clip's loudest frame, and of every bin's value in dB (HiFi-GAN's floor is -100 dB). Then the same for 60
of each through HiFi-GAN (universal), peak-normalised and re-analysed, and for the generated mels with every bin
within 1 nat of the floor set to the floor (a gate): does the generator leave a floor that the vocoder turns into noise?
"""
import argparse
import dataclasses
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_audio_gan as tag  # noqa: E402

DB = 20 / math.log(10)  # dB per nat of magnitude


def stats(logmel, name):
    """One line: frame levels below the peak frame, and bin values, as dB quantiles (5, 25, 50, 75 %)."""
    frame = logmel.max(1).values  # (N, T): the loudest bin of each frame
    below_peak = (frame - frame.max(1, keepdim=True).values) * DB
    q = torch.tensor([0.05, 0.25, 0.5, 0.75])
    print(f"{name}: frame level below the peak, dB {[round(v, 1) for v in below_peak.flatten().quantile(q).tolist()]}; "
          f"bin values, dB {[round(v, 1) for v in (logmel * DB).flatten().quantile(q).tolist()]}; "
          f"bins at the floor (< -99 dB) {float((logmel * DB < -99).float().mean()):.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--real", default=os.path.join(tag.__file__, "..", "..", "shared", "data", "fsdd", "test"))
    p.add_argument("--out", default=os.path.join("runs", "floor_check"), help="where the real clips' mel cache goes")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = tag.Config(mode="evaluate", checkpoint=args.checkpoint, out_dir=args.out, device="cpu")
    generator, ckpt, saved, scale, _ = tag.load_generator(cfg)
    tag.standing_stats(generator, len(ckpt["classes"]), saved.latent_dim)
    noise, labels = tag.seeded_noise(range(len(ckpt["classes"])), 30, saved.latent_dim, 0)
    fake = tag.sample_logmels(generator, noise, labels, scale)  # (N, n_mels, n_frames)
    data = tag.MelClips(dataclasses.replace(saved, base_path=os.path.normpath(args.real), out_dir=args.out,
                                            mode="train"), tag.torch.device("cpu"))
    real = data.logmels(torch.arange(len(data)))
    stats(real, "real")
    stats(fake, "generated")
    vocoder = tag.load_vocoder(dataclasses.replace(saved, vocoder="universal"), torch.device("cpu"))
    mel = tag.MelSpectrogram(saved)

    def heard(logmel):  # vocoded, peak-normalised, re-analysed: what the judge and a listener get
        wav = tag.vocode(logmel, vocoder, saved)
        return mel(wav / wav.abs().amax(1, keepdim=True).clamp(min=1e-9))

    idx = torch.randperm(len(fake), generator=torch.Generator().manual_seed(0))[:60]
    stats(heard(real[idx]), "real through HiFi-GAN")
    stats(heard(fake[idx]), "generated through HiFi-GAN")
    gated = torch.where(fake[idx] < tag.LOG_FLOOR + 1.0, torch.full_like(fake[idx], tag.LOG_FLOOR), fake[idx])
    stats(heard(gated), "generated, gated at the floor + 1 nat, through HiFi-GAN")


if __name__ == "__main__":
    main()
