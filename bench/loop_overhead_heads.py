"""Training-loop overhead where it matters most: a `heads` fine-tune on cached encoder embeddings.

With the encoder frozen, mattransfer encodes every graph once and trains only the MLP head, so a
step costs a fraction of a millisecond and any per-step machinery of the loop shows directly. This
times, in one run on the same data, `trainer.fit` (lean) against a Lightning Trainer (no logger,
checkpointing, progress bar or summary; EarlyStopping that never fires) on the same mini-batches, for
a fixed number of epochs, at the study's fine-tune sizes.

    python bench/loop_overhead_heads.py --sizes 10 100 800 --epochs 200 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import lightning
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from loop_overhead import FixedBatches, EpochBatches, load_table, loader, make_subset  # noqa: E402

from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training.trainer import EmbeddingBatches, TrainingOptions, fit


class LitHead(lightning.LightningModule):
    def __init__(self, head: nn.Module, lr: float) -> None:
        super().__init__()
        self.head, self.lr = head, lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        latent, y = batch
        return nn.functional.l1_loss(self.head(latent), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        latent, y = batch
        self.log("val_loss", nn.functional.l1_loss(self.head(latent), y), batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=0.0)


def time_lean(head: nn.Module, train: EmbeddingBatches, val: EmbeddingBatches, epochs: int, lr: float) -> float:
    options = TrainingOptions(lr=lr, batch_size=train.batch_size, max_epochs=epochs, patience=epochs + 1)
    start = time.perf_counter()
    fit(head, train, val, [{"params": list(head.parameters())}], options, seed=0, progress=False)
    return time.perf_counter() - start


def time_lightning(head: nn.Module, train: EmbeddingBatches, val: EmbeddingBatches, epochs: int, lr: float) -> float:
    stopper = lightning.pytorch.callbacks.EarlyStopping(monitor="val_loss", patience=epochs + 1)
    start = time.perf_counter()
    trainer = lightning.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[stopper])
    trainer.fit(LitHead(head, lr), loader(EpochBatches(train, 0)), loader(FixedBatches(val)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["phonons", "demo"], default="phonons")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 800])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loop_overhead_heads.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = load_table(args.data)
    graphs = cached_inputs(table, RadiusGraph(GraphSettings()), progress=False)
    rows = []
    for n in args.sizes:
        subset = make_subset(table, graphs, n, args.batch_size, seed=0)
        torch.manual_seed(0)
        model = TransferModel(ModelConfig(), GraphSettings())
        train, val = (EmbeddingBatches(b, model.encoder) for b in (subset.train, subset.val))
        lean = time_lean(copy.deepcopy(model.head), train, val, args.epochs, 1e-3)
        lit = time_lightning(copy.deepcopy(model.head), train, val, args.epochs, 1e-3)
        rows.append({"n": n, "epochs": args.epochs, "lean_s": round(lean, 3), "lightning_s": round(lit, 3),
                     "ratio_lightning_over_lean": round(lit / lean, 2)})
        print(rows[-1], flush=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python"] + sys.argv), "machine": platform.platform(), "threads": args.threads,
        "torch": torch.__version__, "lightning": lightning.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
