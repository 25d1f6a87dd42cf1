"""The study-part plug-ins: every part has a section of the study file under its name and a report section
under the same name, numbers are unique, and only enabled parts plan."""

from __future__ import annotations

import pytest

from mattransfer.report.parts import SECTIONS, register_section
from mattransfer.study import StudySpec, load_spec
from mattransfer.study.parts import PARTS, Part, register_part


def test_every_part_has_a_study_section_and_a_report_section():
    assert list(PARTS) == ["part1", "part2", "part3", "part4", "dft_to_expt"] == list(SECTIONS)
    assert [PARTS[name].number for name in PARTS] == [1, 2, 3, 4, 5]
    assert all(name in StudySpec.model_fields and StudySpec.model_fields[name].annotation is part
               for name, part in PARTS.items())


def test_only_enabled_parts_plan():
    quick = load_spec("quick")  # Parts 2 and 4 are off there, and the parts off by default
    assert [part.name for part in quick.parts()] == ["part1", "part3"]
    assert [part.name for part in load_spec("dft-to-expt").parts()] == ["dft_to_expt"]
    assert {type(part) for part in quick.parts()} == {PARTS["part1"], PARTS["part3"]}


def test_a_part_number_and_a_report_name_must_be_the_registry_s():
    with pytest.raises(ValueError, match="number 1 is 'part1'"):
        register_part("other", number=1)(type("Other", (Part,), {}))
    with pytest.raises(ValueError, match="no study part of that name"):
        register_section("nope", "Nope")(lambda doc, context: [])
    assert "other" not in PARTS and "nope" not in SECTIONS
