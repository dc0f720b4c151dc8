"""Controls for evaluator v2: inputs whose right score is known, scored by the same judge as the GAN.

    python bench/controls.py                                        # FSDD: ../shared/data/fsdd/{train,test}
    python bench/controls.py --data runs/gm_notes --n_frames 128     # the music set (bench/make_gm_notes.py)

Every control is a set of the N test clips (or N clips of noise), scored like the real floor and the vocoder
ceiling: against the floor's N training clips, every clip level-normalised. What each must show:

| control | expected |
|---|---|
| test clips, reloaded from their files | the floor itself (about 1.0x) |
| white noise | chance accuracy; Frechet >= 100x the floor |
| test clips, labels shifted by one class | accuracy 0 |
| test clips + white noise at 20 dB SNR | accuracy >= 95 %, while the band Frechet rises sharply |
| test clips at -20 dB and at +20 dB | Frechet within 1.2x the floor (the gain is not content) |
| test clips through Griffin-Lim, through HiFi-GAN | the two vocoder ceilings |
"""
import argparse
import dataclasses
import os
import sys

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_audio_gan as tag  # noqa: E402

FSDD = os.path.join(REPO, "..", "shared", "data", "fsdd")


def held_out_waves(cfg, root):
    """The clips under root as float waveforms of n_frames * hop samples from their start (silence after short ones),
    with their labels; as load_audio reads them (peak 0.95). (N, samples), (N,)"""
    _, files, _ = tag.discover(root)
    size = cfg.n_frames * cfg.hop_length
    waves = torch.zeros(len(files), size)
    for i, (path, _) in enumerate(files):
        audio = tag.load_audio(path, cfg.sample_rate)[:size]
        waves[i, :len(audio)] = torch.from_numpy(audio)
    return waves, torch.tensor([y for _, y in files])


def with_noise(waves, snr_db, seed=0):
    """White noise at snr_db below each clip's own power (over its non-silent samples), over the whole clip."""
    power = torch.stack([w[w != 0].pow(2).mean() for w in waves])[:, None]
    rng = torch.Generator().manual_seed(seed)
    return waves + torch.randn(waves.shape, generator=rng) * (power / 10 ** (snr_db / 10)).sqrt()


def controls(ev, waves, labels, vocoder):
    """[(name, metrics)] of every control (see the module's table) for an Evaluator ev, the test clips as waves and
    labels, and the run's vocoder (None: the HiFi-GAN row is left out)."""
    mel = lambda w: ev.mel(w.to(ev.device))[..., :ev.cfg.n_frames]
    logmel, n_classes = mel(waves), len(ev.classes)
    scored = lambda x, y=labels: ev.against_train(ev.heard_set(x, y))
    rng = torch.Generator().manual_seed(1)
    rows = [("test clips, reloaded from their files", scored(logmel)),
            ("white noise", scored(mel(0.3 * torch.randn(waves.shape, generator=rng)))),
            ("test clips, labels shifted by one class", scored(logmel, (labels + 1) % n_classes)),
            ("test clips + white noise at 20 dB SNR", scored(mel(with_noise(waves, 20)))),
            ("test clips at -20 dB", scored(mel(waves * 0.1))),
            ("test clips at +20 dB", scored(mel(waves * 10))),
            ("test clips through Griffin-Lim", scored(ev.hear(logmel, None)))]
    if vocoder is not None:
        rows.append((f"test clips through {ev.cfg.vocoder}", scored(ev.hear(logmel, vocoder))))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=FSDD, help="a folder with train/<class>/ and test/<class>/ audio")
    p.add_argument("--n_frames", type=int, default=64)
    p.add_argument("--out", default=os.path.join(REPO, "runs", "quality"), help="where the judge's caches live")
    p.add_argument("--device", default="auto")
    p.add_argument("--vocoder", default="universal", help='the run\'s vocoder, e.g. "bigvgan"')
    args = p.parse_args()
    from quality import judge  # the very judge of bench/quality.py, with its caches
    ev, vocoder = judge(args.data, args.out, args.device, args.n_frames, args.vocoder)
    waves, labels = held_out_waves(ev.cfg, os.path.join(args.data, "test"))
    f = ev.floor
    print(f"\n{os.path.basename(os.path.normpath(args.data))}, {args.n_frames} frames; N = {f['n']} clips per set, "
          f"against the floor's {f['n']} training clips")
    print("| control | accuracy | Frechet (x floor) | band Frechet (x floor) | KID (real 0) |")
    print("|---|---|---|---|---|")
    print(f"| *real floor: test clips as the evaluator reads them* | {f['accuracy']:.3f} | {f['frechet']:.2f} (1.0x) | "
          f"{f['frechet_mel']:.2f} (1.0x) | {f['kid']:.4f} |")
    for name, m in controls(ev, waves, labels, vocoder):
        print(f"| {name} | {m['accuracy']:.3f} | {m['frechet']:.2f} ({m['frechet'] / f['frechet']:.2f}x) | "
              f"{m['frechet_mel']:.2f} ({m['frechet_mel'] / f['frechet_mel']:.2f}x) | {m['kid']:.4f} |")


if __name__ == "__main__":
    main()
