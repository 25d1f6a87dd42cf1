"""The report on a synthetic results table with known MAEs, and property relatedness on small tables."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from scipy import stats

from mattransfer.data.table import PropertyTable
from mattransfer.report import write_report
from mattransfer.report import analysis as an
from mattransfer.report import text as tx
from mattransfer.report.figures import curves_figure, series_colors
from mattransfer.report.parts import SECTIONS
from mattransfer.study.relatedness import COLUMNS, property_relatedness
from mattransfer.study.results import COLUMNS as SCHEMA
from mattransfer.study.results import transfer_gain

UNITS = {"gvrh": "log10(GPa)", "phonons": "cm^-1", "dielectric": "-"}
BASE_MAE = {"gvrh": 0.2, "phonons": 60.0, "dielectric": 5.0}
SIZES = [10, 100, 500]
SEEDS = [0, 1, 2]
# Part 1 gain per (source, target) and method; the mean over seeds of the synthetic per-seed gains is exactly this.
GAIN = {
    ("gvrh", "phonons"): {"full": 0.30, "heads": 0.20},
    ("dielectric", "phonons"): {"full": 0.10, "heads": -0.15},  # transfer hurts with heads
    ("phonons", "gvrh"): {"full": 0.25, "heads": 0.10},
    ("dielectric", "gvrh"): {"full": 0.05, "heads": 0.02},
    ("gvrh", "dielectric"): {"full": 0.06, "heads": 0.03},
    ("phonons", "dielectric"): {"full": 0.15, "heads": 0.12},
}
RELATED = {frozenset({"gvrh", "phonons"}): 0.8, frozenset({"phonons", "dielectric"}): 0.4,
           frozenset({"gvrh", "dielectric"}): 0.1}
PART3 = {"full": 0.2, "heads": 0.1, "freeze": 0.05, "lora": 0.15}  # gain at n=500; at n=10 heads beats full
LAMBDA_GAIN = {0.0: 0.10, 0.1: 0.15, 1.0: 0.05}
DTYPES = {  # as the engine writes them: nullable integers, pandas strings
    **dict.fromkeys(["part", "pretrain_size", "finetune_size", "seed", "n_train", "n_val", "n_test", "epochs_run",
                     "best_epoch"], "Int64"),
    **dict.fromkeys(["kind", "source", "target", "method", "unit", "task_hash", "status", "error", "cap_note"],
                    "string"),
}


def row(**values) -> dict:
    base = dict.fromkeys(SCHEMA, np.nan) | {
        "kind": "finetune", "source": "", "status": "done", "error": "", "cap_note": "", "n_test": 200,
        "epochs_run": 50, "best_epoch": 40, "wall_seconds": 1.0,
    }
    base |= values
    if base["method"] != "scratch" and pd.isna(base["aux_lambda"]):
        base["aux_lambda"] = 0.0  # the engine records the pre-training's λ on its fine-tunes; scratch has none
    base["unit"] = UNITS.get(base["target"], "eV")
    base["task_hash"] = str(hash(tuple(str(base[k]) for k in SCHEMA[:9])))
    return base


def scratch_mae(target: str, size: float, seed: int) -> float:
    return BASE_MAE[target] * (1 + 3 / np.sqrt(size)) * (1 + 0.05 * seed)


def tl_mae(target: str, size: float, seed: int, gain: float) -> float:
    # seed noise with mean zero over SEEDS, so the cell's mean gain is exactly ``gain``
    return scratch_mae(target, size, seed) * (1 - gain) * (1 + 0.01 * (seed - 1))


def finetune(part: int, source: str, target: str, size: float, method: str, seed: int, mae: float, **extra) -> dict:
    return row(part=part, source=source, target=target, finetune_size=size, method=method, seed=seed,
               test_mae=mae, test_rmse=1.3 * mae, test_r2=0.8, n_train=int(0.9 * size), n_val=size - int(0.9 * size),
               **extra)


def synthetic_results(seeds: list[int] = SEEDS, parts: tuple[int, ...] = (1, 2, 3, 4)) -> pd.DataFrame:
    rows = []
    for (source, target), gains in GAIN.items():
        for method, size, seed in itertools.product(gains, SIZES, seeds):
            rows.append(finetune(1, source, target, size, method, seed, tl_mae(target, size, seed, gains[method]),
                                 pretrain_size=941))
    for target, size, seed in itertools.product(UNITS, SIZES, seeds):
        rows.append(finetune(1, "", target, size, "scratch", seed, scratch_mae(target, size, seed)))
    for source, seed in itertools.product(UNITS, seeds):
        rows.append(row(part=1, kind="pretrain", source=source, target=source, method="pretrain", seed=seed,
                        pretrain_size=941, n_train=847, n_val=94, test_mae=0.1))
    rows.append(row(part=1, kind="pretrain", source="piezo", target="piezo", method="pretrain", seed=0,
                    pretrain_size=941, status="failed",
                    error="Traceback (most recent call last):\n  ...\nValueError: piezo: too few samples"))
    if 2 in parts:
        rows += part2_rows(seeds)
    if 3 in parts:
        rows += part3_rows(seeds)
    if 4 in parts:
        rows += part4_rows(seeds)
    return pd.DataFrame(rows, columns=SCHEMA).astype(DTYPES)


def part2_rows(seeds: list[int]) -> list[dict]:
    rows = []
    for requested, seed in itertools.product([1000, 5000, 50000], seeds):
        size = min(requested, 9000)  # the source holds 9,000: the table records the size used and a note
        note = "pretrain_size 50000 capped at 9000" if requested > size else ""
        rows.append(row(part=2, kind="pretrain", source="gvrh", target="gvrh", method="pretrain", seed=seed,
                        pretrain_size=size, n_train=int(0.9 * size), n_val=size - int(0.9 * size), cap_note=note))
        for target in ["phonons", "dielectric"]:
            gain = 0.1 + 0.05 * np.log10(size / 1000)
            rows.append(finetune(2, "gvrh", target, 900, "full", seed, tl_mae(target, 900, seed, gain),
                                 pretrain_size=size, cap_note=note))
    for target, seed in itertools.product(["phonons", "dielectric"], seeds):
        rows.append(finetune(2, "", target, 900, "scratch", seed, scratch_mae(target, 900, seed)))
    return rows


def part3_rows(seeds: list[int]) -> list[dict]:
    rows = []
    for (source, target), method, size, seed in itertools.product(
            [("gvrh", "phonons"), ("phonons", "gvrh")], PART3, SIZES, seeds):
        gain = PART3[method] if size > 10 else {"heads": 0.2}.get(method, 0.05)
        if (method, size, seed) == ("lora", 10, 2):
            rows.append(finetune(3, source, target, size, method, seed, np.nan, pretrain_size=941,
                                 status="failed", error="RuntimeError: LoRA rank exceeds layer width"))
            continue
        rows.append(finetune(3, source, target, size, method, seed, tl_mae(target, size, seed, gain),
                             pretrain_size=941))
    for target, size, seed in itertools.product(["gvrh", "phonons"], SIZES, seeds):
        rows.append(finetune(3, "", target, size, "scratch", seed, scratch_mae(target, size, seed)))
    return rows


def part4_rows(seeds: list[int]) -> list[dict]:
    rows = []
    for size, seed in itertools.product([100, 500], seeds):
        rows.append(finetune(4, "", "gvrh", size, "scratch", seed, scratch_mae("gvrh", size, seed)))
    for lam, seed in itertools.product(LAMBDA_GAIN, seeds):
        rows.append(row(part=4, kind="pretrain", source="bandgap", target="bandgap", method="pretrain", seed=seed,
                        pretrain_size=941, aux_lambda=lam, n_train=847, n_val=94, test_mae=0.3))
        for size in [100, 500]:
            rows.append(finetune(4, "bandgap", "gvrh", size, "full", seed,
                                 tl_mae("gvrh", size, seed, LAMBDA_GAIN[lam]), pretrain_size=941, aux_lambda=lam))
    return rows


def relatedness_frame() -> pd.DataFrame:
    return pd.DataFrame([
        {"source": a, "target": b, "n_shared": 100, "spearman_rho": RELATED[frozenset({a, b})], "p_value": 1e-3,
         "relatedness": RELATED[frozenset({a, b})]}
        for a, b in itertools.permutations(UNITS, 2)
    ], columns=COLUMNS)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    study_dir = tmp_path_factory.mktemp("study")
    synthetic_results().to_parquet(study_dir / "results.parquet")
    relatedness_frame().to_csv(study_dir / "relatedness.csv", index=False)
    report = write_report(study_dir)
    return study_dir, report.read_text()


def test_files_and_figures(study):
    study_dir, markdown = study
    report = study_dir / "report"
    assert (report / "report.md").is_file() and (report / "report.html").is_file()
    figures = {p.stem for p in (report / "figures").glob("*.png")}
    assert figures == {"part1_gain_full", "part1_gain_heads", "part1_learning_full", "part1_learning_heads",
                       "overlap", "relatedness", "part2_scaling", "part3_methods", "part4_lambda"}
    assert all(f"](figures/{name}.png)" in markdown for name in figures)
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(figures) and 'src="figures/' not in page
    assert "<table>" in page


def test_gain_values():
    results = synthetic_results()
    cells = an.gain_cells(transfer_gain(an.finetune_rows(results, 1)), ["source", "target", "method", "finetune_size"])
    assert len(cells) == len(GAIN) * 2 * len(SIZES)
    for cell in cells.itertuples():
        assert cell.gain_mean == pytest.approx(GAIN[cell.source, cell.target][cell.method], abs=1e-12)
        tl = [tl_mae(cell.target, cell.finetune_size, s, GAIN[cell.source, cell.target][cell.method]) for s in SEEDS]
        scratch = [scratch_mae(cell.target, cell.finetune_size, s) for s in SEEDS]
        assert cell.gain_mean == pytest.approx(np.mean([(b - a) / b for a, b in zip(tl, scratch)]))
        assert cell.p_value == pytest.approx(stats.ttest_rel(tl, scratch).pvalue)
        assert cell.n_seeds == 3


def test_best_source_stated(study):
    _, markdown = study
    for target in UNITS:
        phrases = []
        for method in ["full", "heads"]:
            gains = {s: g[method] for (s, t), g in GAIN.items() if t == target}
            best = max(gains, key=gains.get)
            phrases.append(f"with {method}, {best} helps most ({100 * gains[best]:+.1f} %)")
        assert f"**{target}**: " + "; ".join(phrases) in markdown


def test_negative_cells_listed(study):
    _, markdown = study
    listed = re.findall(r"^\| (\w+) → (\w+) \| (\w+) \| ([\d,]+) \| ([+-][\d.]+) %", markdown, flags=re.M)
    expected = {("dielectric", "phonons", "heads", str(n), "-15.0") for n in SIZES}
    assert set(listed) == expected
    assert "with heads: of 18 cells, 18 with a CI; transfer helps in" in markdown
    assert f"hurts in {len(SIZES)} (CI excludes 0)" in markdown  # counted per method, never mixed
    assert "| dielectric → phonons | heads | 10 | -15.0 % [" in markdown and "(n_test 200)" in markdown


def test_answers_for_every_part(study):
    _, markdown = study
    answers = markdown.split("## Answers")[1].split("## Tasks")[0]
    for topic in ["Best source per target", "Relatedness vs transfer: with full", "Data vs physics, like for like",
                  "Whole network vs head:", "Structure bias:"]:
        assert topic in answers
    assert answers.count("not answered") == 1  # this synthetic study has no transferability.csv
    assert "Transferability scores vs gains: not answered (no transferability.csv)" in answers
    assert "**gvrh → phonons**: full beats heads at n = 100, 500; heads wins at n = 10" in markdown
    assert "n = 100, full: best λ = 0.1" in markdown
    assert "9,000" in markdown and "1,000 → 9,000 samples" in markdown  # capped pre-training size used


def test_failures_and_missing_parts_reported(tmp_path, study):
    _, markdown = study
    assert "| Part 1 — relations between datasets | 145 | 144 | 1 | 0 | incomplete: 1 failed |" in markdown
    assert "| 1 | ValueError: piezo: too few samples | 1 |" in markdown
    assert "| 3 | RuntimeError: LoRA rank exceeds layer width | 2 |" in markdown

    synthetic_results(seeds=[0], parts=(1,)).to_csv(tmp_path / "results.csv", index=False)
    text = write_report(tmp_path).read_text()
    for part in (2, 3, 4):
        assert f"| {SECTIONS['part' + str(part)].title} | 0 | 0 | 0 | 0 | not in this study |" in text
    assert "Relatedness vs transfer: not answered" in text  # Part 1 is in the study, without relatedness.csv
    # Parts not in the study get their row in the task table and nothing else: no section, no answer.
    assert "## Part 2" not in text and "Data vs physics" not in text and "Whole network vs head" not in text
    assert "n/a (1 seed)" in text
    # one seed and no predictions: no CI, so nothing is called helped or hurt
    assert "none with a confidence interval (one seed and no test predictions)" in text
    assert {p.stem for p in (tmp_path / "report" / "figures").glob("*.png")} == {
        "part1_gain_full", "part1_gain_heads", "part1_learning_full", "part1_learning_heads"}


def test_tasks_not_run_yet_come_from_the_plan(tmp_path):
    """A study in progress: the plan's tasks without a result are counted as not run yet, per part."""
    synthetic_results(seeds=[0], parts=(1,)).to_csv(tmp_path / "results.csv", index=False)
    status = pd.read_csv(tmp_path / "results.csv")["status"]
    done, failed = int((status == "done").sum()), int((status == "failed").sum())
    plan = [{"hash": f"p{k}", "parts": [1]} for k in range(len(status) + 7)] + [{"hash": "q", "parts": [2, 4]}]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    text = write_report(tmp_path).read_text()
    assert (f"| {SECTIONS['part1'].title} | {len(status) + 7} | {done} | {failed} | 7 | incomplete: 7 not run yet, {failed} failed |"
            in text) and failed == 1
    assert f"| {SECTIONS['part2'].title} | 1 | 0 | 0 | 1 | incomplete: 1 not run yet |" in text
    assert f"| {SECTIONS['part3'].title} | 0 | 0 | 0 | 0 | not in this study |" in text


