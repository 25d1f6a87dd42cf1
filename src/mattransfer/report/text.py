"""The report's Markdown document and the formatting its sections share: numbers, CIs, p-values, pairs,
dataset order, and frames in the shape the figures read. Imported by the sections as ``tx``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mattransfer.data.registry import STUDY_KEYS
from mattransfer.report.figures import save

DATASET_AXES = ("dataset", "dataset")
ALPHA = 0.05  # significance level of every test the report states in words
GAIN_COLOR_LIMIT = 100.0  # % — colours saturate here so one disastrous cell does not wash out the rest


@dataclass
class Document:
    """Markdown lines, the figures they link (``figures/*.png``) and the tables they link (``*.csv``)."""

    root: Path
    lines: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        (self.root / "figures").mkdir(parents=True, exist_ok=True)
        # a part that lost its rows since the last report must not keep its old figure
        for old in (self.root / "figures").glob("*.png"):
            old.unlink()

    def heading(self, text: str, level: int = 2) -> None:
        self.lines += ["#" * level + " " + text, ""]

    def text(self, *paragraphs: str) -> None:
        for paragraph in paragraphs:
            self.lines += [paragraph, ""]

    def bullets(self, items: list[str]) -> None:
        self.lines += [f"- {item}" for item in items] + [""]

    def table(self, frame: pd.DataFrame) -> None:
        cells = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
        self.lines += ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1],
                       *["| " + " | ".join(row) + " |" for row in cells], ""]

    def figure(self, figure: Figure, name: str, caption: str) -> None:
        save(figure, self.root / "figures" / f"{name}.png")
        self.lines += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", ""]

    def csv(self, frame: pd.DataFrame, name: str, what: str) -> None:
        frame.to_csv(self.root / f"{name}.csv", index=False)
        self.text(f"All {what}: [{name}.csv]({name}.csv).")


def pct(fraction: float) -> str:
    return f"{100 * fraction:+.1f} %"


def pp(fraction: float) -> str:
    return f"{100 * fraction:+.1f} pp"


def p(p_value: float, n_seeds: int) -> str:
    """A p-value, or why there is none."""
    if n_seeds < 2:
        return "n/a (1 seed)"
    return f"{p_value:.2g}" if np.isfinite(p_value) else "n/a"


def significantly(rows: pd.DataFrame, n_seeds: str) -> str:
    """How many of ``rows`` are significant (paired test, ≥2 seeds), or that none could be tested."""
    tested = rows[n_seeds] >= 2
    if len(rows) and not tested.any():
        return "no paired test with 1 seed"
    return f"{int((tested & (rows['p_value'] < ALPHA)).sum())} significantly"


def gain_ci(gain: float, low: float, high: float) -> str:
    """A gain with its CI: "+12.0 % [+3.1, +20.2]"; no CI: "+12.0 % (no CI)"."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{pct(gain)} (no CI)"
    return f"{pct(gain)} [{100 * low:+.1f}, {100 * high:+.1f}]"


def pp_ci(change: float, low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{pp(change)} (no CI)"
    return f"{pp(change)} [{100 * low:+.1f}, {100 * high:+.1f}]"


def q(q_value: float) -> str:
    """A q-value (Benjamini–Hochberg), or n/a."""
    return f"{q_value:.2g}" if np.isfinite(q_value) else "n/a"


def mae_n(mae: str, unit: str, n_test: float) -> str:
    """An MAE with its test-set size."""
    return f"{mae} {unit} (n_test {n(n_test)})" if np.isfinite(n_test) else f"{mae} {unit}"


def pm(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.2g}" if np.isfinite(std) else f"{mean:.4g}"


def n(size: float) -> str:
    """A count with thousands separators."""
    return f"{size:,.0f}"


def sizes(values: pd.Series) -> str:
    return ", ".join(n(v) for v in sorted(values))


def size_panel(sizes: pd.Series) -> pd.Series:
    return sizes.map(lambda size: f"fine-tune n = {n(size)}")


def pair(source: str, target: str) -> str:
    return f"{source} → {target}"


def order(names: set[str]) -> list[str]:
    """The study's dataset order, then any other names alphabetically."""
    return [k for k in STUDY_KEYS if k in names] + sorted(names - set(STUDY_KEYS))


def matrix(frame: pd.DataFrame, value: str, names: list[str],
           labels: tuple[str, str] = ("source (pre-trained on)", "target (fine-tuned on)")) -> pd.DataFrame:
    """source × target matrix of ``value`` over every dataset (the diagonal and untested pairs NaN)."""
    matrix = frame.pivot_table(index="source", columns="target", values=value, aggfunc="mean")
    return matrix.reindex(index=names, columns=names).rename_axis(index=labels[0], columns=labels[1])


def curves(stats: pd.DataFrame, *, panel: pd.Series, series: pd.Series, x: str) -> pd.DataFrame:
    """``stats`` in the shape ``curves_figure`` reads."""
    return stats.assign(panel=panel, series=series, x=stats[x])
