"""Where points run: in this process, a local process pool, or a Ray cluster.

Every executor maps ``run_point`` over tasks and yields outcomes as they finish (in any order:
the results store sorts them). Results do not depend on the executor: a task carries its whole
configuration, seed included.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from simulator.errors import ConfigError

# Process pools, and the worker (the simulator, pandas), are imported when points run, not with
# this module: servesim imports it at start-up for EXECUTORS.
if TYPE_CHECKING:
    import concurrent.futures as cf

    from simulator.sweep.worker import PointOutcome, PointTask

EXECUTORS = ("local", "ray")
ROOT = Path(__file__).resolve().parents[2]   # the folder holding scheduler/, simulator/, traces/


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def make_executor(kind: str = "local", workers: int | None = None, address: str | None = None):
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if kind == "local":
        if address:
            raise ConfigError("--address is for --executor ray")
        return LocalExecutor(workers or default_workers())
    if kind == "ray":
        return RayExecutor(workers, address)
    raise ConfigError(f"--executor must be one of: {', '.join(EXECUTORS)}; got {kind!r}")


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the driver handles it (stops submitting, keeps
    # what finished); workers finish or are dropped quietly instead of printing tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _died(task: PointTask, why: str) -> PointOutcome:
    from simulator.sweep.worker import PointOutcome
    return PointOutcome(task.index, task.key, "failed", error=why)


class LocalExecutor:
    """``workers`` processes; with one worker the points run in this process (no pool)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: cf.ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return f"local, {self.workers} worker{'s' if self.workers > 1 else ''}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._shutdown()

    def _shutdown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        import concurrent.futures as cf
        import multiprocessing
        # forkserver: workers fork from a clean server that has already imported the simulator
        # (fast start, and no fork of this process's threads, e.g. the progress bar's).
        if sys.platform.startswith("linux"):
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["simulator.sweep.worker"])
        else:
            ctx = multiprocessing.get_context("spawn")
        return cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_ignore_sigint)

    def map_unordered(self, tasks: Iterable[PointTask]) -> Iterator[PointOutcome]:
        import concurrent.futures as cf
        from concurrent.futures.process import BrokenProcessPool

        from simulator.sweep.worker import run_point
        if self.workers == 1:
            for task in tasks:
                yield run_point(task)
            return
        queue = list(tasks)[::-1]
        # A small window of submitted tasks: a Ctrl-C or a dead worker loses only these.
        window = 2 * self.workers
        pending: dict[cf.Future, PointTask] = {}
        while queue or pending:
            if self._pool is None:
                self._pool = self._new_pool()
            while queue and len(pending) < window:
                task = queue.pop()
                pending[self._pool.submit(run_point, task)] = task
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            broken = False
            for fut in done:
                task = pending.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken = True
                    yield _died(task, "worker process died (killed, or out of memory)")
            if broken:
                # Every task in flight is lost with the pool; record them and start a new one.
                for fut, task in list(pending.items()):
                    yield _died(task, "worker process died (killed, or out of memory)")
                pending.clear()
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray keeps retrying an unreachable head for minutes: fail fast with one line instead."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return   # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: cannot reach the Ray head at {host}:{port} "
                          f"({e.strerror or e})") from None


class RayExecutor:
    """Points as Ray tasks (one CPU each): on the cluster at ``address``, or on a local Ray
    started here with ``workers`` CPUs (all cores when not given)."""

    def __init__(self, workers: int | None, address: str | None):
        self.workers = workers
        self.address = address
        self._started = False

    def describe(self) -> str:
        where = self.address or f"local, {self.workers or default_workers()} CPUs"
        return f"ray ({where})"

    def __enter__(self):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install ray (it is in servesim's "
                              "dev extra)") from None
        self._ray = ray
        if not ray.is_initialized():
            common = dict(include_dashboard=False, log_to_driver=False)
            try:
                if self.address:
                    _check_reachable(self.address)
                    # Ship this code to the cluster so its workers run exactly this version;
                    # the cluster's Python needs servesim's dependencies installed.
                    import scheduler
                    import simulator
                    import traces
                    ray.init(address=self.address, **common, runtime_env={
                        "py_modules": [scheduler, simulator, traces]})
                else:
                    # address="local": always a new local instance, never a cluster that a
                    # `ray start` left recorded in /tmp/ray (possibly dead).
                    ray.init(address="local", num_cpus=self.workers or default_workers(), **common,
                             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
            except ConnectionError as e:
                raise ConfigError(f"--address {self.address}: cannot connect to Ray: {e}")
            self._started = True
        from simulator.sweep.worker import run_point
        self._remote = ray.remote(num_cpus=1)(run_point)
        return self

    def __exit__(self, *exc):
        if self._started:
            self._ray.shutdown()
            self._started = False

    def map_unordered(self, tasks: Iterable[PointTask]) -> Iterator[PointOutcome]:
        ray = self._ray
        refs = {self._remote.remote(task): task for task in tasks}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    task = refs.pop(ref)
                    try:
                        yield ray.get(ref)
                    except Exception as e:   # noqa: BLE001 - a lost worker or node
                        yield _died(task, f"ray task failed: {type(e).__name__}: "
                                          f"{' '.join(str(e).split())[:300]}")
        finally:
            for ref in refs:
                ray.cancel(ref)
