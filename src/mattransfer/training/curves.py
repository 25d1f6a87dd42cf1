"""The learning-curve figure of a run directory: train and validation MAE per epoch, best epoch marked."""

from __future__ import annotations

from pathlib import Path

from mattransfer.fileio import atomic_path


def plot_learning_curve(history: list[dict[str, float]], best_epoch: int, unit: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; also safe in worker processes
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [row["train_mae"] for row in history], label="train")
    ax.plot(epochs, [row["val_mae"] for row in history], label="validation")
    best = next((row for row in history if row["epoch"] == best_epoch), None)
    if best is not None:
        ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
        ax.plot([best_epoch], [best["val_mae"]], "o", color="C1",
                label=f"best epoch {best_epoch}: val MAE {best['val_mae']:.4g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MAE [{unit}]" if unit else "MAE")
    if len(history) > 1 and min(r["train_mae"] for r in history) > 0:
        ax.set_yscale("log")  # early epochs are often orders of magnitude above the end
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
