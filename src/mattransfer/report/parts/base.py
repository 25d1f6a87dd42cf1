"""The report side of a study part: its section of the report, registered under the part's name.

A section is a function ``write(doc, context) -> answers`` registered with
``@register_section("part1", "Part 1 — relations between datasets")``: the name is the study part's
(`mattransfer.study.parts`), the title heads the section and names the part in the task table. It adds
its figures, tables and sentences to ``doc`` and returns its headline sentences for the "Answers" at the top.
``context`` holds the results and what several sections read: a part's finished fine-tunes, their gains
paired with scratch, and the gain cells with CIs (computed once: Part 2 compares with Part 1's).
``report/parts/__init__.py`` imports each section file; their order there is the report's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from mattransfer.report import analysis as an
from mattransfer.report import text as tx
from mattransfer.report import uncertainty as un
from mattransfer.study.parts import PARTS
from mattransfer.study.results import transfer_gain

CELL = [*an.PAIR, "method", "finetune_size"]  # a gain cell of the parts that sweep fine-tune sizes


def gain_cells(paired: pd.DataFrame, keys: list[str], study_dir: Path) -> pd.DataFrame:
    """`analysis.gain_cells` with CIs, calls and BH q-values."""
    return un.with_intervals(an.gain_cells(paired, keys), paired, keys, study_dir)


@dataclass
class Context:
    """What a section reads: the results table, the scratch baselines flagged as broken, the study directory."""

    results: pd.DataFrame
    broken: pd.DataFrame
    study_dir: Path
    _cells: dict[str, pd.DataFrame] = field(default_factory=dict)

    def number(self, part: str) -> int:
        return PARTS[part].number

    def rows(self, part: str) -> pd.DataFrame:
        """The part's finished fine-tunes, its scratch baselines included."""
        return an.finetune_rows(self.results, self.number(part))

    def paired(self, part: str) -> pd.DataFrame:
        """The part's transfer fine-tunes paired with their scratch baselines, broken baselines left out."""
        return un.usable(transfer_gain(self.rows(part)), self.broken)

    def cells(self, part: str) -> pd.DataFrame:
        """The part's gain cells per (source, target, method, fine-tune size), with CIs."""
        if part not in self._cells:
            self._cells[part] = gain_cells(self.paired(part), CELL, self.study_dir)
        return self._cells[part]


Write = Callable[[tx.Document, Context], list[str]]


@dataclass(frozen=True)
class Section:
    title: str
    write: Write


SECTIONS: dict[str, Section] = {}


def register_section(name: str, title: str) -> Callable[[Write], Write]:
    def decorate(write: Write) -> Write:
        if name not in PARTS:
            raise ValueError(f"report section {name!r}: no study part of that name; parts: {sorted(PARTS)}")
        SECTIONS[name] = Section(title, write)
        return write

    return decorate
