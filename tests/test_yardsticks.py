"""The report's yardsticks on the synthetic study of test_report: feature-baseline reference rows, the best
transfer against the best model without transfer, and transferability scores against the measured gains."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from mattransfer.report import write_report
from mattransfer.report import analysis as an
from mattransfer.report import yardsticks as ys
from mattransfer.study.results import transfer_gain

from test_report import DTYPES, GAIN, SCHEMA, SEEDS, SIZES, UNITS, finetune, scratch_mae, synthetic_results

# Feature baselines as a fraction of scratch's MAE: ExtraTrees beats the best transfer on gvrh only.
BASELINE = {"extra_trees": {"phonons": 0.8, "gvrh": 0.6, "dielectric": 0.9}, "hist_gb": dict.fromkeys(UNITS, 1.1)}


def with_baselines() -> pd.DataFrame:
    rows = [finetune(1, "", target, size, model, seed, factor[target] * scratch_mae(target, size, seed),
                     kind="baseline") | {"n_train": size, "n_val": 0, "epochs_run": None, "best_epoch": None}
            for (model, factor), target, size, seed in itertools.product(BASELINE.items(), UNITS, SIZES, SEEDS)]
    return pd.concat([synthetic_results(), pd.DataFrame(rows, columns=SCHEMA).astype(DTYPES)], ignore_index=True)


def scores(sign: float) -> pd.DataFrame:
    """LogME that ranks the sources as full fine-tuning's gain does (sign 1) or the reverse (sign -1)."""
    return pd.DataFrame([
        {"source": source, "target": target, "finetune_size": size, "seed": seed, "source_id": f"h-{source}",
         "score": "logme", "value": sign * gains["full"] + 0.1 * size, "n": size, "seconds": 0.01}
        for (source, target), gains in GAIN.items() for size, seed in itertools.product(SIZES, SEEDS)])


def test_best_transfer_against_the_best_model_without_transfer():
    results = with_baselines()
    table = ys.versus_baselines(an.finetune_rows(results, 1), ys.baseline_rows(results, 1))
    assert len(table) == len(UNITS) * len(SIZES)
    by_target = table.groupby("target")
    # phonons: gvrh → phonons full (gain 0.30) against ExtraTrees at 0.8 × scratch: margin (0.8 − 0.7) / 0.8
    phonons = table[table["target"] == "phonons"]
    assert set(phonons["tl_source"]) == {"gvrh"} and set(phonons["tl_method"]) == {"full"}
    assert set(phonons["ref_method"]) == {"extra_trees"}
    assert phonons["margin"].to_numpy() == pytest.approx(0.125, abs=0.01)
    assert (by_target.get_group("gvrh")["margin"] < 0).all()  # ExtraTrees at 0.6 beats transfer's 0.75
    assert {"mae_scratch", "mae_extra_trees", "mae_hist_gb"} <= set(table.columns)
    assert table["p_value"].notna().all()


def test_score_gain_correlation_follows_the_ranking():
    rows = an.finetune_rows(synthetic_results(), 1)
    for sign in (1, -1):
        cells = ys.score_gain_cells(scores(sign), transfer_gain(rows))
        correlation = ys.score_gain_correlation(cells).set_index(["method", "target"])
        assert correlation.loc[("full", "all"), "spearman_rho"] == pytest.approx(sign)
        assert correlation.loc["full", "spearman_rho"].to_numpy() == pytest.approx(sign)  # and per target
        assert correlation.loc[("full", "all"), "n_cells"] == len(GAIN) * len(SIZES)
        assert correlation.loc[("full", "all"), "p_value"] < 1e-3
        assert set(correlation.index.get_level_values("target")) == {*UNITS, "all"}


def test_report_shows_reference_rows_and_scores(tmp_path):
    with_baselines().to_parquet(tmp_path / "results.parquet")
    scores(1).to_csv(tmp_path / "transferability.csv", index=False)
    text = write_report(tmp_path).read_text()
    assert "Transfer against the best model without transfer" in text
    assert "gvrh: no transfer beats the best non-transfer model" in text
    assert "phonons: transfer beats the best non-transfer model at n = 10" in text
    assert "vs scratch and extra_trees (features) and hist_gb (features)" in text
    assert "logme with full: ρ = +1.00" in text
    assert (tmp_path / "report" / "figures" / "part1_score_vs_gain.png").exists()
    assert (tmp_path / "report" / "part1_versus_baselines.csv").exists()


def test_report_without_baselines_or_scores(tmp_path):
    synthetic_results().to_parquet(tmp_path / "results.parquet")
    text = write_report(tmp_path).read_text()
    assert "scratch is the only reference" in text and "no transferability.csv" in text
