"""``mattransfer demo``: the whole product on the embedded EMT data, in a few minutes on a CPU.

Pre-train on EMT energy per atom, fine-tune on EMT bulk modulus with every method at a small
fine-tune size, and compare each with training from scratch on the very same samples.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from mattransfer.config import DataConfig, FinetuneConfig, TrainConfig
from mattransfer.models.model import ModelConfig
from mattransfer.training.run import run
from mattransfer.training.trainer import TrainingOptions

METHOD_OPTIONS = {
    "scratch": {},
    "full": {},
    "heads": {"lr_head": 3e-3},
    "freeze": {"layers": 2},
    "lora": {"rank": 4, "alpha": 8.0},
}


def run_demo(output_dir: Path, max_epochs: int = 200, finetune_size: int = 60, progress: bool = True) -> list[dict]:
    """Pre-train, fine-tune with each method, and save the summaries (`demo_table` shows them)."""
    model = ModelConfig(encoder={"name": "cgcnn", "hidden": 32, "n_layers": 3})
    training = TrainingOptions(max_epochs=max_epochs, patience=30, batch_size=16)
    pretrain = TrainConfig(output_dir=output_dir / "pretrain_energy", data=DataConfig(dataset="demo_energy"),
                           model=model, training=training)
    summaries = [run(pretrain, progress)]
    for method, options in METHOD_OPTIONS.items():
        finetune = TrainConfig(
            output_dir=output_dir / f"finetune_bulk_{method}",
            data=DataConfig(dataset="demo_bulk", n_samples=finetune_size),
            model=model, training=training,
            finetune=FinetuneConfig(method=method, read_from=output_dir / "pretrain_energy" / "model.ckpt",
                                    config=options),
        )
        summaries.append(run(finetune, progress))
    (output_dir / "summary.json").write_text(json.dumps(summaries, indent=2))
    return summaries


def demo_table(summaries: list[dict]) -> Table:
    table = Table("run", "dataset", "n_train", "trainable", "epochs (best)", "test MAE", "R²", "seconds",
                  title="mattransfer demo: pre-train on EMT energy, fine-tune on EMT bulk modulus")
    for s in summaries:
        table.add_row(s["method"], s["dataset"], str(s["n_train"]), f"{s['n_trainable']:,}",
                      f"{s['epochs_run']} ({s['best_epoch']})", f"{s['test']['mae']:.4g} {s['unit']}",
                      f"{s['test']['r2']:.3f}", f"{s['wall_seconds']:.1f}")
    return table
