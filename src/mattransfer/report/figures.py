"""The report's figures: one heatmap function and one curve function serve every figure.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), which renders
PNG through Agg without touching pyplot's global state or the user's backend.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FuncFormatter, NullLocator

NCOLS = 3  # panels per row
METHOD_COLORS = {"scratch": "black", "heads": "tab:blue", "full": "tab:orange", "freeze": "tab:green",
                 "lora": "tab:purple", "extra_trees": "0.45", "hist_gb": "0.7"}  # also the legend order of methods


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def series_colors(names: list[str]) -> dict[str, str]:
    """Scratch and the methods keep their colour in every figure; other series (sources, labelled methods such
    as freeze-2) take the tab10 colours no method has, in order."""
    taken = {mpl.colors.to_hex(c) for c in METHOD_COLORS.values()}
    palette = [*mpl.colormaps["tab10"].colors, *mpl.colormaps["tab20"].colors[1::2]]  # then tab10's light shades
    others = itertools.cycle([c for c in map(mpl.colors.to_hex, palette) if c not in taken])
    return {name: METHOD_COLORS.get(name) or mpl.colors.to_hex(next(others)) for name in names}


def heatmap_figure(panels: dict[str, pd.DataFrame], *, title: str, colorbar_label: str, fmt: str,
                   cmap: str, vmin: float, vmax: float, log: bool = False) -> Figure:
    """One annotated heatmap per panel (index on y, columns on x; NaN cells grey), one shared colour bar.

    A single panel goes untitled under the figure title. ``log`` spreads counts spanning decades
    (zero stays at the bottom of the scale).
    """
    n_rows, n_cols = next(iter(panels.values())).shape
    norm = mpl.colors.SymLogNorm(1.0, vmin=vmin, vmax=vmax) if log else mpl.colors.Normalize(vmin, vmax)
    figure, axes = _grid(len(panels), panel_size=(0.6 * n_cols + 1.6, 0.5 * n_rows + 1.4), colorbar=True)
    for ax, (name, matrix) in zip(axes, panels.items()):
        image = _heatmap(ax, matrix, fmt=fmt, cmap=cmap, norm=norm)
        ax.set_title(name if len(panels) > 1 else "")
    values = np.concatenate([m.to_numpy(dtype=float).ravel() for m in panels.values()])
    # a pointed end on the colour bar marks cells beyond the saturated colour (their number is exact)
    low, high = (values < vmin).any(), (values > vmax).any()  # NaN compares False
    extend = "both" if low and high else "min" if low else "max" if high else "neither"
    figure.colorbar(image, ax=axes, label=colorbar_label, shrink=0.9, extend=extend)
    figure.suptitle(title)
    return figure


def _heatmap(ax: Axes, matrix: pd.DataFrame, *, fmt: str, cmap: str, norm: mpl.colors.Normalize) -> AxesImage:
    values = matrix.to_numpy(dtype=float)
    colormap = mpl.colormaps[cmap].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colormap, norm=norm, aspect="auto")
    ax.set_xticks(range(values.shape[1]), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), matrix.index)
    ax.set_xlabel(matrix.columns.name or "")
    ax.set_ylabel(matrix.index.name or "")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            # dark cells get white text so the number stays readable
            r, g, b, _ = colormap(image.norm(value))
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                    color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
        else:
            ax.text(j, i, "—", ha="center", va="center", fontsize=8, color="0.4")
    return image


def curves_figure(stats: pd.DataFrame, *, title: str, xlabel: str, xscale: str = "log",
                  baseline: pd.DataFrame | None = None, order: list[str] | None = None) -> Figure:
    """Test MAE (mean ± std over seeds) against ``x``, one line per ``series``, one panel per ``panel``.

    ``stats`` has columns panel, series, x, mae_mean, mae_std, unit; panels appear in their order
    there, series in ``order`` (default: the methods' order), then any others. ``baseline`` (panel,
    mae_mean, mae_std, optional label) is drawn as horizontal lines with their ±std bands: scratch (the default
    label) dashed black, any other dotted grey. ``xscale``
    "symlog" keeps x = 0 on a log-like axis (λ sweeps).
    """
    panels = list(dict.fromkeys(stats["panel"]))
    present = set(stats["series"])
    ranked = [s for s in (order or list(METHOD_COLORS)) if s in present]
    series_order = ranked + sorted(present - set(ranked))
    colors = series_colors(series_order)
    figure, axes = _grid(len(panels), panel_size=(4.2, 3.2))
    handles = {}
    for ax, panel in zip(axes, panels):
        data = stats[stats["panel"] == panel]
        for series in [s for s in series_order if s in set(data["series"])]:
            line = data[data["series"] == series].sort_values("x")
            handles[series] = ax.errorbar(line["x"], line["mae_mean"], yerr=line["mae_std"].fillna(0), marker="o",
                                          markersize=4, capsize=3, color=colors[series], label=series)
        if baseline is not None:
            handles.update(_baseline(ax, baseline[baseline["panel"] == panel]))
        _x_axis(ax, data["x"], xscale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test MAE ({_unit(data['unit'].iloc[0])})")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
    rank = {s: i for i, s in enumerate(series_order)}
    names = sorted(handles, key=lambda s: rank.get(s, len(rank)))  # a scratch baseline goes last
    figure.legend([handles[s] for s in names], names, loc="outside right center")
    figure.suptitle(title)
    return figure


def scatter_figure(points: pd.DataFrame, *, title: str, xlabel: str, ylabel: str) -> Figure:
    """Points (x, y) coloured by ``series``, one panel per ``panel``, with zero lines."""
    panels = list(dict.fromkeys(points["panel"]))
    names = list(dict.fromkeys(points["series"]))
    colors = series_colors(names)
    figure, axes = _grid(len(panels), panel_size=(4.2, 3.4))
    handles = {}
    for ax, panel in zip(axes, panels):
        data = points[points["panel"] == panel]
        for name, group in data.groupby("series", sort=False):
            handles[name] = ax.scatter(group["x"], group["y"], s=18, color=colors[name], label=name)
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.axvline(0, color="0.6", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
    figure.legend([handles[n] for n in names if n in handles], [n for n in names if n in handles],
                  loc="outside right center")
    figure.suptitle(title)
    return figure


def _baseline(ax: Axes, rows: pd.DataFrame) -> dict:
    """One horizontal line with its ±std band per row, named by its ``label`` (default: scratch)."""
    handles = {}
    for row in rows.itertuples():
        label = getattr(row, "label", "scratch")
        color, style = ("black", "--") if label == "scratch" else ("dimgray", ":")
        mean, std = float(row.mae_mean), float(np.nan_to_num(row.mae_std))
        handles[label] = ax.axhline(mean, color=color, linestyle=style, label=label)
        ax.axhspan(mean - std, mean + std, color=color, alpha=0.1)
    return handles


def _x_axis(ax: Axes, x: pd.Series, xscale: str) -> None:
    """Ticks at the values measured, written out (10, 100, 1,000), not as powers of ten."""
    values = np.unique(x.dropna())
    if xscale == "symlog":
        positive = values[values > 0]
        ax.set_xscale("symlog", linthresh=positive.min() if len(positive) else 1.0)
    else:
        ax.set_xscale(xscale)
    ax.set_xticks(values)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(values) > 4:
        ax.tick_params(axis="x", labelrotation=45)


def _unit(unit: str) -> str:
    """Axis-label unit: powers as superscripts (cm^-1 → cm⁻¹ via mathtext)."""
    return "dimensionless" if unit in ("", "-") else re.sub(r"\^(-?\d+)", r"$^{\1}$", unit)


def _grid(n: int, *, panel_size: tuple[float, float], colorbar: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels, ``NCOLS`` to a row; the unused cells of the last row hidden."""
    n_cols = min(n, NCOLS)
    n_rows = math.ceil(n / n_cols)
    width = panel_size[0] * n_cols + (1.2 if colorbar else 1.6)  # room for the colour bar or the legend
    figure = Figure(figsize=(width, panel_size[1] * n_rows + 0.6), layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return figure, axes[:n]
