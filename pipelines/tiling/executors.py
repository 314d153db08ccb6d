"""Where a tiling job's block tasks run: in this process (``--workers 0``) or on Dask (a new LocalCluster
or an existing scheduler), behind the same ``run(tasks) -> (task, result | exception)`` iterator."""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator

from pipelines.core.allocator import WORKER_ENVIRON
from pipelines.core.device import resolve_device
from pipelines.core.errors import ConfigError, one_line
from pipelines.tiling.worker import BlockResult, BlockTask, compute_block

log = logging.getLogger("pipelines.tiling")


class _InProcess:
    """Runs tasks here, one after the other (``--workers 0``)."""

    threads = 1

    def run(self, tasks: Iterator[BlockTask]) -> Iterator[tuple[BlockTask, BlockResult | BaseException]]:
        for task in tasks:
            try:
                yield task, compute_block(task)
            except Exception as exc:  # reported per scene by the driver
                log.debug("%s", traceback.format_exc())
                yield task, exc

    def close(self) -> None:
        pass


class _Dask:
    """A Dask Client on a new LocalCluster or an existing scheduler; the same code serves both."""

    def __init__(self, workers: int | None, scheduler: str | None):
        from dask.distributed import Client

        self.cluster = None
        logging.getLogger("distributed").setLevel(logging.WARNING)  # its start/stop chatter is not ours
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"cannot reach the Dask scheduler {scheduler} ({one_line(exc)}); "
                                  "check the address, or drop --scheduler for a local cluster") from None
        else:
            self.cluster = local_cluster(workers)
            self.client = Client(self.cluster)
        self.threads = max(1, sum(self.client.nthreads().values()))
        log.info("dask: %d worker thread%s at %s", self.threads, "s" if self.threads != 1 else "",
                 self.client.scheduler.address)

    def run(self, tasks: Iterator[BlockTask]) -> Iterator[tuple[BlockTask, BlockResult | BaseException]]:
        from dask.distributed import as_completed

        limit = 2 * self.threads
        pending = as_completed()
        owner = {}

        def submit() -> bool:
            task = next(tasks, None)
            if task is None:
                return False
            future = self.client.submit(compute_block, task, pure=False)
            owner[future.key] = task
            pending.add(future)
            return True

        for _ in range(limit):
            if not submit():
                break
        for future in pending:
            task = owner.pop(future.key)
            if future.status == "error":
                yield task, future.exception()
            else:
                yield task, future.result()
            future.release()
            submit()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def local_cluster(workers: int | None):
    """A LocalCluster of ``workers`` processes with one thread each (one OpenMP thread, glibc's heap kept
    on one arena: see :mod:`pipelines.core.allocator`)."""
    import dask
    from dask.distributed import LocalCluster

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    before_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENVIRON}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": before_spawn}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                            silence_logs=logging.ERROR, env=env)


def _default_workers(device: str) -> int:
    if resolve_device(device).type == "cuda":  # one process per GPU
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
