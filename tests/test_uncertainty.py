"""Bootstrap CIs, Benjamini–Hochberg and the broken-baseline check on data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mattransfer.report import uncertainty as un
from mattransfer.study.results import COLUMNS


def errors(n: int = 200, seeds: int = 1, seed: int = 0) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(0, 1, size=(seeds, n)))


def test_a_clear_offset_is_detected():
    scratch = errors(seeds=3)
    transfer = 0.7 * scratch  # every structure's error 30 % smaller
    result = un.paired_gain(scratch, transfer)
    assert result["gain"] == pytest.approx(0.3)
    assert 0 < result["gain_low"] <= 0.3 <= result["gain_high"]
    assert result["diff_low"] > 0 and result["p_structures"] < 1e-6
    assert un.call(result["gain_low"], result["gain_high"]) == "helps"
    worse = un.paired_gain(scratch, 1.5 * scratch)
    assert worse["gain_high"] < 0 and un.call(worse["gain_low"], worse["gain_high"]) == "hurts"


def test_identical_predictions_give_a_ci_containing_zero():
    scratch = errors()
    result = un.paired_gain(scratch, scratch.copy())
    assert result["gain_low"] <= 0 <= result["gain_high"]
    assert result["diff_low"] <= 0 <= result["diff_high"]
    assert un.call(result["gain_low"], result["gain_high"]) == "within noise"


def test_the_bootstrap_is_reproducible():
    scratch, transfer = errors(seed=3), errors(seed=4)
    assert un.paired_gain(scratch, transfer) == un.paired_gain(scratch, transfer)


def test_benjamini_hochberg_on_known_p_values():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan, 0.5])
    q = un.bh_q_values(p)
    # BH by hand over the 5 tested: sorted p 0.005 0.01 0.03 0.04 0.5 → p·m/rank, then running minimum from the top
    expected = {0.005: 0.025, 0.01: 0.025, 0.03: 0.05, 0.04: 0.05, 0.5: 0.5}
    assert np.isnan(q[4])
    for p_value, q_value in zip(p[np.isfinite(p)], q[np.isfinite(q)]):
        assert q_value == pytest.approx(expected[p_value])
    assert (q[np.isfinite(q)] < 0.05).sum() == 2  # 0.03 and 0.04 pass alone but not after BH


def test_method_counts_never_mix_methods():
    cells = pd.DataFrame({
        "method": ["full"] * 3 + ["heads"] * 2,
        "gain_mean": [0.2, -0.1, 0.01, -0.3, -0.2],
        "call": ["helps", "hurts", "within noise", "hurts", "untested"],
        "q_value": [0.01, 0.2, 0.9, 0.001, np.nan],
    })
    counts = un.method_counts(cells).set_index("method")
    assert counts.loc["full", ["cells", "tested", "helps", "hurts", "within_noise"]].tolist() == [3, 3, 1, 1, 1]
    assert counts.loc["full", ["helps_fdr", "hurts_fdr"]].tolist() == [1, 0]
    assert counts.loc["heads", ["cells", "tested", "hurts", "hurts_fdr", "fdr_tested"]].tolist() == [2, 1, 1, 1, 1]


def scratch_row(target: str, size: int, seed: int, r2: float) -> dict:
    return dict.fromkeys(COLUMNS) | {"method": "scratch", "status": "done", "target": target, "finetune_size": size,
                                     "seed": seed, "test_r2": r2, "test_mae": 1.0, "unit": "eV",
                                     "task_hash": f"{target}{size}{seed}"}


def test_a_scratch_far_below_its_neighbours_is_flagged():
    rows = [scratch_row("phonons", n, 0, r2) for n, r2 in [(10, 0.15), (100, 0.72), (800, 0.88), (900, 0.38)]]
    rows += [scratch_row("gvrh", n, s, r2) for n in (100, 200) for s, r2 in enumerate([0.6, 0.62, 0.1 if n == 200 else 0.61])]
    flagged = un.broken_baselines(pd.DataFrame(rows))
    assert set(zip(flagged["target"], flagged["finetune_size"], flagged["seed"])) == {("phonons", 900, 0), ("gvrh", 200, 2)}
    assert flagged.set_index("target").loc["phonons", "reference"] == "scratch at n = 800"
