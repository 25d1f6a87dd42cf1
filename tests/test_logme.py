"""LogME (training/transferability.py) and `mattransfer rank-sources`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mattransfer.cli import main
from mattransfer.data.splits import fixed_test_ids
from mattransfer.errors import DataError
from mattransfer.models.model import TransferModel
from mattransfer.training import transferability
from mattransfer.training.transferability import evidence, krr_cv, logme

from conftest import GRAPHS, TRAINING


def test_features_that_determine_the_target_score_higher_than_random() -> None:
    rng = np.random.default_rng(0)
    F = rng.normal(size=(200, 16))
    y = F @ rng.normal(size=16)
    noise = rng.normal(size=(200, 16))
    assert logme(F, y) > logme(noise, y) + 1.0
    assert logme(F, y + 0.1 * rng.normal(size=200)) > logme(noise, y)


def test_an_unbounded_evidence_is_nan_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A demo study's 10-sample subsets with 32 features made β grow without bound and divided by zero.
    rng = np.random.default_rng(0)
    F, y = rng.normal(size=(10, 32)), rng.normal(size=10)
    assert math.isfinite(logme(F, y))
    monkeypatch.setattr(transferability, "MAX_BETA", 1e-3)  # every fixed-point step now runs past it
    assert math.isnan(logme(F, y))


def test_krr_cv_of_features_that_determine_the_target_scores_higher_than_random() -> None:
    rng = np.random.default_rng(0)
    F = rng.normal(size=(200, 8))
    y = np.sin(F[:, 0]) + F[:, 1] ** 2  # non-linear: kernel ridge's case
    noise = rng.normal(size=(200, 8))
    assert krr_cv(F, y) > krr_cv(noise, y) + 0.2
    assert -0.2 < krr_cv(F, y) <= 0 and krr_cv(noise, y) < -0.5


def _direct_log_evidence(F: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, FFᵀ/α + I/β): the marginal likelihood with w integrated out, without any SVD."""
    n = len(y)
    cov = F @ F.T / alpha + np.eye(n) / beta
    _, log_det = np.linalg.slogdet(cov)
    return -0.5 * (n * math.log(2 * math.pi) + log_det + y @ np.linalg.solve(cov, y))


@pytest.mark.parametrize("n, d", [(30, 5), (8, 12)])  # fewer features than samples, and more
def test_score_is_the_evidence_at_its_fixed_point(n: int, d: int) -> None:
    rng = np.random.default_rng(1)
    F = rng.normal(size=(n, d))
    y = F[:, 0] + 0.5 * rng.normal(size=n)
    y_std = (y - y.mean()) / y.std()
    score = logme(F, y, tol=1e-12, max_iter=10_000)

    # Find (α, β) again by brute force on the direct formula: the score is its maximum.
    grid = np.exp(np.linspace(-6, 6, 121))
    best = max(_direct_log_evidence(F, y_std, a, b) for a in grid for b in grid)
    assert score * n >= best - 1e-6
    assert score * n == pytest.approx(best, abs=0.1)  # the grid steps 0.1 in log α and log β

    # The SVD form of the evidence equals the direct Gaussian form at any (α, β).
    u, s, _ = np.linalg.svd(F, full_matrices=False)
    z2 = (u.T @ y_std) ** 2
    for alpha, beta in ((0.3, 2.0), (5.0, 0.7)):
        svd_form = evidence(s**2, z2, float(y_std @ y_std - z2.sum()), n, d, alpha, beta)
        assert svd_form == pytest.approx(_direct_log_evidence(F, y_std, alpha, beta), rel=1e-9)


def test_bad_shapes_are_a_data_error() -> None:
    with pytest.raises(DataError):
        logme(np.zeros((5, 3)), np.zeros(4))


@pytest.fixture(scope="module")
def second_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny source: pre-trained on demo_volume, with a narrower encoder."""
    from mattransfer.config import TrainConfig
    from mattransfer.training.run import run

    out = tmp_path_factory.mktemp("source_volume")
    model = {"encoder": {"name": "cgcnn", "hidden": 8, "n_layers": 1, "n_gaussians": 10}, "head": {"hidden": [8]}}
    run(TrainConfig.model_validate({
        "seed": 0, "device": "cpu", "output_dir": str(out), "data": {"dataset": "demo_volume", "n_samples": 40},
        "graphs": GRAPHS, "model": model, "training": {**TRAINING, "max_epochs": 2},
    }), progress=False)
    return out / "model.ckpt"


def test_rank_sources_cli_ranks_both_and_never_embeds_test_ids(
    pretrained_ckpt: Path, second_ckpt: Path, demo_energy, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    embedded: list[str] = []
    featurize = transferability.featurize

    def spy(model: TransferModel, table, *args, **kwargs):
        embedded.extend(table.ids)
        return featurize(model, table, *args, **kwargs)

    monkeypatch.setattr(transferability, "featurize", spy)
    code = main(["-q", "--threads", "1", "rank-sources", "--target", "demo_energy", "--n", "40",
                 "--sources", str(pretrained_ckpt), str(second_ckpt), "--score", "logme", "krr_cv"])
    out = capsys.readouterr().out
    assert code == 0
    assert str(pretrained_ckpt) in out and str(second_ckpt) in out
    assert "demo_energy" in out and "demo_volume" in out  # each source's pre-training data
    rows = [line for line in out.splitlines() if line.strip().startswith(("│ 1 ", "│ 2 "))]
    assert len(rows) == 2 and "total" in out and "LogME" in out and "KRR CV" in out
    assert len(embedded) == 2 * 40
    assert not set(embedded) & set(fixed_test_ids(demo_energy.ids, 0.1, 0))
    assert torch.get_num_threads() == 1


def test_rank_sources_missing_checkpoint_is_one_line(pretrained_ckpt: Path, tmp_path: Path, capsys) -> None:
    code = main(["-q", "rank-sources", "--target", "demo_energy", "--n", "20",
                 "--sources", str(pretrained_ckpt), str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nope.ckpt" in err and "not found" in err
