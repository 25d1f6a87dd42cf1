"""The transfer study: declarative, resumable grids of pre-trainings and fine-tunes, in parts (`parts/`, one file each).

``load_spec`` reads a study file or a preset, ``run_study`` runs what is missing in a study
directory, ``study_status`` counts its tasks; the results table is ``results.parquet`` there.
"""

from mattransfer.study.execute import run_study, study_status
from mattransfer.study.parts.part2 import pick_part2_targets
from mattransfer.study.results import COLUMNS, results_table, transfer_gain
from mattransfer.study.spec import PRESETS, StudySpec, load_spec, write_preset

__all__ = [
    "COLUMNS", "PRESETS", "StudySpec", "load_spec", "pick_part2_targets", "results_table", "run_study",
    "study_status", "transfer_gain", "write_preset",
]
