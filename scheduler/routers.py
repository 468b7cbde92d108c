"""Routers: which replica of a cluster serves an arriving request.

A router is a pure decision, like a batching policy: at each arrival it reads a live, read-only
``ReplicaLoad`` of every replica (its queue, running requests, KV use, pending work, cached
prefixes) and returns the index of the replica that gets the request. The cluster
(simulator/cluster.py) owns the replicas and the clock, hands the request over, and refuses an
answer that names no replica.

Routers are registered by name (``@register_router``) and take typed parameters declared with
``param``, as policies do; ``make_router("power-of-d", {"d": "3"})`` builds one. Ties between
equally loaded replicas go to the first at or after a rotating start, so that an idle cluster
spreads its requests instead of piling them on replica 0.
"""

from __future__ import annotations

import abc
import dataclasses
import random
from typing import Any, Callable, ClassVar, Protocol, Sequence

from scheduler.base import NoParams, PolicyError, param, parse_params
from scheduler.state import ReplicaSpec
from traces.request import Request


class ReplicaLoad(Protocol):
    """What a router may read about one replica, live at the moment of the arrival."""

    @property
    def index(self) -> int: ...
    @property
    def spec(self) -> ReplicaSpec: ...
    @property
    def num_waiting(self) -> int: ...          # queued, holding no KV
    @property
    def num_resident(self) -> int: ...         # holding KV (running or paused)
    @property
    def outstanding(self) -> int: ...          # routed here and not yet finished or rejected
    @property
    def free_blocks(self) -> int: ...
    @property
    def pending_tokens(self) -> int: ...       # tokens still to compute for its outstanding work

    def cached_prefix_tokens(self, req: Request) -> int:
        """With prefix caching on, the prompt tokens of ``req`` this replica's cache holds now
        (whole blocks from the start, at most all but one, as an admission would find them; 0
        with the cache off). Reading it changes nothing: not the cache's order, not its
        counters."""
        ...


def kv_used_fraction(r: ReplicaLoad) -> float:
    return 1.0 - r.free_blocks / r.spec.num_blocks


