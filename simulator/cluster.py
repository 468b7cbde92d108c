"""A cluster: N replicas on one SimPy clock, and a router in front of them.

Each replica is an unchanged ``Engine`` (simulator/engine.py) with its own policy, cost model
and KV cache (with prefix caching, its own block pool); they share one ``simpy.Environment``.
One process releases the workload's requests at their arrival times, asks the router
(scheduler/routers.py) which replica serves each, and hands it over: from then on the request
lives on that replica as in a single-replica run (rejected at arrival if it can never fit
there). Closed-loop session turns are held by the cluster, not by a replica
(simulator/closed_loop.py): a turn arrives its think time after the turn it follows ends on
whichever replica served it, and the router places it like any arrival. The run ends when every
replica has drained.
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
from simulator.closed_loop import ClosedLoopTurns
from simulator.engine import Engine, EngineResult, reject
from simulator.errors import PolicyViolation
from simulator.prefix_cache import ChainLayout, RequestBlocks, laid_out
from traces.request import Request


class _ArrivalChains:
    """The block hashes of the request being routed, per block size: computed once for all the
    replicas a router asks, as far as any of them needed."""

    __slots__ = ("request_id", "by_block_size", "layout")

    def __init__(self, layout: ChainLayout | None = None):
        self.request_id: int | None = None
        self.by_block_size: dict[int, RequestBlocks] = {}
        self.layout = layout if layout is not None else ChainLayout(None)

    def chain(self, req: Request, block_size: int) -> RequestBlocks:
        if req.request_id != self.request_id:
            self.request_id = req.request_id
            self.by_block_size = {}
        chain = self.by_block_size.get(block_size)
        if chain is None:
            chain = self.by_block_size[block_size] = self.layout.blocks(req, block_size)
        return chain


class EngineLoad:
    """The live, read-only load of one replica as a router reads it (``ReplicaLoad``)."""

    __slots__ = ("index", "engine", "_outstanding", "_chains")

    def __init__(self, index: int, engine: Engine, chains: _ArrivalChains | None = None):
        self.index = index
        self.engine = engine
        self._outstanding: list[RequestState] = []   # routed here, pruned when read
        self._chains = chains if chains is not None else _ArrivalChains(engine.chains)

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
        # Mid-stretch, the tokens its iterations computed are not in the states yet (every
        # request of a stretch is resident here, so among the outstanding).
        return sum(st.prompt_tokens + st.output_tokens - 1 - st.computed - st.cached
                   for st in live) - self.engine.uncommitted_tokens

    def cached_prefix_tokens(self, req: Request) -> int:
        # As the replica would look it up at admission (Engine._look_up_prefixes): the whole
        # cached blocks at the head of its chain, at most all its prompt tokens but one. Reads
        # the pool; touches nothing (a hit on an evictable block is only taken at admission).
        pool = self.engine.pool
        if pool is None:
            return 0
        bs = pool.block_size
        limit = (req.prompt_tokens - 1) // bs
        # The pool answers per segment of the chain (simulator/prefix_cache.py), generating
        # the chain only as far as the hit reaches.
        if limit <= 0:
            return 0
        hit, _, _ = pool.hit_blocks(self._chains.chain(req, bs), limit)
        return hit * bs


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
                 progress: Callable[[int, int], None] | None = None, total: int | None = None,
                 chains: ChainLayout | None = None):
        self.env = simpy.Environment()
        self.requests = requests
        self.router = router
        self.admission = admission if admission is not None and admission.active else None
        self.engines = [make_replica(i, self.env) for i in range(num_replicas)]
        # The replicas' and the router's chains are cut by one layout (``chains``: that of
        # the replicas with prefix caching), so they name the same segments.
        for i, e in enumerate(self.engines):
            if e.pool is not None and e.chains is not chains and e.chains.joins:
                raise ValueError(f"replica {i} cuts its chains by a layout of its own (an "
                                 f"Engine given its requests): give the cluster and every "
                                 f"replica one layout (chains=)")
        arrival_chains = _ArrivalChains(chains)
        self.loads: Sequence[EngineLoad] = tuple(EngineLoad(i, e, arrival_chains)
                                                 for i, e in enumerate(self.engines))
        # Session turns wait for the turn they follow on whichever replica it ended: every
        # replica reports its ends to the cluster's turns, which the router then places.
        self.turns = ClosedLoopTurns(self.env, self._place, self._close_arrivals)
        for e in self.engines:
            e.turns = self.turns
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
                                e.peak_used_blocks, e.spec, wall_s=wall,
                                prefix_cache=e._prefix_cache_report())
                   for e in self.engines]
        return ClusterResult(self.states, self.replica_of, results, env.now, wall)

    def _arrivals(self):
        env, turns = self.env, self.turns
        for r in self.requests:
            if turns.hold(r):              # arrives when the turn it follows ends
                continue
            delay = r.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            self._place(r)
        turns.listed()
        for e in self.engines:
            e._wake()

    def _place(self, r: Request, arrival_s: float | None = None) -> None:
        """``r`` arrives now (at ``arrival_s``, a session turn's send time, else its own):
        refused at the front, or routed to a replica."""
        env, loads, engines = self.env, self.loads, self.engines
        n = len(engines)
        if self.admission is not None:
            refusal = self.admission.refuse(env.now, loads)
            if refusal is not None:
                st = RequestState(r.request_id, r.arrival_s if arrival_s is None else arrival_s,
                                  r.prompt_tokens, r.output_tokens, r.label)
                reject(st, *refusal)
                self.states.append(st)
                self.replica_of.append(-1)
                self.turns.ended(r.request_id)
                return
        router = self.router
        i = router.route(r, loads)
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n:
            raise PolicyViolation(f"router {router.name} at t={env.now:.6f}s returned "
                                  f"{i!r} for request {r.request_id}; replicas are 0..{n - 1}")
        i = int(i)
        st = engines[i].arrive(r, arrival_s)
        loads[i]._outstanding.append(st)
        self.states.append(st)
        self.replica_of.append(i)
        if self.progress is not None and len(self.states) % 4096 == 0:
            self.progress(sum(e.finished for e in engines), self.total or 0)

    def _close_arrivals(self) -> None:
        for e in self.engines:
            e.close_arrivals()


def native_cluster(requests: Iterable[Request], router: Router,
                   policies: Sequence[Policy], specs: Sequence[ReplicaSpec], *,
                   record_timeline: bool = True, preemptions: Sequence[str] | None = None,
                   seed: int = 0, admission: Admission | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   total: int | None = None,
                   prefix_caching: Sequence[bool] | None = None,
                   stepwise: bool = False) -> Cluster:
    """A cluster of servesim's own engines: replica i runs ``policies[i]`` on ``specs[i]``
    with preemption mode ``preemptions[i]`` (default: recompute) and prefix caching if
    ``prefix_caching[i]`` (default: off); every iteration on its own if ``stepwise``."""
    chains = None
    if prefix_caching and any(prefix_caching):
        requests, chains = laid_out(requests, (spec.block_size for spec in specs))

    def make(i: int, env: simpy.Environment) -> Engine:
        return Engine((), policies[i], specs[i].cost_model, specs[i],
                      record_timeline=record_timeline,
                      preemption=preemptions[i] if preemptions else "recompute",
                      prefix_caching=bool(prefix_caching[i]) if prefix_caching else False,
                      stepwise=stepwise, env=env, chains=chains)
    return Cluster(requests, router, make, len(specs), admission=admission, seed=seed,
                   progress=progress, total=total, chains=chains)
