"""A real percussion set for the quality benchmark: the two multi-velocity acoustic kits of Debian's avldrums
soundfont, rendered with FluidSynth, one hit per clip.

    apt-get install fluidsynth avldrums.lv2-soundfont              # Debian's packages; nothing is downloaded here
    python bench/make_drums.py                                      # writes runs/drums/{train,test}/<class>/*.wav
    python bench/controls.py --data runs/drums --n_frames 176       # the judge, its controls and vocoder ceilings

Five classes, every articulation of each in both kits (Black Pearl and Red Zeppelin, 4-piece; General MIDI drum
notes): kick (36), snare (37 cross-stick, 38 centre, 40 rimshot), hihat (42 closed, 44 pedal), tom (41, 43, 45,
47, 48, 50) and cymbal (49 and 57 crash, 51 and 59 ride, 55 splash), each at 16 velocities (8 to 127). A clip
starts at the note-on (the attack is its first frame, as a one-shot's is) and ends where the hit has decayed 60 dB
below its peak, 2 s at most, with 5 ms fades; nothing else is trimmed or padded. The split is by articulation: of
each class's (kit, note) pairs, sorted, every third from the second on is a test articulation, so the test set holds
hits (and, for the kick, a whole kit's drum) that the GAN never heard. The audio is never committed.
"""
import argparse
import os
import shutil
import sys
import tempfile

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_gm_notes import SR, render  # noqa: E402  (the same MIDI writer and FluidSynth call)

KITS = {"black_pearl": "/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2",
        "red_zeppelin": "/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"}
CLASSES = {"kick": (36,), "snare": (37, 38, 40), "hihat": (42, 44), "tom": (41, 43, 45, 47, 48, 50),
           "cymbal": (49, 51, 55, 57, 59)}
VELOCITIES = tuple(range(8, 128, 8)) + (127,)
HOLD, GAP, LONGEST, FLOOR_DB, FADE = 2.0, 4.0, 2.0, -60.0, 0.005  # seconds, except FLOOR_DB


def one_shot(audio):
    """The hit from its first sample to where it has decayed FLOOR_DB below its peak (LONGEST s at most), faded."""
    audio = audio[:round(LONGEST * SR)]
    loud = np.nonzero(np.abs(audio) > np.abs(audio).max() * 10 ** (FLOOR_DB / 20))[0]
    clip = audio[:loud[-1] + 1].copy()
    n = min(round(FADE * SR), len(clip) // 2)
    clip[-n:] *= np.linspace(1, 0, n)  # no click where the tail is cut
    return clip


def articulations():
    """{(class, kit, note): "train" or "test"}: per class, every third (kit, note) pair from the second on is test."""
    split = {}
    for name, notes in CLASSES.items():
        pairs = sorted((kit, note) for kit in KITS for note in notes)
        for i, (kit, note) in enumerate(pairs):
            split[(name, kit, note)] = "test" if i % 3 == 1 else "train"
    return split


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "runs", "drums"))
    args = p.parse_args()
    if not shutil.which("fluidsynth") or not all(map(os.path.isfile, KITS.values())):
        raise SystemExit("Needs fluidsynth and the avldrums kits: apt-get install fluidsynth avldrums.lv2-soundfont")
    split, counts, lengths = articulations(), {"train": 0, "test": 0}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for kit, soundfont in KITS.items():
            hits = [(note, v) for notes in CLASSES.values() for note in notes for v in VELOCITIES]
            audio = render(0, hits, soundfont, tmp, note=HOLD, gap=GAP)  # the kit is the soundfont's one preset
            for i, (note, velocity) in enumerate(hits):
                name = next(c for c, notes in CLASSES.items() if note in notes)
                clip = audio[round(i * GAP * SR):][:round(GAP * SR)]
                if np.abs(clip).max() < 1e-3:  # a velocity layer the kit does not sound: leave it out
                    continue
                clip = one_shot(clip)
                part = split[(name, kit, note)]
                path = os.path.join(args.out, part, name, f"{kit}_{note}_v{velocity:03d}.wav")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                sf.write(path, clip, SR, subtype="PCM_16")
                counts[part] += 1
                lengths.setdefault(name, []).append(len(clip) / SR)
    print(f"Wrote {counts['train']} train and {counts['test']} test clips to {args.out}; lengths (s), median and max:",
          ", ".join(f"{c} {np.median(v):.2f}/{max(v):.2f}" for c, v in lengths.items()))


if __name__ == "__main__":
    main()
