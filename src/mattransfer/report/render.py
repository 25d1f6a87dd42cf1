"""``write_report``: a study's Markdown and HTML report, its figures, and the answers in words.

The task table and the flagged baselines come first, then each study part's section (`report.parts`, one
file per part), which draws its figures and states what the numbers say; its headline goes to the
"Answers" section at the top. A part without finished tasks gets a line saying so, not a figure.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd
from markdown_it import MarkdownIt

from mattransfer.report import analysis as an
from mattransfer.report import text as tx
from mattransfer.report import uncertainty as un
from mattransfer.report.parts import SECTIONS, Context, Section
from mattransfer.study.parts import PARTS

STATISTICS_NOTE = (
    "Transfer gain = (MAE_scratch − MAE_TL) / MAE_scratch, where the scratch model is trained on the very same "
    "fine-tune subset (same target, size and seed); a cell's gain is the mean of its per-seed gains. "
    f"Every cell's gain carries a {100 * un.CONFIDENCE:.0f} % confidence interval: with the tasks' "
    "`test_predictions.csv`, a paired bootstrap over the test structures (`scipy.stats.bootstrap`, "
    f"{un.N_RESAMPLES} resamples, percentile; one resample index for the transfer and the scratch errors of "
    "every seed), which measures test-set noise for one seed too; without predictions and with ≥2 seeds, the "
    "t interval of the mean per-seed gain; else none (untested). A difference is called (helps / hurts) only "
    "when its CI excludes zero, else it is within noise. n_test is the number of test structures. "
    "Over seeds: a two-sided paired t-test (`scipy.stats.ttest_rel`) of TL vs scratch test MAE (n/a with 1 seed), "
    f"and a Wilcoxon signed-rank test from {un.WILCOXON_MIN_PAIRS} seeds. Helps / hurts counts are per method and "
    "also given after Benjamini–Hochberg control of the false discovery rate "
    "(`scipy.stats.false_discovery_control`) over each method's tested cells, each cell's p from a paired "
    f"t-test over test structures (else over seeds). Scratch runs whose R² is ≥ {un.R2_DROP} below the same "
    "target's scratch at the next smaller size (or its other seeds) are flagged as broken and no gain is "
    f"computed against them. Statements call a difference significant at p < {tx.ALPHA}."
)


def write_report(study_dir: Path) -> Path:
    """Write ``study_dir/report/report.md`` and ``report.html`` from the study's results; return the Markdown path.

    Reads ``results.parquet`` (else ``results.csv``) and, when present, ``relatedness.csv``.
    Figures go to ``report/figures/*.png`` (linked from the Markdown, embedded in the HTML).
    """
    study_dir = Path(study_dir)
    results = an.load_results(study_dir)
    doc = tx.Document(study_dir / "report")
    doc.prepare()
    planned = an.planned_tasks(study_dir)
    sections = _sections(results, planned)
    _tasks(doc, results, planned, sections)
    broken = un.broken_baselines(results)
    _broken_baselines(doc, broken)
    context = Context(results, broken, study_dir)
    answers = []
    for name, section in sections.items():
        if PARTS[name].number in _present(results, planned):  # the task table says which parts are not in it
            doc.heading(section.title)
            answers += section.write(doc, context)
    title = f"Transfer study report: {study_dir.resolve().name}"
    markdown = "\n".join([f"# {title}", "", "## Answers", "", *[f"- {a}" for a in answers], "", *doc.lines])
    md_path = doc.root / "report.md"
    md_path.write_text(markdown)
    (doc.root / "report.html").write_text(_html(markdown, doc.root, title))
    return md_path


def _state(tasks: int, failed: int, not_run: int) -> str:
    if tasks == 0:
        return "not in this study"
    left = [f"{n} {what}" for n, what in ((not_run, "not run yet"), (failed, "failed")) if n]
    return f"incomplete: {', '.join(left)}" if left else "all tasks done"


def _sections(results: pd.DataFrame, planned: dict[int, int] | None) -> dict[str, Section]:
    """The sections of the parts on by default (a study without one is told so) and of any other part the
    study has tasks of."""
    present = _present(results, planned)
    return {name: section for name, section in SECTIONS.items()
            if PARTS[name].model_fields["enabled"].default or PARTS[name].number in present}


def _present(results: pd.DataFrame, planned: dict[int, int] | None) -> set[int]:
    """The numbers of the parts the study has tasks of."""
    return set(results["part"].dropna()) | {part for part, tasks in (planned or {}).items() if tasks}


def _tasks(doc: tx.Document, results: pd.DataFrame, planned: dict[int, int] | None,
           sections: dict[str, Section]) -> None:
    doc.heading("Tasks")
    titles = {PARTS[name].number: section.title for name, section in sections.items()}
    status = an.task_status(results, list(titles), planned)
    status["part"] = status["part"].map(titles)
    status["state"] = [_state(*counts) for counts in zip(status["tasks"], status["failed"], status["not_run"])]
    doc.table(status.rename(columns={"not_run": "not run yet"}))
    errors = an.error_summary(results)
    if len(errors):
        doc.text("Failed tasks by error (last line of each error):")
        doc.table(errors)
    caps = results.loc[results["cap_note"] != "", "cap_note"].value_counts()
    if len(caps):
        doc.text("Sizes capped at what the data holds:")
        doc.bullets([f"{note} ({count} tasks)" for note, count in caps.items()])
    doc.text(STATISTICS_NOTE)


def _broken_baselines(doc: tx.Document, broken: pd.DataFrame) -> None:
    if broken.empty:
        return
    doc.heading("Scratch baselines flagged as broken", 3)
    doc.text(f"These scratch runs have a test R² at least {un.R2_DROP} below their reference; no transfer gain is "
             "computed against them (their fine-tunes appear in the figures, not in the gain tables).")
    doc.table(pd.DataFrame({
        "target": broken["target"], "fine-tune n": broken["finetune_size"].map(tx.n), "seed": broken["seed"],
        "test MAE": [f"{m:.4g} {u}" for m, u in zip(broken["test_mae"], broken["unit"])],
        "R²": broken["test_r2"].map("{:.2f}".format),
        "reference": [f"{w} (R² {r:.2f})" for w, r in zip(broken["reference"], broken["reference_r2"])],
    }))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""


def _html(markdown: str, root: Path, title: str) -> str:
    """The Markdown as one self-contained page: figures embedded as base64 PNG."""
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    def embed(match: re.Match) -> str:
        data = base64.b64encode((root / match.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'
    return _PAGE.format(title=html.escape(title), body=re.sub(r'src="(figures/[^"]+\.png)"', embed, body))
