"""Training-step time of the composition encoders on one CPU thread: batches of 256 random formulas (2-5
elements), forward + backward + Adam step, and what that makes per epoch of 85,537 formulas (bandgap_comp's
training split). ElemNet at the paper's widths (1024 → 32) and at a quarter of them (256 → 32, the one the
DFT → experiment runs use), the Magpie MLP, and the element-attention model (d 128, 3 layers; d 64, 2 layers).

    OMP_NUM_THREADS=1 python bench/composition_speed.py
"""

from __future__ import annotations

import time

import torch

from mattransfer.graphs.composition import N_ELEMENTS, CompositionStore
from mattransfer.models.encoders.element_attention import ElementAttention
from mattransfer.models.encoders.elemnet import ELEMNET_WIDTHS, ElemNet
from mattransfer.models.encoders.magpie_mlp import MagpieMLP

QUARTER = [max(32, w // 4) for w in ELEMNET_WIDTHS]
N_TRAIN, BATCH, STEPS = 85_537, 256, 10


def random_store(n: int, seed: int = 0) -> CompositionStore:
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, N_ELEMENTS)
    for row in range(n):
        k = int(torch.randint(2, 6, (1,), generator=generator))
        x[row, torch.randperm(86, generator=generator)[:k]] = torch.rand(k, generator=generator) + 0.1
    return CompositionStore([str(i) for i in range(n)], x / x.sum(1, keepdim=True))


def step_seconds(encoder: torch.nn.Module, store: CompositionStore) -> float:
    head = torch.nn.Linear(encoder.out_dim, 1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()])
    batches = [store.batch(torch.arange(k * BATCH, (k + 1) * BATCH)) for k in range(STEPS + 1)]
    for k, batch in enumerate(batches):
        if k == 1:  # the first step warms up the allocator
            start = time.perf_counter()
        loss = head(encoder(batch)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    store = random_store(BATCH * (STEPS + 1))
    for name, encoder in [("elemnet (1024 → 32, the paper's)", ElemNet(ElemNet.Config())),
                          ("elemnet (256 → 32, a quarter)", ElemNet(ElemNet.Config(widths=QUARTER))),
                          ("magpie-mlp (512-512-256-128)", MagpieMLP(MagpieMLP.Config())),
                          ("element-attention (d 128, 3 layers)", ElementAttention(ElementAttention.Config())),
                          ("element-attention (d 64, 2 layers)",
                           ElementAttention(ElementAttention.Config(dim=64, layers=2, ff_dim=128)))]:
        seconds = step_seconds(encoder, store)
        params = sum(p.numel() for p in encoder.parameters())
        print(f"{name}: {params:,} weights, {1000 * seconds:.0f} ms per batch of {BATCH},"
              f" {seconds * N_TRAIN / BATCH:.0f} s per epoch of {N_TRAIN:,}")


if __name__ == "__main__":
    main()