def test_reference_lines_carry_their_labels_and_series_never_share_a_method_colour():
    stats = pd.DataFrame({"panel": "t", "series": ["scratch", "freeze-2", "freeze-2"], "x": [10, 10, 100],
                          "mae_mean": [1.0, 0.8, 0.6], "mae_std": 0.1, "unit": "eV"})
    lines = pd.DataFrame({"panel": ["t"], "mae_mean": [0.9], "mae_std": [0.0], "label": ["DFT model, zero-shot"]})
    figure = curves_figure(stats, title="t", xlabel="n", baseline=lines)
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["scratch", "freeze-2", "DFT model, zero-shot"]
    names = ["heads", "full", "freeze", "lora", "freeze-1", "freeze-2", "freeze-4"] + [f"target{k}" for k in range(9)]
    colors = series_colors(names)
    assert len(set(colors.values())) == len(colors)


def test_empty_results_table(tmp_path):
    pd.DataFrame(columns=SCHEMA).to_parquet(tmp_path / "results.parquet")
    text = write_report(tmp_path).read_text()
    assert text.count("not in this study") == 4 and "not answered" not in text and "## Part" not in text
    assert (tmp_path / "report" / "report.html").is_file()


def test_relatedness_test_matches_scipy():
    results = synthetic_results()
    cells = an.gain_cells(transfer_gain(an.finetune_rows(results, 1)), ["source", "target", "method", "finetune_size"])
    test = an.relatedness_test(cells, relatedness_frame()).set_index("method")
    pairs = list(GAIN)
    expected = stats.spearmanr([GAIN[p]["full"] for p in pairs], [RELATED[frozenset(p)] for p in pairs])
    assert test.loc["full", "spearman_rho"] == pytest.approx(expected.statistic)
    assert test.loc["full", "p_value"] == pytest.approx(expected.pvalue)
    assert test.loc["full", "n_pairs"] == len(pairs)


