"""The policy interface, the registry of policies by name, and typed policy parameters."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, ClassVar

from scheduler.queues import FCFSQueue
from scheduler.state import Decision, ReplicaSpec, ReplicaView, RequestState, Status
from traces.errors import UserError


class PolicyError(UserError):
    """A policy name or parameter is invalid. The message is one line a user can act on."""


@dataclasses.dataclass
class NoParams:
    pass


def param(default, help: str, *, choices: tuple | None = None, minimum: float | None = None,
          exclusive_minimum: bool = False):
    """A documented policy parameter with optional validation."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "exclusive": exclusive_minimum}
    return dataclasses.field(default=default, metadata=meta)


class Policy:
    """A batching policy. Subclasses set ``name``, ``summary`` and ``Params`` and implement
    ``schedule``.

    Life cycle: ``bind(spec)`` once; then, interleaved, ``on_arrival(req)`` for every admitted
    arrival, ``schedule(view)`` whenever the replica can start an iteration, and ``on_finish(req)``
    when a request completes. A policy keeps its own queues of waiting requests (the engine only
    counts them) and never mutates a ``RequestState``: it returns a ``Decision``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    spec: ReplicaSpec           # the replica, set by bind() before any other call

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    def bind(self, spec: ReplicaSpec) -> None:
        self.spec = spec

    def on_arrival(self, req: RequestState) -> None:
        raise NotImplementedError

    def on_finish(self, req: RequestState) -> None:
        pass

    def on_requeue(self, req: RequestState) -> None:
        """The engine sent a request back to waiting without this policy asking: a preemption
        the engine made itself, or an admission it could not carry out (the vLLM adapter, when
        vLLM's own checks refuse part of a decision). The request holds no KV. Default: treat it
        as a new arrival; queue-based policies put it back at the front."""
        self.on_arrival(req)

    def on_abort(self, req: RequestState) -> None:
        """A request left before finishing (a client disconnected from a live server). A waiting
        request is in the policy's queue (the engine keeps them in step, through on_requeue).
        Default: drop it from the ``waiting`` queue, then forget it as if it had finished (a
        policy's per-request records are released in on_finish)."""
        waiting = getattr(self, "waiting", None)
        if req.status is Status.WAITING and waiting is not None:
            waiting.remove(req)
        self.on_finish(req)

    def schedule(self, view: ReplicaView) -> Decision:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"policy": self.name, **dataclasses.asdict(self.params)}


class QueuedPolicy(Policy):
    """A policy with one FCFS waiting queue (the common case)."""

    def bind(self, spec: ReplicaSpec) -> None:
        super().bind(spec)
        self.waiting = self.make_queue()

    def make_queue(self):
        return FCFSQueue()

    def on_arrival(self, req: RequestState) -> None:
        self.waiting.append(req)

    def requeue_preempted(self, req: RequestState) -> None:
        self.waiting.prepend(req)

    def on_requeue(self, req: RequestState) -> None:
        self.requeue_preempted(req)


# --------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available by its ``name`` (CLI, configs, vLLM adapter)."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"policy name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


_plugins_loaded = False


def _load_builtin() -> None:
    global _plugins_loaded
    if _plugins_loaded:   # scanning installed distributions costs milliseconds: do it once
        return
    import scheduler.policies  # noqa: F401  (registers the built-in policies)
    from importlib.metadata import entry_points
    # Third-party packages can add policies under the 'servesim.policies' entry-point group.
    for ep in entry_points(group="servesim.policies"):
        ep.load()
    _plugins_loaded = True


def policy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")


def make_policy(name: str, params: dict[str, Any] | None = None) -> Policy:
    cls = policy_class(name)
    return cls(parse_params(cls, params or {}))


def param_docs(cls: type[Policy]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of each parameter of a policy."""
    hints = typing.get_type_hints(cls.Params)
    return [(f.name, _type_name(hints[f.name]), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls.Params)]


def parse_params(cls: type[Policy], raw: dict[str, Any]):
    """Build ``cls.Params`` from a dict of values (strings from the CLI are converted)."""
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    hints = typing.get_type_hints(cls.Params)
    values = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k not in fields:
            allowed = ", ".join(fields) or "none"
            raise PolicyError(f"policy {cls.name}: unknown parameter {key!r}; allowed: {allowed}")
        values[k] = _convert(cls.name, k, value, hints[k], fields[k].metadata)
    return cls.Params(**values)


def _type_name(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    name = getattr(base, "__name__", str(base))
    return f"{name} (optional)" if type(None) in typing.get_args(tp) else name


def _convert(policy: str, name: str, value, tp, meta):
    where = f"policy {policy}: parameter {name}"
    out: Any
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", ""))):
        return None
    try:
        if base is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                out = low in ("true", "1", "yes")
            elif isinstance(value, bool):
                out = value
            else:
                raise ValueError
        elif base is int:
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if not f.is_integer():
                raise ValueError
            out = int(f)
        elif base is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
        elif base is str:
            out = str(value)
        elif typing.get_origin(base) is tuple or base is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            inner = typing.get_args(base)[0] if typing.get_args(base) else float
            out = tuple(inner(x) for x in items)
        else:
            out = value
    except (TypeError, ValueError):
        raise PolicyError(f"{where} must be {_type_name(tp)}, got {value!r}")
    choices = meta.get("choices")
    if choices and out not in choices:
        raise PolicyError(f"{where} must be one of {', '.join(map(str, choices))}, got {out!r}")
    minimum = meta.get("minimum")
    if minimum is not None and isinstance(out, (int, float)):
        bad = out <= minimum if meta.get("exclusive") else out < minimum
        if bad:
            op = ">" if meta.get("exclusive") else ">="
            raise PolicyError(f"{where} must be {op} {minimum}, got {out!r}")
    return out
