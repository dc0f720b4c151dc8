"""A real-sounding music set for the quality benchmark: General MIDI instrument notes rendered with FluidSynth.

    apt-get install fluidsynth musescore-general-soundfont      # Debian's packages; nothing is downloaded here
    python bench/make_gm_notes.py                               # writes runs/gm_notes/{train,test}/<instrument>/*.wav
    python bench/quality.py --data runs/gm_notes --n_frames 128 --minutes 15 --seeds 42,43
    python bench/make_gm_notes.py --seconds 4 --out runs/gm_notes4      # 4-s clips: each note held 3.5 s, then released

Eight instruments (piano, marimba, church organ, nylon guitar, violin, trumpet, clarinet, flute), every semitone of
each one's usual range at three velocities (50, 80, 110): 1.5 s clips at 22.05 kHz, each a 1 s note and its release
(`--seconds S`: S-second clips, each note held S - 0.5 s).
The split is by pitch, so the test set holds pitches the GAN never heard: every pitch with pitch % 5 == 2 is a test
pitch (about a fifth). Rendered once per instrument from one MIDI file of all its notes, 2 s apart (no reverb, no
chorus), then cut at the known note-on times: the same files every run. The audio is never committed.
"""
import argparse
import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np
import soundfile as sf

SR, NOTE, GAP, CLIP = 22050, 1.0, 2.0, 1.5  # sample rate, note length, note-on spacing, clip length (seconds)
VELOCITIES = (50, 80, 110)
INSTRUMENTS = {  # name: (General MIDI program, lowest and highest MIDI pitch)
    "piano": (0, 33, 96), "marimba": (12, 45, 96), "organ": (19, 36, 84), "guitar": (24, 40, 79),
    "violin": (40, 55, 96), "trumpet": (56, 55, 82), "clarinet": (71, 50, 89), "flute": (73, 60, 96),
}
SOUNDFONTS = ("/usr/share/sounds/sf3/MuseScore_General.sf3", "/usr/share/sounds/sf2/TimGM6mb.sf2",
              "/usr/share/sounds/sf2/FluidR3_GM.sf2")
TICKS = 480  # per quarter note; at the default 120 bpm a second is 960 ticks


def varlen(n):
    """A MIDI variable-length quantity."""
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append((n & 0x7F) | 0x80)
    return bytes(reversed(out))


def midi_file(program, notes, note=NOTE, gap=GAP):
    """A format-0 MIDI file: program change, then each (pitch, velocity) held `note` seconds, one every `gap`."""
    ticks = lambda s: round(s * 2 * TICKS)
    events, now = [varlen(0) + bytes([0xC0, program])], 0
    for i, (pitch, velocity) in enumerate(notes):
        on, off = ticks(i * gap), ticks(i * gap + note)
        events += [varlen(on - now) + bytes([0x90, pitch, velocity]), varlen(off - on) + bytes([0x80, pitch, 0])]
        now = off
    events.append(varlen(ticks(gap)) + b"\xff\x2f\x00")  # end of track after the last release
    track = b"".join(events)
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS) + b"MTrk" + struct.pack(">I", len(track)) + track


def timing(clip_s):
    """(note, gap): how long each note is held and how far apart they start for clips of clip_s seconds, each one
    keeping the default's 0.5 s release and 0.5 s of silence before the next note."""
    if clip_s <= CLIP - NOTE:
        raise SystemExit(f"--seconds {clip_s}: a clip must be longer than its {CLIP - NOTE} s release")
    return clip_s - (CLIP - NOTE), clip_s + (GAP - CLIP)


def render(program, notes, soundfont, tmp, note=NOTE, gap=GAP):
    """The notes rendered by FluidSynth as one mono float array at SR."""
    mid, wav = os.path.join(tmp, "notes.mid"), os.path.join(tmp, "notes.wav")
    with open(mid, "wb") as f:
        f.write(midi_file(program, notes, note, gap))
    subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-r", str(SR), "-F", wav, "-T", "wav",
                    soundfont, mid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    assert sr == SR, sr
    return audio.mean(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "runs", "gm_notes"))
    p.add_argument("--seconds", type=float, default=CLIP, help="clip length; each note is held 0.5 s less")
    p.add_argument("--soundfont", default="", help="an .sf2/.sf3 file; default: the first of Debian's that exists")
    args = p.parse_args()
    soundfont = args.soundfont or next((s for s in SOUNDFONTS if os.path.isfile(s)), "")
    if not shutil.which("fluidsynth") or not os.path.isfile(soundfont):
        raise SystemExit("Needs fluidsynth and a General MIDI soundfont: "
                         "apt-get install fluidsynth musescore-general-soundfont")
    clip_s = args.seconds
    note, gap = timing(clip_s)
    counts = {"train": 0, "test": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (program, low, high) in INSTRUMENTS.items():
            notes = [(pitch, v) for pitch in range(low, high + 1) for v in VELOCITIES]
            audio = render(program, notes, soundfont, tmp, note, gap)
            for i, (pitch, velocity) in enumerate(notes):
                clip = audio[round(i * gap * SR):][:round(clip_s * SR)]
                if np.abs(clip).max() < 1e-3:  # a note the soundfont does not sound: leave it out
                    continue
                split = "test" if pitch % 5 == 2 else "train"
                path = os.path.join(args.out, split, name, f"{name}_{pitch:03d}_v{velocity}.wav")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                sf.write(path, clip, SR, subtype="PCM_16")
                counts[split] += 1
    print(f"Wrote {counts['train']} train and {counts['test']} test clips of {len(INSTRUMENTS)} instruments to "
          f"{args.out} (soundfont {soundfont})")


if __name__ == "__main__":
    main()
