"""Does a generated note hold its pitch to its end? (issue #32, item 3: long clips). For real clips and a run's
samples alike: how alike the harmonic stripes are at the start and at the end of each clip's sound.

    python bench/hold_probe.py --data runs/gm_notes4 runs/gm4s/default-42/checkpoint.pt

For each clip: its sounding frames (mean log-mel within 40 dB of its loudest frame); their first and last thirds,
each averaged over time; from each such spectrum its slow trend over the mel bins taken away (a 7-bin moving mean),
which leaves the stripes; then the Pearson correlation of the two stripe patterns. 1: the same pitches at the end as at
the start; near 0: other ones. A piano's decay changes its tilt, not its stripes, so real notes score high. Clips with
fewer than 12 sounding frames are left out. Per class: the median over the real training clips (one crop each, at
the run's n_frames) and over the run's samples (the EMA generator, fixed noise, as many per class as real clips, at
most 30). Only seeded RNGs of its own are drawn; nothing is written.
"""
import argparse
import dataclasses
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_audio_gan as tag  # noqa: E402

SOUNDING_NATS = 2 * math.log(10)  # 40 dB below the loudest frame (log-mel is the log of a magnitude)


def stripes(spectrum, width=7):
    """Spectra (..., n_mels) less their moving mean over `width` bins: the harmonic stripes without the tilt."""
    flat = spectrum.reshape(-1, 1, spectrum.shape[-1])
    trend = F.avg_pool1d(F.pad(flat, (width // 2, width // 2), mode="replicate"), width, 1)
    return (flat - trend).reshape(spectrum.shape)


def held(logmel, min_frames=12):
    """Per clip of logmel (N, n_mels, T): the correlation of the stripes of its sound's first and last thirds (nan
    where fewer than min_frames frames sound)."""
    out = torch.full((len(logmel),), float("nan"))
    for i, clip in enumerate(logmel):
        level = clip.mean(0)  # (T,)
        sounding = (level > level.max() - SOUNDING_NATS).nonzero().squeeze(1)
        if len(sounding) < min_frames:
            continue
        third = len(sounding) // 3
        a, b = (stripes(clip[:, idx].mean(1)) for idx in (sounding[:third], sounding[-third:]))
        out[i] = torch.corrcoef(torch.stack([a, b]))[0, 1]
    return out


def medians(values, labels, n_classes):
    """The median of values per class, ignoring nan."""
    return [values[labels == c].nanmedian().item() for c in range(n_classes)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", required=True, help="a folder with train/<class>/ (the runs' data)")
    p.add_argument("--idea", default="", help="the runs' generator is bench/critic_ideas.py's idea of this name")
    args = p.parse_args()
    if args.idea:  # build the checkpoints' generator as critic_ideas.py trained it
        import critic_ideas
        critic_ideas.active["idea"], tag.build_models = args.idea, critic_ideas.build_models
    rows = []
    for path in args.checkpoints:
        generator, ckpt, cfg, scale, _ = tag.load_generator(tag.Config(mode="evaluate", checkpoint=path, device="cpu"))
        if not rows:  # the real clips once, at the first run's n_frames
            real = tag.MelClips(dataclasses.replace(cfg, base_path=os.path.join(args.data, "train"),
                                                    out_dir=os.path.dirname(os.path.abspath(path))),  # its mel cache
                                torch.device("cpu"), scale)
            classes = real.classes
            with tag.own_rng(torch.device("cpu")):
                torch.manual_seed(0)
                real_held = held(real.logmels(torch.arange(len(real))))
            per_class = torch.bincount(real.labels, minlength=len(classes)).clamp(max=30)
            rows.append(("*real training clips*", medians(real_held, real.labels, len(classes))))
        if list(ckpt["classes"]) != list(classes):
            sys.exit(f"{path}: classes {ckpt['classes']} are not the data's {classes}")
        noise, labels = tag.seeded_noise(range(len(classes)), per_class, cfg.latent_dim, 1)
        rows.append((path, medians(held(tag.sample_logmels(generator, noise, labels, scale)), labels, len(classes))))
    print("| clips | " + " | ".join(classes) + " | all (mean) |\n" + "|---" * (len(classes) + 2) + "|")
    for name, values in rows:
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {sum(values) / len(values):.2f} |")


if __name__ == "__main__":
    main()
