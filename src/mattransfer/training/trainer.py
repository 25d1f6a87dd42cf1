"""The training loop: AdamW, early stopping on validation loss, best-validation weights restored.

A lean loop rather than PyTorch Lightning, chosen by measurement (bench/README.md): on graph
fine-tunes the two are within noise of each other, but on `heads` fine-tunes, which train the head
on cached embeddings (sub-millisecond steps, hundreds per study), Lightning's per-step machinery
makes the fit 3-6x slower.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from mattransfer.errors import TrainingDiverged
from mattransfer.graphs.inputs import InputBatch, InputStore
from mattransfer.training.objectives import AuxiliaryClassification

log = logging.getLogger(__name__)


COMPILE_HELP = (
    "torch.compile the encoder while it trains (inductor, dynamic shapes): about 1.8x the training"
    " throughput on CPU for 10-20 s of compilation once per process (bench/training_throughput.py);"
    " worth it for runs of minutes, not for seconds-long ones. Results agree with eager mode to"
    " float tolerance, so it is an execution setting, like device."
)


class TrainingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    max_epochs: int = Field(500, ge=1)
    patience: int = Field(50, ge=1, description="epochs without a better validation loss before stopping")
    loss: Literal["l1", "mse"] = "l1"
    schedule: Literal["constant", "cosine", "plateau"] = Field(
        "constant", description="learning rate per epoch: constant; cosine: linear warm-up over warmup_epochs,"
        " then cosine decay to 0 at max_epochs; plateau: times plateau_factor after plateau_patience epochs"
        " without a better validation loss")
    warmup_epochs: int = Field(0, ge=0, description="cosine only: epochs of linear warm-up to lr")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau only: the learning rate's factor at each cut")
    plateau_patience: int = Field(10, ge=1, description="plateau only: epochs without a better validation loss before a cut")
    clip_to_train_range: bool = Field(
        True, description="predictions (and so the metrics) clipped to the training targets' [min, max]: beyond"
        " the labels it saw a head extrapolates, and was wrong more often than not (docs/results/recipe)")
    target_transform: Literal["none", "log"] = Field(
        "none", description="what the head learns (standardised): the target, or its log (strictly positive,"
        " heavy-tailed targets); predictions and metrics are in the target's unit either way")
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="weight averaging: validation, early stopping and the returned model use an"
        " exponential moving average of the weights, updated after every step with this decay (0: off)")

    @model_validator(mode="after")
    def _warmup_with_cosine(self) -> TrainingOptions:
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError(f"warmup_epochs is part of the cosine schedule; schedule is {self.schedule!r}")
        if self.warmup_epochs >= self.max_epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below max_epochs ({self.max_epochs})")
        return self


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


LOSSES = {"l1": nn.functional.l1_loss, "mse": nn.functional.mse_loss}
# A training loss this many times that of predicting the mean (standardised targets: ~0.8 for L1,
# 1 for MSE) means the first steps blew the weights up: a learning rate far too high.
EXPLODED = 10.0


class Batches:
    """Fixed mini-batches of a subset of a store, cut once and moved to ``device`` once.

    A mini-batch is ``(inputs, y, rows)``: ``rows`` are the batch's positions in the store, which an
    objective's per-row data (`training.objectives`) is indexed by.
    """

    def __init__(self, store: InputStore, positions: Tensor, y: Tensor, batch_size: int, device: torch.device):
        self.store, self.positions, self.y = store, positions, y
        self.batch_size, self.device = batch_size, device

    def __len__(self) -> int:
        return len(self.positions)

    def epoch(self, generator: torch.Generator | None = None) -> list[tuple[InputBatch, Tensor, Tensor]]:
        """Mini-batches of near-equal size (no straggler batch of one graph); shuffled with ``generator``."""
        order = torch.randperm(len(self.positions), generator=generator) if generator else torch.arange(len(self))
        n_batches = math.ceil(len(self) / self.batch_size)
        return [
            (self.inputs(chunk), self.y[chunk].to(self.device), self.positions[chunk].to(self.device))
            for chunk in torch.tensor_split(order, n_batches)
        ]

    def inputs(self, chunk: Tensor) -> InputBatch:
        """The model input of the graphs at ``chunk`` (indices into this subset)."""
        return self.store.batch(self.positions[chunk]).to(self.device)


class EmbeddingBatches(Batches):
    """The same mini-batches, each graph replaced by its latent vector from a frozen encoder.

    With the encoder frozen (``heads``) its output never changes, so it is computed once and the
    head trains on it: same batches, same shuffles, same result, without an encoder pass per epoch.
    """

    def __init__(self, batches: Batches, encoder: nn.Module, store_latent: Tensor | None = None,
                 encode_batch_size: int = 512) -> None:
        super().__init__(batches.store, batches.positions, batches.y, batches.batch_size, batches.device)
        # ``store_latent``: the same encoder's output for every graph of the store, computed once by a
        # caller that trains several heads on one frozen encoder (an ensemble); sliced, not recomputed.
        if store_latent is not None:
            self.latent = store_latent[batches.positions].to(batches.device)
            return
        whole = Batches(batches.store, batches.positions, batches.y, encode_batch_size, batches.device)
        encoder.eval()
        with torch.no_grad():
            self.latent = torch.cat([encoder(inputs) for inputs, *_ in whole.epoch()])

    def inputs(self, chunk: Tensor) -> Tensor:
        return self.latent[chunk]


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches,
    param_groups: list[dict],
    options: TrainingOptions,
    *,
    seed: int,
    objective: AuxiliaryClassification | None = None,
    history_csv: Path | None = None,
    progress: bool = True,
    description: str = "training",
    to_unit: Callable[[Tensor], Tensor] | None = None,
) -> FitResult:
    """Train ``model`` in place on standardised targets; on return it holds its best-validation weights.

    An ``objective`` (trained in the caller's parameter groups) adds its loss on the encoder's latent to
    the training loss; validation (early stopping) stays on the target alone.
    ``to_unit`` maps standardised values to the target's unit (`TransferModel.unstandardise`), for the
    history's MAE columns; without it they are in standardised units.
    The learning rate follows ``options.schedule``, stepped once an epoch; ``constant`` makes no scheduler.
    A non-finite training or validation loss raises `TrainingDiverged`; a loss that explodes, or a best
    model no better than predicting the mean, is logged and listed in ``FitResult.warnings``.
    """
    generator = torch.Generator().manual_seed(seed)
    # fused: one kernel for all parameters; the per-tensor loop was 14% of an epoch at batch 16 on CPU
    # (1.5 against 0.3 ms a step for the default model).
    optimizer = torch.optim.AdamW(param_groups, lr=options.lr, weight_decay=options.weight_decay, fused=True)
    lrs = _lrs(optimizer.param_groups)
    scheduler = _scheduler(optimizer, options)
    to_unit = to_unit or (lambda values: values)
    loss_fn = LOSSES[options.loss]
    val_batches = val.epoch()
    mean_loss = {"train": _mean_predictor_loss(train.y, loss_fn), "val": _mean_predictor_loss(val.y, loss_fn)}
    warnings: list[str] = []
    averaged = _weight_average(model, options.ema_decay)
    scored = model if averaged is None else averaged.module  # what validation sees and fit returns
    best = {"loss": math.inf, "epoch": -1, "state": copy.deepcopy(model.state_dict())}
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    lr_columns = {f"lr_{g.get('name', k)}": g for k, g in enumerate(optimizer.param_groups)}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, disable=not progress, transient=True) as bar, _HistoryWriter(
            history_csv, [*HISTORY_COLUMNS, *lr_columns]) as history_writer:
        task = bar.add_task(description, total=options.max_epochs, status="")
        for epoch in range(options.max_epochs):
            model.train()
            if objective is not None:
                objective.train()
            train_loss = train_error = 0.0
            for batch, y, rows in train.epoch(generator):
                optimizer.zero_grad(set_to_none=True)
                loss, prediction = training_loss(model, batch, y, rows, loss_fn, objective)
                if not torch.isfinite(loss):  # before the step: the weights of the last finite epoch stay
                    raise TrainingDiverged(_diverged_message(description, epoch, "training", loss.item(), lrs))
                loss.backward()
                optimizer.step()
                if averaged is not None:
                    averaged.update_parameters(model)
                train_loss += loss.item() * len(y)
                # a tensor: no sync per step
                train_error += (to_unit(prediction.detach()) - to_unit(y)).abs().sum()
            val_loss, val_error = evaluate(scored, val_batches, loss_fn, to_unit)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(_diverged_message(description, epoch, "validation", val_loss, lrs))
            ratio = train_loss / len(train) / mean_loss["train"]
            if ratio > EXPLODED and not warnings:
                warnings.append(_warn(f"{description}: the training loss of epoch {epoch} is {ratio:,.0f}x that of"
                                      f" predicting the mean: the learning rate ({lrs}) is probably"
                                      " too high."))
            history.append({
                "epoch": epoch, "train_loss": train_loss / len(train), "val_loss": val_loss,
                "train_mae": float(train_error) / len(train), "val_mae": val_error,
                "elapsed_s": round(time.perf_counter() - start, 3),
                **{name: group["lr"] for name, group in lr_columns.items()},
            })
            history_writer.write(history[-1])
            if val_loss < best["loss"]:
                best = {"loss": val_loss, "epoch": epoch, "state": copy.deepcopy(scored.state_dict())}
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            elif scheduler is not None:
                scheduler.step()
            bar.update(task, advance=1, status=f"val {val_loss:.4f} best {best['loss']:.4f} @ {best['epoch']}")
            if epoch % 25 == 0:
                log.info("%s: epoch %d, train %.4f, val %.4f, best %.4f @ %d (%.0f s)", description, epoch,
                         history[-1]["train_loss"], val_loss, best["loss"], best["epoch"], time.perf_counter() - start)
            if epoch - best["epoch"] >= options.patience:
                break
    model.load_state_dict(best["state"])
    if best["loss"] >= mean_loss["val"]:
        warnings.append(_warn(f"{description}: the best model ({best['loss']:.4g}) is no better on validation than"
                              f" predicting the training mean ({mean_loss['val']:.4g}); check the learning rate"
                              f" ({lrs}) and the data."))
    return FitResult(best["epoch"], len(history), best["loss"], time.perf_counter() - start, history, warnings)


def _weight_average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """The moving average of ``model``'s weights and buffers (batch-norm statistics included), or None for
    decay 0. A frozen weight averages to itself exactly (lerp of equal values)."""
    if not decay:
        return None
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True)


def _scheduler(optimizer: torch.optim.Optimizer, options: TrainingOptions
               ) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The per-epoch learning-rate schedule; None for ``constant``, so that a constant-rate fit is the
    same computation as before schedules existed."""
    if options.schedule == "cosine":
        factor = partial(cosine_factor, warmup=options.warmup_epochs, total=options.max_epochs)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if options.schedule == "plateau":
        # threshold 0: any better validation loss counts, as it does for early stopping
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=options.plateau_factor, patience=options.plateau_patience, threshold=0.0)
    return None


