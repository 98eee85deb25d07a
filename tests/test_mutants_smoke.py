"""benchmarks/mutants.py plants a bug in a copy and restores the file byte for byte (no test is run here:
the mutation check itself is slow and not part of CI)."""

import pathlib

import pytest

from benchmarks import mutants

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_mutant_is_applied_to_the_copy_and_reverted(tmp_path):
    m = next(m for m in mutants.MUTANTS if m.name.startswith("divergence stop"))
    src = ROOT / m.file
    copy = tmp_path / m.file
    copy.parent.mkdir(parents=True)
    copy.write_bytes(src.read_bytes())
    with mutants.applied(m, tmp_path) as path:
        text = path.read_text()
        assert m.new in text and m.old not in text
        assert src.read_bytes() != path.read_bytes()  # the working tree is never touched
    assert copy.read_bytes() == src.read_bytes()
    stale = mutants.Mutant("stale", m.file, "no such text in the file", "x", m.test)
    with pytest.raises(mutants.StaleMutant, match="occurs 0 times"):
        with mutants.applied(stale, tmp_path):
            pass
    assert copy.read_bytes() == src.read_bytes()
    names = [m.name for m in mutants.MUTANTS]
    assert len(names) == len(set(names))
