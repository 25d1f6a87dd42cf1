"""Feature baselines: features cached by content, no test id in training, the CLI's CSV, and trees
that beat a constant on features that determine the target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from mattransfer.cli import main
from mattransfer.data.splits import make_split
from mattransfer.errors import ConfigError, LeakError
from mattransfer.featurizers import features as features_module
from mattransfer.featurizers import cached_features
from mattransfer.training import baselines


@pytest.fixture
def featurize_calls(monkeypatch) -> list[int]:
    """Counts the structures each real featurization gets (cache reads do not featurize)."""
    calls: list[int] = []
    real = features_module.featurize

    def spy(structures, *args, **kwargs):
        calls.append(len(structures))
        return real(structures, *args, **kwargs)

    monkeypatch.setattr(features_module, "featurize", spy)
    return calls


def test_features_are_cached_by_content_and_reused(demo_energy, featurize_calls):
    structures = [demo_energy.structures[k] for k in range(12)]
    first = cached_features(structures, progress=False)
    second = cached_features(structures, progress=False)
    assert featurize_calls == [12]  # the second call read the cache
    pd.testing.assert_frame_equal(first, second)
    assert first.shape[0] == 12 and not first.isna().all(axis=None)
    cached_features(structures[:11], progress=False)  # other content: featurized again
    assert featurize_calls == [12, 11]


def test_baselines_train_on_the_fine_tune_subset_never_on_test_ids(demo_volume, featurize_calls, monkeypatch):
    used: dict[int, list[str]] = {}
    real = baselines._training_ids
    monkeypatch.setattr(baselines, "_training_ids", lambda split: used.setdefault(len(used), real(split)))
    results, stats = baselines.run_baselines(demo_volume, 40, [0, 1], ["hist_gb"], progress=False)
    for seed, ids in used.items():
        split = make_split(demo_volume.ids, 40, seed)
        assert sorted(ids) == sorted(split.train + split.val) and not set(ids) & set(split.test)
    assert list(results.n_train) == [40, 40] and set(results.n_test) == {len(split.test)}
    assert not stats["cached"]
    _, again = baselines.run_baselines(demo_volume, 40, [1, 0], ["hist_gb"], progress=False)
    assert again["cached"] and len(featurize_calls) == 1  # same rows whatever the seeds' order

    monkeypatch.setattr(baselines, "_training_ids", lambda split: [*real(split), split.test[0]])
    with pytest.raises(LeakError):
        baselines.run_baselines(demo_volume, 40, [0], ["hist_gb"], progress=False)


@pytest.mark.parametrize("model", [m for m in baselines.MODELS + baselines.EMBEDDING_MODELS if m != "hurdle_hist_gb"])
def test_baseline_beats_a_constant_on_features_that_determine_the_target(model):
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.uniform(size=(300, 4)))
    features.iloc[::17, 3] = np.nan  # a failed featurizer's NaNs are imputed, not fatal
    y = 3 * features[0].to_numpy() + np.sin(6 * features[1].to_numpy())
    train, test = np.arange(200), np.arange(200, 300)
    scores = baselines.fit_and_score(features, y, train, test, model, seed=0)
    constant = np.mean(np.abs(y[test] - y[train].mean()))
    assert scores["mae"] < 0.3 * constant and scores["n"] == 100


def test_absolute_error_loss_ignores_a_few_extreme_targets():
    """hist_gb_l1 fits the conditional median: 5 % of rows at 1000 barely move it; squared error follows them."""
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.uniform(size=(400, 2)))
    y = features[0].to_numpy().copy()
    y[::20] = 1000.0
    train, test = np.arange(300), np.arange(300, 400)
    clean = np.ones(100, dtype=bool)
    clean[np.arange(300, 400) % 20 == 0] = False
    errors = {}
    for model in ("hist_gb", "hist_gb_l1"):
        predicted, _ = baselines.fit_predict(features, y, train, test, model, seed=0)
        errors[model] = np.mean(np.abs(predicted[clean] - y[test][clean]))
    assert errors["hist_gb_l1"] < 0.1 and 5 * errors["hist_gb_l1"] < errors["hist_gb"]


def test_cli_writes_one_row_per_model_and_seed(tmp_path, capsys):
    out = tmp_path / "baselines.csv"
    assert main(["-q", "baseline", "--data", "demo_volume", "--n", "30", "--seeds", "0", "1",
                 "--models", "extra_trees", "hist_gb", "-o", str(out)]) == 0
    rows = pd.read_csv(out)
    assert sorted(zip(rows.model, rows.seed)) == [("extra_trees", 0), ("extra_trees", 1), ("hist_gb", 0), ("hist_gb", 1)]
    printed = capsys.readouterr().out
    assert "extra_trees" in printed and "±" in printed and "rows, matminer in" in printed


@pytest.mark.parametrize("argv, named", [(["--data", "no_such_key", "--n", "10"], "no_such_key"),
                                          (["--data", "demo_volume", "--n", "100000"], "100000")])
def test_cli_bad_input_is_one_line(argv, named, capsys):
    assert main(["-q", "baseline", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and named in error and "\n" not in error


def test_krr_on_frozen_embeddings_needs_an_encoder_and_runs_from_the_cli(tmp_path, pretrained_ckpt, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("MATTRANSFER_CACHE", str(tmp_path / "cache"))  # its latents must not serve other tests
    with pytest.raises(ConfigError, match="encoder"):
        baselines.run_baselines(None, 30, [0], ["krr"], progress=False)
    out = tmp_path / "krr.csv"
    assert main(["-q", "baseline", "--data", "demo_volume", "--n", "30", "--seeds", "0", "1", "--models", "krr",
                 "--encoder", str(pretrained_ckpt), "-o", str(out)]) == 0
    rows = pd.read_csv(out)
    assert list(rows.model) == ["krr", "krr"] and set(rows.features) == {str(pretrained_ckpt)}
    assert (rows.n_train == 30).all() and (rows.mae > 0).all()
    assert "embeddings in" in capsys.readouterr().out


def test_hurdle_model_predicts_the_minimum_where_it_is_likely_and_refuses_targets_without_one():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(600, 3))
    y = np.where(x[:, 0] > 0, 1.0 + 2 * x[:, 1] ** 2 + x[:, 0], 0.0)  # "metals" (half) at exactly 0
    features, train, test = pd.DataFrame(x), np.arange(400), np.arange(400, 600)
    predicted, _ = baselines.fit_predict(features, y, train, test, "hurdle_hist_gb", seed=0)
    zero = y[test] == 0
    assert (predicted[zero] == 0).mean() > 0.9 and (predicted[~zero] > 0).all()
    assert np.abs(predicted - y[test]).mean() < 0.2 * np.abs(y[test] - np.median(y[train])).mean()
    with pytest.raises(ConfigError, match="sit at their minimum"):
        baselines.fit_predict(features, x[:, 1], train, test, "hurdle_hist_gb", seed=0)


def test_hurdle_model_predicts_the_median_of_its_mixture_not_of_the_rows_above():
    """Where 70 % of rows are above 0 whatever the features, the MAE-optimal value is the mixture's median:
    the (0.7 − 0.5) / 0.7 ≈ 0.29 quantile of the values above (uniform on [1, 3]: 1.57), not their median (2)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4000, 2))
    y = np.where(rng.uniform(size=4000) < 0.7, rng.uniform(1, 3, size=4000), 0.0)
    train, test = np.arange(3000), np.arange(3000, 4000)
    simple = dict(classifier=HistGradientBoostingClassifier(max_iter=20, random_state=0),
                  regressor=HistGradientBoostingRegressor(max_iter=20, random_state=0))
    mixture = baselines.HurdleRegressor(**simple).fit(x[train], y[train]).predict(x[test])
    above_median = baselines.HurdleRegressor(**simple, quantiles=(0.5,)).fit(x[train], y[train]).predict(x[test])
    assert np.median(mixture) == pytest.approx(1 + 2 * 0.2 / 0.7, abs=0.15)
    assert np.median(above_median) == pytest.approx(2.0, abs=0.15)
    assert np.abs(mixture - y[test]).mean() < np.abs(above_median - y[test]).mean()