def cosine_factor(epoch: int, *, warmup: int, total: int) -> float:
    """The cosine schedule's multiple of the base rate at ``epoch``: ``(epoch + 1) / warmup`` while
    warming up, then from 1 down a half cosine that would reach 0 at epoch ``total``."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (total - warmup)))


def _mean_predictor_loss(y: Tensor, loss_fn) -> float:
    """The loss of predicting 0 (the training mean, on standardised targets)."""
    return max(float(loss_fn(torch.zeros_like(y), y)), 1e-12)


def _lrs(param_groups: list[dict]) -> str:
    return ", ".join(f"{g.get('name', 'lr')} {g['lr']:g}" for g in param_groups)


def _diverged_message(description: str, epoch: int, which: str, value: float, lrs: str) -> str:
    return (f"{description}: the {which} loss became {value} at epoch {epoch}; the training diverged and its"
            f" weights are useless. Lower the learning rate ({lrs}).")


def _warn(message: str) -> str:
    log.warning(message)
    return message


# Losses are on standardised targets (what early stopping compares); MAEs are in the target's unit.
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "train_mae", "val_mae", "elapsed_s"]


class _HistoryWriter:
    """Per-epoch rows appended to a CSV as training goes, so a long run can be watched."""

    def __init__(self, path: Path | None, columns: list[str]) -> None:
        self.handle = open(path, "w", newline="") if path else None
        if self.handle:
            self.writer = csv.DictWriter(self.handle, fieldnames=columns)
            self.writer.writeheader()

    def write(self, row: dict[str, float]) -> None:
        if self.handle:
            self.writer.writerow(row)
            self.handle.flush()

    def __enter__(self) -> _HistoryWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.handle:
            self.handle.close()


def training_loss(model: nn.Module, batch: InputBatch, y: Tensor, rows: Tensor, loss_fn,
                  objective: AuxiliaryClassification | None = None) -> tuple[Tensor, Tensor]:
    """The regression loss, plus the ``objective``'s on the same latent vectors; and the regression
    prediction (for the epoch's MAE). Without an objective: exactly plain training."""
    if objective is None:
        prediction = model(batch)
        return loss_fn(prediction, y), prediction
    latent = model.encoder(batch)
    prediction = model.head(latent)
    return loss_fn(prediction, y) + objective(latent, rows), prediction


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple[InputBatch, Tensor, Tensor]], loss_fn,
             to_unit: Callable[[Tensor], Tensor]) -> tuple[float, float]:
    """Mean loss (standardised units) and mean absolute error (``to_unit``'s units) over ``batches``."""
    model.eval()
    loss = error = 0.0
    for b, y, _ in batches:
        prediction = model(b)
        loss += loss_fn(prediction, y, reduction="sum").item()
        error += (to_unit(prediction) - to_unit(y)).abs().sum().item()
    n = sum(len(y) for _, y, _ in batches)
    return loss / n, error / n
