"""A second, non-speech dataset for the quality benchmark: synthetic instrument notes, pitched and percussive.

    python bench/make_notes.py                 # writes runs/notes/{train,test}/<instrument>/*.wav
    python bench/quality.py --data runs/notes --minutes 15 --variants default

Six classes, each a recipe with random pitch, loudness, onset and decay, so that a class is a timbre, not one
sound: pluck (harmonics whose decay quickens with their number), organ (steady odd-heavy harmonics), bell
(inharmonic partials), brass (a sawtooth whose brightness swells), kick (a falling sine thump) and snare (a noise
burst over a short tone). Pitched classes span two octaves (98-392 Hz), so the harmonic stripes move between clips as
a speaker's do. 0.75 s clips at 22.05 kHz; 150 training and 30 test clips per class; the same files every run.
"""
import argparse
import os

import numpy as np
import soundfile as sf

SR, SECONDS = 22050, 0.75


def harmonics(t, f0, amps, decays, rng):
    """sum_k amps[k] sin(2 pi k f0 t + phase_k) exp(-decays[k] t), harmonics kept below 8 kHz."""
    k = np.arange(1, len(amps) + 1)[:, None]
    keep = (k[:, 0] * f0 < 8000)
    phase = rng.uniform(0, 2 * np.pi, (len(amps), 1))
    partials = np.sin(2 * np.pi * k * f0 * t + phase) * np.exp(-np.asarray(decays)[:, None] * t)
    return (np.asarray(amps)[keep, None] * partials[keep]).sum(0)


def note(kind, rng):
    t = np.arange(int(SR * SECONDS)) / SR
    f0 = 98 * 2 ** rng.uniform(0, 2)  # G2..G4
    n = np.arange(1, 41)
    if kind == "pluck":
        wav = harmonics(t, f0, 1 / n ** rng.uniform(0.8, 1.2), rng.uniform(2, 4) * n ** 0.8, rng)
    elif kind == "organ":
        wav = harmonics(t, f0, np.where(n % 2, 1.0, 0.35) / n, np.full(40, 0.3), rng)
        wav *= np.clip(t / 0.03, 0, 1) * np.clip((SECONDS - 0.05 - t) / 0.05, 0, 1)
    elif kind == "bell":
        ratios, amps = np.array([1, 2.76, 5.40, 8.93, 13.34]), np.array([1, 0.6, 0.4, 0.25, 0.15])
        f = 2 * f0 * ratios
        keep = f < 8000
        wav = (amps[keep, None] * np.sin(2 * np.pi * f[keep, None] * t)
               * np.exp(-rng.uniform(3, 5) * ratios[keep, None] ** 0.5 * t)).sum(0)
    elif kind == "brass":
        swell = np.clip(t / rng.uniform(0.1, 0.25), 0, 1)  # brightness rises: harmonic k appears as swell grows
        k = n[:, None]
        wav = (np.sin(2 * np.pi * k * f0 * t) / k * np.exp(-k / (1 + 12 * swell)) * (k * f0 < 8000)).sum(0)
        wav *= np.clip(t / 0.04, 0, 1) * np.clip((SECONDS - 0.05 - t) / 0.05, 0, 1)
    elif kind == "kick":
        f = rng.uniform(45, 60) + rng.uniform(80, 140) * np.exp(-t / 0.03)
        wav = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-t / rng.uniform(0.12, 0.25))
    else:  # snare
        noise = rng.standard_normal(len(t)) * np.exp(-t / rng.uniform(0.06, 0.12))
        tone = np.sin(2 * np.pi * rng.uniform(170, 230) * t) * np.exp(-t / 0.05)
        wav = noise * rng.uniform(0.5, 1.0) + tone
    onset = int(rng.uniform(0, 0.08) * SR)  # the note starts somewhere in the first 80 ms
    wav = np.concatenate([np.zeros(onset), wav[:len(t) - onset]])
    wav += 0.002 * rng.standard_normal(len(t))  # a recording's noise floor
    return (rng.uniform(0.3, 0.9) * wav / np.abs(wav).max()).astype(np.float32)


KINDS = ("pluck", "organ", "bell", "brass", "kick", "snare")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "runs", "notes"))
    p.add_argument("--train", type=int, default=150)
    p.add_argument("--test", type=int, default=30)
    args = p.parse_args()
    for split, count, seed in (("train", args.train, 0), ("test", args.test, 1)):
        rng = np.random.default_rng(seed)
        for kind in KINDS:
            os.makedirs(os.path.join(args.out, split, kind), exist_ok=True)
            for i in range(count):
                path = os.path.join(args.out, split, kind, f"{kind}_{i:03d}.wav")
                wav = note(kind, rng)  # drawn even when the file exists: the same files every run
                if not os.path.exists(path):
                    sf.write(path, wav, SR)
    print(f"Wrote {len(KINDS)} classes x ({args.train} train + {args.test} test) clips to {args.out}")


if __name__ == "__main__":
    main()
