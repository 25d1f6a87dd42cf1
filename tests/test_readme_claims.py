"""The README's study numbers are the committed results': a generated passage that differs fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from mattransfer.report import claims

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_passages_match_the_committed_results():
    blocks = list(claims.BLOCK.finditer(README))
    assert {(m["dir"], m["kind"]) for m in blocks} >= {("docs/results/paper-seed0", "summary"),
                                                       ("docs/results/paper-seed0", "accuracy")}
    assert all((ROOT / m["dir"] / "results.csv").is_file() for m in blocks)
    assert claims.check(README, ROOT) == []


@pytest.mark.parametrize("true, doctored", [
    ("bandgap ← expt_gap +12.0 %", "bandgap ← expt_gap +42.0 %"),
    ("test MAE 89.2 cm^-1", "test MAE 79.2 cm^-1"),
    ("in 8 of them", "in 0 of them"),
])
def test_a_doctored_number_is_caught(true, doctored):
    assert true in README
    problems = claims.check(README.replace(true, doctored), ROOT)
    assert len(problems) == 1 and "docs/results/paper-seed0" in problems[0] and doctored in problems[0]


def test_update_restores_the_committed_numbers():
    doctored = README.replace("test MAE 89.2 cm^-1", "test MAE 79.2 cm^-1")
    assert claims.update(doctored, ROOT) == README


def test_unsupported_claims_are_gone():
    """Sentences the committed results contradict (issue 13) must not come back by hand."""
    for phrase in ["physically linked", "276 of 420", "−10 % to +42 %", "matters more than the amount of data"]:
        assert phrase not in README
