"""bench/mutations.py, the core tests' mutation score: every mutation must still apply to the script as it is now,
once, and change it; a list that no longer matches the code would score a broken GAN as caught or skip it silently.
(Not marked core: in the mutated copies the bench makes, this test would fail for every mutation and hide the rest.)"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import mutations  # noqa: E402  (bench/mutations.py)


def test_every_mutation_applies_once_to_todays_script():
    source = open(mutations.SCRIPT).read()
    assert len(mutations.MUTATIONS) >= 12
    for name, old, new in mutations.MUTATIONS:
        assert source.count(old) == 1, name
        assert mutations.mutate(source, old, new) != source, name
    with pytest.raises(SystemExit, match="occurs 0 times"):
        mutations.mutate(source, "no such source text", "")
