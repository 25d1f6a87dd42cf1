"""The GPU path: the same run on CUDA gives the CPU's metrics within float tolerance (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from mattransfer.training.run import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_run_matches_cpu(make_config, tmp_path):
    cpu = run(make_config(tmp_path / "cpu", device="cpu"), progress=False)
    cuda = run(make_config(tmp_path / "cuda", device="cuda"), progress=False)
    assert cuda["epochs_run"] == cpu["epochs_run"]
    for split in ("train", "val", "test"):
        assert cuda[split]["mae"] == pytest.approx(cpu[split]["mae"], rel=1e-3), split
