"""The transfer study: declarative, resumable grids of pre-trainings and fine-tunes (Parts 1-4).

``load_spec`` reads a study file or a preset, ``run_study`` runs what is missing in a study
directory, ``study_status`` counts its tasks; the results table is ``results.parquet`` there.
"""

from mattransfer.study.execute import run_study, study_status
from mattransfer.study.results import COLUMNS, pick_part2_targets, results_table, transfer_gain
from mattransfer.study.spec import PRESETS, StudySpec, load_spec, write_preset

__all__ = [
    "COLUMNS", "PRESETS", "StudySpec", "load_spec", "pick_part2_targets", "results_table", "run_study",
    "study_status", "transfer_gain", "write_preset",
]