class Router(abc.ABC):
    """A routing rule. Subclasses set ``name``, ``summary`` and ``Params`` and implement
    ``route``. ``bind(n, seed)`` is called once before the first arrival."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()
        self.num_replicas = 0
        self.rng = random.Random(0)

    def bind(self, num_replicas: int, seed: int) -> None:
        self.num_replicas = num_replicas
        # A stream of its own: routing draws never shift the workload's or a policy's draws.
        self.rng = random.Random(f"router:{self.name}:{seed}")

    @abc.abstractmethod
    def route(self, req: Request, replicas: Sequence[ReplicaLoad]) -> int:
        """The index of the replica that serves ``req``. Never mutate anything."""

    def describe(self) -> dict:
        return {"router": self.name, **dataclasses.asdict(self.params)}


class _Rotating(Router):
    """Picks the replica with the least of some load; ties go to the first at or after a start
    that moves on by one each arrival."""

    # The load measures a router may fall back on, by parameter value.
    LOADS: ClassVar[dict[str, Callable[[ReplicaLoad], Any]]] = {
        "outstanding": lambda r: r.outstanding,
        "pending-tokens": lambda r: r.pending_tokens,
    }

    def bind(self, num_replicas: int, seed: int) -> None:
        super().bind(num_replicas, seed)
        self._start = 0

    def least(self, replicas: Sequence[ReplicaLoad], load: Callable[[ReplicaLoad], Any]) -> int:
        n = len(replicas)
        start = self._start
        self._start = (start + 1) % n
        best, best_load = start, load(replicas[start])
        for k in range(1, n):
            i = (start + k) % n
            value = load(replicas[i])
            if value < best_load:
                best, best_load = i, value
        return best


# --------------------------------------------------------------------------------------------
# Registry (as the policies': by name, with typed parameters)

_ROUTERS: dict[str, type[Router]] = {}


def register_router(cls: type[Router]) -> type[Router]:
    """Class decorator: make a router available by its ``name`` (CLI, configs, sweeps)."""
    if not (isinstance(cls, type) and issubclass(cls, Router)) or cls.__abstractmethods__:
        raise PolicyError(f"router class {cls!r} is not a Router implementing route")
    if not cls.name:
        raise PolicyError(f"router class {cls.__qualname__} has no name")
    if cls.name in _ROUTERS and _ROUTERS[cls.name] is not cls:
        raise PolicyError(f"router name {cls.name!r} is already registered")
    _ROUTERS[cls.name] = cls
    return cls


def router_names() -> list[str]:
    return sorted(_ROUTERS)


def router_class(name: str) -> type[Router]:
    try:
        return _ROUTERS[name]
    except KeyError:
        raise PolicyError(f"unknown router {name!r}; choose one of: "
                          f"{', '.join(router_names())}") from None


def make_router(name: str, params: dict[str, Any] | None = None) -> Router:
    """A registered router with ``params`` (strings from the command line are converted)."""
    cls = router_class(name)
    return cls(parse_params(cls, params or {}, "router"))   # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The routers


@register_router
class RoundRobin(Router):
    name = "round-robin"
    summary = "Replica 0, 1, ..., N-1, 0, ...: the i-th arrival goes to replica i mod N."

    def bind(self, num_replicas: int, seed: int) -> None:
        super().bind(num_replicas, seed)
        self._next = 0

    def route(self, req, replicas):
        i = self._next
        self._next = (i + 1) % self.num_replicas
        return i


@register_router
class RandomRouter(Router):
    name = "random"
    summary = "A replica drawn uniformly at random (seeded): Poisson arrivals stay Poisson."

    def route(self, req, replicas):
        return self.rng.randrange(self.num_replicas)


@register_router
class LeastOutstanding(_Rotating):
    name = "least-outstanding"
    summary = "The replica with the fewest requests routed to it and not yet finished."

    def route(self, req, replicas):
        return self.least(replicas, self.LOADS["outstanding"])


@register_router
class LeastKV(_Rotating):
    name = "least-kv"
    summary = "The replica with the smallest fraction of its KV cache in use (then the fewest " \
              "waiting)."

    def route(self, req, replicas):
        return self.least(replicas, lambda r: (kv_used_fraction(r), r.num_waiting))


@register_router
class ShortestPendingTokens(_Rotating):
    name = "jsq-tokens"
    summary = "Join the shortest queue measured in tokens still to compute (prompts not yet " \
              "in cache plus outputs not yet generated)."

    def route(self, req, replicas):
        return self.least(replicas, self.LOADS["pending-tokens"])


@dataclasses.dataclass
class PowerOfDParams:
    d: int = param(2, "Replicas sampled per arrival.", minimum=1)


@register_router
class PowerOfD(Router):
    name = "power-of-d"
    summary = "Sample d replicas at random, send to the one with the fewest outstanding requests."
    Params = PowerOfDParams

    def bind(self, num_replicas: int, seed: int) -> None:
        super().bind(num_replicas, seed)
        if self.params.d > num_replicas:
            raise PolicyError(f"router power-of-d: parameter d={self.params.d} exceeds the "
                              f"{num_replicas} replicas")

    def route(self, req, replicas):
        sampled = self.rng.sample(range(self.num_replicas), self.params.d)
        return min(sampled, key=lambda i: replicas[i].outstanding)


# Routers a session's first turn may be placed by (``session-affinity``'s ``first``).
FIRST_TURN_ROUTERS = ("least-outstanding", "jsq-tokens", "least-kv", "round-robin", "random",
                      "power-of-d", "prefix-affinity")


@dataclasses.dataclass
class SessionAffinityParams:
    first: str = param("least-outstanding", "The router that places a session's first turn "
                       "(and requests of no session), with its default parameters.",
                       choices=FIRST_TURN_ROUTERS)


@register_router
class SessionAffinity(Router):
    name = "session-affinity"
    summary = "Every turn of a session goes to the replica that served its first turn, which " \
              "the router named by `first` chose (sticky sessions: the previous turns' KV is " \
              "cached there)."
    Params = SessionAffinityParams

    def bind(self, num_replicas: int, seed: int) -> None:
        super().bind(num_replicas, seed)
        self.first = make_router(self.params.first)
        self.first.bind(num_replicas, seed)
        self._replica_of: dict[int, int] = {}      # session -> the replica of its first turn

    def route(self, req, replicas):
        if req.session is None:
            return self.first.route(req, replicas)
        i = self._replica_of.get(req.session)
        if i is None:
            i = self._replica_of[req.session] = self.first.route(req, replicas)
        return i


@dataclasses.dataclass
class PrefixAffinityParams:
    load: str = param("outstanding", "The load that breaks ties between equal hits, and "
                      "decides when no replica holds a prefix: outstanding requests, or "
                      "pending tokens (as jsq-tokens).", choices=tuple(_Rotating.LOADS))
    max_imbalance: int | None = param(
        None, "A replica whose outstanding requests exceed the least loaded replica's by more "
        "than this competes on load only, its hit ignored (None: the hit always wins).",
        minimum=0)


@register_router
class PrefixAffinity(_Rotating):
    name = "prefix-affinity"
    summary = "The replica whose prefix cache holds the longest head of the request's prompt; " \
              "equal hits, and no hit anywhere, go by load (cache-aware routing)."
    Params = PrefixAffinityParams

    def route(self, req, replicas):
        load = self.LOADS[self.params.load]
        hits = [r.cached_prefix_tokens(req) for r in replicas]
        if not any(hits):
            return self.least(replicas, load)
        slack = self.params.max_imbalance
        if slack is not None:
            floor = min(r.outstanding for r in replicas)
            hits = [h if r.outstanding - floor <= slack else 0 for h, r in zip(hits, replicas)]
        return self.least(replicas, lambda r: (-hits[r.index], load(r)))
