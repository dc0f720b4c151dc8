"""bench/make_gm_notes.py, the music set: each note held as long as asked and started one gap after the last, so that
a clip cut at a note-on holds that note alone."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import make_gm_notes  # noqa: E402  (bench/make_gm_notes.py)


def events(midi):
    """[(absolute tick, status, data bytes)] of a format-0 file's one track, read back from its bytes."""
    track, out, i, now = midi[22:], [], 0, 0
    while i < len(track):
        delta = 0
        while True:  # a variable-length quantity: 7 bits a byte, the high bit set on all but the last
            delta, i = (delta << 7) | (track[i] & 0x7F), i + 1
            if track[i - 1] < 0x80:
                break
        now += delta
        status = track[i]
        size = 3 if status == 0xFF else (1 if status >> 4 == 0xC else 2)
        out.append((now, status, tuple(track[i + 1:i + 1 + size])))
        i += 1 + size
    return out


def test_notes_are_held_note_seconds_and_start_gap_seconds_apart():
    second = 2 * make_gm_notes.TICKS  # 120 bpm
    assert make_gm_notes.timing(1.5) == (make_gm_notes.NOTE, make_gm_notes.GAP) == (1.0, 2.0)  # the default set
    note, gap = make_gm_notes.timing(4.0)  # --seconds 4
    assert (note, gap) == (3.5, 4.5)
    got = events(make_gm_notes.midi_file(19, [(60, 80), (64, 110)], note, gap))
    assert got[0] == (0, 0xC0, (19,))  # the program first
    ons = [(t, d) for t, s, d in got if s == 0x90]
    offs = [t for t, s, _ in got if s == 0x80]
    assert ons == [(0, (60, 80)), (round(4.5 * second), (64, 110))]
    assert offs == [round(3.5 * second), round(8.0 * second)]
    assert got[-1] == (round(12.5 * second), 0xFF, (0x2F, 0x00))  # the track ends a gap after the last note-off
    default = events(make_gm_notes.midi_file(19, [(60, 80), (64, 110)]))  # the 1.5-s set: 1 s notes, 2 s apart
    assert [t for t, s, _ in default if s in (0x80, 0x90)] == [0, second, 2 * second, 3 * second]


def test_hold_probe_tells_a_held_note_from_one_that_changes_pitch():
    import torch
    import hold_probe  # bench/hold_probe.py

    bins, frames = torch.arange(80.0).view(80, 1), 90
    comb = lambda f0: -4 + 4 * torch.cos(2 * torch.pi * bins / f0).clamp(min=0) ** 8  # stripes every f0 bins
    held_note = comb(9.0).expand(80, frames).clone()
    jumped = held_note.clone()
    jumped[:, 45:] = comb(13.0)  # the same note, another pitch from halfway on
    decaying = held_note - torch.linspace(0, 3, frames)  # fades 26 dB: its stripes stay where they are
    short = torch.full((80, frames), -11.5129)  # HiFi-GAN's silence, log(1e-5)
    short[:, :8] = comb(9.0)  # 8 sounding frames only
    got = hold_probe.held(torch.stack([held_note, jumped, decaying, short]))
    assert got[0] > 0.99 and got[2] > 0.99
    assert got[1] < 0.5
    assert torch.isnan(got[3])
    assert hold_probe.medians(got, torch.tensor([0, 0, 1, 1]), 2)[1] == got[2].item()  # nan left out
