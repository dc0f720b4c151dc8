"""bench/make_drums.py, the percussion set: a split by articulation that leaves every class in both halves, and
one-shots that keep their attack at the start and end where the hit has died away."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import make_drums  # noqa: E402  (bench/make_drums.py)


def test_the_split_is_by_articulation_and_every_class_is_in_both_halves():
    split = make_drums.articulations()
    assert len(split) == 2 * sum(map(len, make_drums.CLASSES.values()))  # every (class, kit, note) once
    for name in make_drums.CLASSES:
        parts = [part for (c, _, _), part in split.items() if c == name]
        assert "test" in parts and "train" in parts, name
    assert split[("kick", "red_zeppelin", 36)] == "test"  # a whole kit's kick the GAN never hears


def test_a_one_shot_starts_at_its_attack_and_ends_where_it_has_decayed_60_db():
    sr = make_drums.SR
    t = np.arange(3 * sr) / sr
    hit = (np.sin(2 * np.pi * 60 * t) * np.exp(-t / 0.1)).astype(np.float32)  # -60 dB after 0.69 s
    clip = make_drums.one_shot(hit)
    assert clip[0] == hit[0] and abs(len(clip) / sr - 0.69) < 0.02  # from the note-on, to the -60 dB point
    assert clip[-1] == 0 and np.allclose(clip[:100], hit[:100])  # faded at the end only
    long = np.ones(5 * sr, dtype=np.float32)  # a cymbal that never dies: 2 s at most
    assert len(make_drums.one_shot(long)) == round(make_drums.LONGEST * sr)
