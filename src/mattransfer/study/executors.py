"""Where tasks run: local worker processes by default, or a Dask cluster.

Both are `concurrent.futures.Executor`s (Dask through ``Client.get_executor``), so the study's loop
is the same for both. Each comes with the number of tasks it runs at once.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator

from dask.distributed import Client, WorkerPlugin

from mattransfer.study.worker import init_pool_worker, set_torch_threads


@contextmanager
def open_executor(workers: int | None = None, scheduler: str | None = None) -> Iterator[tuple[Executor, int]]:
    """Local processes (``workers``, default one per core), or the Dask cluster at ``scheduler``."""
    if scheduler is None:
        with local_processes(workers) as opened:
            yield opened
    else:
        with dask_cluster(scheduler) as opened:
            yield opened


@contextmanager
def local_processes(workers: int | None = None) -> Iterator[tuple[Executor, int]]:
    cores = os.cpu_count() or 1
    workers = workers or cores
    # Not plain forks: the main process holds threads (progress bar, torch). A fork server imports
    # the worker code once per main process and forks every worker of every pool from there.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mattransfer.study.worker"])
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init_pool_worker,
                             initargs=(max(1, cores // workers),)) as pool:
        yield pool, workers


@contextmanager
def dask_cluster(scheduler: str) -> Iterator[tuple[Executor, int]]:
    """A client of the scheduler at ``scheduler`` (``tcp://host:port``); one task per worker process.

    A worker runs one task at a time and gives its threads to torch: start workers with
    ``--nworkers N --nthreads cores/N``. Workers must see the study directory at the same path
    (a shared filesystem) and have mattransfer installed.
    """
    with Client(scheduler) as client:
        client.register_plugin(TorchThreads(), name="mattransfer-torch-threads")
        executor = client.get_executor(pure=False)
        try:
            yield executor, len(client.nthreads())
        finally:
            executor.shutdown(wait=True)


class TorchThreads(WorkerPlugin):
    """Dask worker plugin: the worker's threads become torch's threads for its one task at a time."""

    def setup(self, worker) -> None:
        set_torch_threads(worker.state.nthreads)
