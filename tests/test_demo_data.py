import numpy as np
import pandas as pd
import pytest
from matminer.utils.io import load_dataframe_from_json
from pymatgen.core import Structure

from mattransfer.data.demo import TARGETS, build_demo_frame, demo_path

N = 20


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return build_demo_frame(N, seed=0)


def test_columns_and_ids(frame):
    assert list(frame.columns) == ["structure", "formula", *TARGETS]
    assert len(frame) == N
    assert frame.index.is_unique
    assert list(frame.index[:2]) == ["demo-0000", "demo-0001"]
    assert all(isinstance(s, Structure) and 1 <= len(s) <= 8 for s in frame["structure"])


def test_targets_finite_and_physical(frame):
    assert np.isfinite(frame[list(TARGETS)].to_numpy()).all()
    assert (frame["volume_per_atom"] > 0).all()
    assert (frame["bulk_modulus"] > 0).all()


def test_deterministic_per_seed(frame):
    again = build_demo_frame(N, seed=0)
    pd.testing.assert_frame_equal(frame[list(TARGETS)], again[list(TARGETS)])
    assert list(frame["formula"]) == list(again["formula"])

    other = build_demo_frame(N, seed=1)
    assert not np.allclose(frame[list(TARGETS)].to_numpy(), other[list(TARGETS)].to_numpy())


def test_demo_path_caches_and_round_trips(tmp_path, frame):
    path = demo_path(tmp_path, n_structures=N, seed=0)
    assert path == tmp_path / f"demo-v1-n{N}-s0.json.gz"
    assert path.is_file()
    mtime = path.stat().st_mtime_ns

    assert demo_path(tmp_path, n_structures=N, seed=0) == path
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind

    loaded = load_dataframe_from_json(str(path), pbar=False)
    pd.testing.assert_frame_equal(loaded[list(TARGETS)], frame[list(TARGETS)])
    assert list(loaded.index) == list(frame.index)
    assert list(loaded["formula"]) == list(frame["formula"])
    assert all(isinstance(s, Structure) for s in loaded["structure"])
