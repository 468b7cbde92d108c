"""A cluster: N replicas on one SimPy clock, and a router in front of them.

Each replica is an unchanged ``Engine`` (simulator/engine.py) with its own policy, cost model
and KV cache; they share one ``simpy.Environment``. One process releases the workload's requests
at their arrival times, asks the router (scheduler/routers.py) which replica serves each, and
hands it over: from then on the request lives on that replica as in a single-replica run
(rejected at arrival if it can never fit there). The run ends when every replica has drained.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import simpy

from scheduler.admission import Admission
from scheduler.base import Policy
from scheduler.routers import Router
from scheduler.state import ReplicaSpec, RequestState, Status
from simulator.engine import Engine, EngineResult, reject
from simulator.errors import PolicyViolation
from traces.request import Request


class EngineLoad:
    """The live, read-only load of one replica as a router reads it (``ReplicaLoad``)."""

    __slots__ = ("index", "engine", "_outstanding")

    def __init__(self, index: int, engine: Engine):
        self.index = index
        self.engine = engine
        self._outstanding: list[RequestState] = []   # routed here, pruned when read

    @property
    def spec(self) -> ReplicaSpec:
        return self.engine.spec

    @property
    def num_waiting(self) -> int:
        return self.engine.view.num_waiting

    @property
    def num_resident(self) -> int:
        return len(self.engine.resident)

    @property
    def outstanding(self) -> int:
        return self.engine.unfinished

    @property
    def free_blocks(self) -> int:
        return self.engine.free_blocks

    @property
    def pending_tokens(self) -> int:
        # Work left: the prompt (or recompute) tokens not in cache (computed, or a waiting
        # request's prefix-cache hit), and the outputs still to come; a request computes
        # prompt + output - 1 tokens in all.
        live = [st for st in self._outstanding
                if st.status is Status.WAITING or st.status is Status.RESIDENT]
        self._outstanding = live
        return sum(st.prompt_tokens + st.output_tokens - 1 - st.computed - st.cached
                   for st in live)


@dataclass
class ClusterResult:
    """Every request's final state in arrival order with the replica that served it (-1:
    refused at the front), and each replica's own result (its timeline and counters)."""

    states: list[RequestState]
    replica_of: list[int]
    replicas: list[EngineResult]
    end_s: float
    wall_s: float


class Cluster:
    """Serves ``requests`` on replicas built by ``make_replica(index, env)`` (each an Engine on
    the shared clock), routing every arrival ``admission`` lets in with ``router``."""

    def __init__(self, requests: Iterable[Request], router: Router,
                 make_replica: Callable[[int, simpy.Environment], Engine], num_replicas: int,
                 *, admission: Admission | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None, total: int | None = None):
        self.env = simpy.Environment()
        self.requests = requests
        self.router = router
        self.admission = admission if admission is not None and admission.active else None
        self.engines = [make_replica(i, self.env) for i in range(num_replicas)]
        self.loads: Sequence[EngineLoad] = tuple(EngineLoad(i, e)
                                                 for i, e in enumerate(self.engines))
        self.seed = seed
        self.progress = progress
        self.total = total
        self.states: list[RequestState] = []
        self.replica_of: list[int] = []

    def run(self) -> ClusterResult:
        wall0 = time.perf_counter()
        env = self.env
        self.router.bind(len(self.engines), self.seed)
        if self.admission is not None:
            self.admission.bind()
        for e in self.engines:
            e._start()
        replicas = [env.process(e._replica()) for e in self.engines]
        env.process(self._arrivals())
        if self.progress is not None:
            self.progress(0, self.total or 0)
        env.run(until=simpy.AllOf(env, replicas))
        wall = time.perf_counter() - wall0
        if self.progress is not None:
            self.progress(sum(e.finished for e in self.engines), self.total or 0)
        results = [EngineResult(e.states, e.timeline, env.now, e.iterations, e.preemptions,
                                e.peak_used_blocks, e.spec, wall_s=wall)
                   for e in self.engines]
        return ClusterResult(self.states, self.replica_of, results, env.now, wall)

    def _arrivals(self):
        env, router, loads, engines = self.env, self.router, self.loads, self.engines
        admission = self.admission
        n = len(engines)
        states, replica_of = self.states, self.replica_of
        for r in self.requests:
            delay = r.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            if admission is not None:
                refusal = admission.refuse(env.now, loads)
                if refusal is not None:
                    st = RequestState(r.request_id, r.arrival_s, r.prompt_tokens,
                                      r.output_tokens, r.label)
                    reject(st, *refusal)
                    states.append(st)
                    replica_of.append(-1)
                    continue
            i = router.route(r, loads)
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n:
                raise PolicyViolation(f"router {router.name} at t={env.now:.6f}s returned "
                                      f"{i!r} for request {r.request_id}; replicas are 0..{n - 1}")
            i = int(i)
            st = engines[i].arrive(r)
            loads[i]._outstanding.append(st)
            states.append(st)
            replica_of.append(i)
            if self.progress is not None and len(states) % 4096 == 0:
                self.progress(sum(e.finished for e in engines), self.total or 0)
        for e in engines:
            e.end_arrivals()


def native_cluster(requests: Iterable[Request], router: Router,
                   policies: Sequence[Policy], specs: Sequence[ReplicaSpec], *,
                   record_timeline: bool = True, preemptions: Sequence[str] | None = None,
                   seed: int = 0, admission: Admission | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   total: int | None = None) -> Cluster:
    """A cluster of servesim's own engines: replica i runs ``policies[i]`` on ``specs[i]``
    with preemption mode ``preemptions[i]`` (default: recompute)."""
    def make(i: int, env: simpy.Environment) -> Engine:
        return Engine((), policies[i], specs[i].cost_model, specs[i],
                      record_timeline=record_timeline,
                      preemption=preemptions[i] if preemptions else "recompute", env=env)
    return Cluster(requests, router, make, len(specs), admission=admission, seed=seed,
                   progress=progress, total=total)