def test_hurdle_model_learns_what_a_source_prediction_misses_and_extrapolates_with_it():
    """A source column (``source|…``) is the regressors' linear offset: beyond the training range of the
    source's values the trees alone stay flat, the offset carries on."""
    rng = np.random.default_rng(0)
    n = 600
    features = pd.DataFrame({"metal": rng.uniform(size=n), "source|dft": np.r_[rng.uniform(0, 1, 400), rng.uniform(1, 2, 200)]})
    y = np.where(features["metal"] < 0.5, 0.0, 0.5 + 2 * features["source|dft"].to_numpy())  # "metals" below 0.5
    train, test = np.arange(400), np.arange(400, n)
    with_offset, _ = baselines.fit_predict(features, y, train, test, "hurdle_hist_gb", seed=0)
    trees_only, _ = baselines.fit_predict(features.rename(columns={"source|dft": "dft"}), y, train, test,
                                          "hurdle_hist_gb", seed=0)
    above = y[test] > 0
    assert np.abs(with_offset - y[test])[above].mean() < 0.3 < np.abs(trees_only - y[test])[above].mean()


def test_absolute_error_trees_refuse_targets_whose_median_is_their_minimum():
    """There scikit-learn's absolute-error HistGB never leaves its start (the median) and predicts a constant."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(400, 3))
    features, train, test = pd.DataFrame(x), np.arange(300), np.arange(300, 400)
    mostly_zero = np.where(x[:, 0] > 0.55, 1 + 3 * x[:, 1], 0.0)
    with pytest.raises(ConfigError, match="use hurdle_hist_gb"):
        baselines.fit_predict(features, mostly_zero, train, test, "hist_gb_l1", seed=0)
    some_zero = np.where(x[:, 0] > 0.3, 1 + 3 * x[:, 1], 0.0)
    predicted, _ = baselines.fit_predict(features, some_zero, train, test, "hist_gb_l1", seed=0)
    assert predicted.std() > 0.5
