"""Data sources: keys mapped to local files by configuration, one read per shared file."""

from __future__ import annotations

import pandas as pd
from matminer.utils.io import store_dataframe_as_json

from mattransfer.data import registry
from mattransfer.data.registry import DataSources, LocalFile

from conftest import fcc


def test_two_keys_share_one_file_and_one_read(tmp_path, monkeypatch):
    frame = pd.DataFrame(
        {"structure": [fcc("Cu", 3.6), fcc("Al", 4.05), fcc("Ni", 3.5)],
         "formation_energy_per_atom": [0.0, -0.1, 0.2], "band_gap": [1.0, 2.0, 3.0]},
        index=["mp-1", "mp-2", "mp-3"],
    )
    store_dataframe_as_json(frame, str(tmp_path / "snapshot.json.gz"), compression="gz", orient="split")
    sources = DataSources(data_dir=tmp_path, datasets={
        "eform": LocalFile(file="snapshot", target="formation_energy_per_atom"),
        "bandgap": LocalFile(file="snapshot", target="band_gap"),
    })
    reads = []
    real_read = registry.read_frame
    monkeypatch.setattr(registry, "read_frame", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    registry._read_shared.cache_clear()

    eform, bandgap = sources.load("eform"), sources.load("bandgap")

    assert len(reads) == 1
    assert eform.ids == bandgap.ids == ["mp-1", "mp-2", "mp-3"]
    assert list(eform.y) == [0.0, -0.1, 0.2] and list(bandgap.y) == [1.0, 2.0, 3.0]
    assert (eform.unit, bandgap.unit) == ("eV/atom", "eV")