# --- property relatedness -------------------------------------------------------------------------------

CATIONS = ["Li", "Na", "K", "Rb", "Cs", "Ag"]


def rocksalt(cation: str, anion: str = "Cl") -> Structure:
    """Primitive rock-salt cell (Fm-3m, 225)."""
    a = 5.6
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cesium_chloride(cation: str, anion: str = "Cl") -> Structure:
    """CsCl-type cell (Pm-3m, 221): a polymorph of the rock-salt compound."""
    return Structure(Lattice.cubic(3.5), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def table(name: str, structures: list[Structure], y: list[float], source: str | None = None) -> PropertyTable:
    return PropertyTable(name=name, target="y", unit="-", source=source or name,
                         ids=[f"{name}-{i}" for i in range(len(y))], structures=structures, y=np.asarray(y, float))


def test_property_relatedness():
    y = np.arange(len(CATIONS), dtype=float)
    tables = {
        "a": table("a", [rocksalt(c) for c in CATIONS], y),
        "b": table("b", [rocksalt(c) for c in reversed(CATIONS)], list(np.exp(y[::-1]))),  # monotone in a's target
        "c": table("c", [cesium_chloride(c) for c in CATIONS], y),  # same formulas, other space group
        "d": table("d", [rocksalt(c, "Br") for c in CATIONS], y),  # other formulas
    }
    result = property_relatedness(tables).set_index(["source", "target"])
    assert list(result.reset_index().columns) == COLUMNS
    assert len(result) == 12
    assert result.loc[("a", "b"), "n_shared"] == len(CATIONS)
    assert result.loc[("a", "b"), "spearman_rho"] == pytest.approx(1.0)
    assert result.loc[("b", "a"), "relatedness"] == pytest.approx(1.0)
    for other in ["c", "d"]:
        assert result.loc[("a", other), "n_shared"] == 0
        assert np.isnan(result.loc[("a", other), "spearman_rho"]) and np.isnan(result.loc[("a", other), "relatedness"])


def test_relatedness_anticorrelated_and_few_shared():
    y = np.arange(len(CATIONS), dtype=float)
    tables = {
        "a": table("a", [rocksalt(c) for c in CATIONS], y),
        "neg": table("neg", [rocksalt(c) for c in CATIONS], -y),
        "few": table("few", [rocksalt(c) for c in CATIONS[:4]], y[:4]),  # 4 shared < 5
    }
    result = property_relatedness(tables).set_index(["source", "target"])
    assert result.loc[("a", "neg"), "spearman_rho"] == pytest.approx(-1.0)
    assert result.loc[("a", "neg"), "relatedness"] == pytest.approx(1.0)
    assert result.loc[("a", "few"), "n_shared"] == 4 and np.isnan(result.loc[("a", "few"), "p_value"])


def test_tables_from_one_file_share_every_material():
    structures = [rocksalt(c) for c in CATIONS] + [cesium_chloride("Na")]  # NaCl twice: two polymorphs
    y = np.arange(len(structures), dtype=float)
    tables = {"eform": table("eform", structures, y, source="snapshot"),
              "bandgap": table("bandgap", structures, y ** 2, source="snapshot")}
    result = property_relatedness(tables).set_index(["source", "target"])
    assert result.loc[("eform", "bandgap"), "n_shared"] == len(structures)
    assert result.loc[("eform", "bandgap"), "spearman_rho"] == pytest.approx(1.0)


def test_data_vs_physics_like_for_like(study):
    _, markdown = study
    # gain 0.10 at 1,000 and 0.10 + 0.05·log10(9) at 9,000; Part 1 spread on phonons with full: 0.30 − 0.10
    change = 100 * 0.05 * np.log10(9)
    assert f"**phonons** (full): gvrh pre-trained on 1,000 → 9,000 samples changed the gain by +{change:.1f} pp [" \
           in markdown
    assert "the best source (gvrh) minus the worst (dielectric) is +20.0 pp [" in markdown
    assert "the choice of source moved the gain more than more pre-training data" in markdown


def test_a_broken_scratch_baseline_is_flagged_not_divided_by(tmp_path):
    results = synthetic_results(parts=(1, 2))
    broken = (results["part"] == 2) & (results["method"] == "scratch") & (results["target"] == "phonons")
    results.loc[broken, "test_r2"] = 0.3  # the 500-sample scratch runs of phonons have R² 0.8
    results.to_parquet(tmp_path / "results.parquet")
    text = write_report(tmp_path).read_text()
    assert "### Scratch baselines flagged as broken" in text
    assert "| phonons | 900 | 0 |" in text and "scratch at n = 500 (R² 0.80)" in text
    assert "Left out: the Part 2 curves of phonons" in text
    assert "| gvrh → phonons | full | 1,000 → 9,000 |" not in text and "| gvrh → dielectric | full |" in text


def test_part1_zero_shot_rows_are_tabled_beside_scratch(tmp_path):
    maes = [70.0, 72.0, 74.0]
    zero = [row(part=1, kind="zero-shot", source="gvrh", target="phonons", method="zero-shot", seed=seed,
                finetune_size=0, n_train=0, n_val=0, test_mae=mae) for seed, mae in zip(SEEDS, maes)]
    frame = pd.concat([synthetic_results(parts=(1,)), pd.DataFrame(zero, columns=SCHEMA).astype(DTYPES)])
    frame.to_parquet(tmp_path / "results.parquet")
    text = write_report(tmp_path).read_text()
    scratch = pd.Series([scratch_mae("phonons", 500, seed) for seed in SEEDS])
    assert "### Sources without fine-tuning (zero-shot)" in text
    assert f"| gvrh → phonons | 200 | 72 ± 2 | 3 | {tx.pm(scratch.mean(), scratch.std())} (n = 500) |" in text


def test_universal_vs_specific_with_any_method_pairs_the_best_source_and_method_of_each_side():
    """Per method, `heads` meets `heads`; across methods, universal `freeze` (1.0) meets property `full` (1.5),
    the best of each side, although neither side's best is a `heads` run."""
    runs = [("chgnet", "heads", 2.0), ("chgnet", "freeze", 1.0), ("eform", "heads", 3.0), ("eform", "full", 1.5),
            ("gvrh", "full", 1.8)]
    paired = pd.DataFrame([{"target": "phonons", "method": method, "finetune_size": 100, "seed": seed,
                            "source": source, "test_mae": mae + 0.1 * seed, "task_hash": f"{source}-{method}-{seed}",
                            "n_test": 10, "unit": "cm^-1"}
                           for source, method, mae in runs for seed in (0, 1)])
    per_method = an.universal_vs_specific(paired, {"chgnet"})
    assert set(per_method["method"]) == {"heads"} and set(per_method["specific"]) == {"eform"}
    both = an.universal_vs_specific(paired, {"chgnet"}, any_method=True)
    assert set(both["method"]) == {an.ANY_METHOD} and len(both) == 2  # one row per seed
    assert set(both["universal"]) == {"chgnet (freeze)"} and set(both["specific"]) == {"eform (full)"}
    assert np.allclose(both.sort_values("seed")["gain"], [(1.5 - 1.0) / 1.5, (1.6 - 1.1) / 1.6])
