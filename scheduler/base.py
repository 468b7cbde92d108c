"""The policy interface, the registry of policies by name, and typed policy parameters."""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
import os
import sys
import traceback
import typing
from typing import Any, Callable, ClassVar

from scheduler.queues import FCFSQueue
from scheduler.state import Decision, ReplicaSpec, ReplicaView, RequestState, Status
from traces.errors import SimulationError, UserError


class PolicyError(UserError):
    """A policy name or parameter is invalid. The message is one line a user can act on."""


class PolicyViolation(SimulationError):
    """A policy asked for something the rules forbid (a bug in the policy), detected where it
    happens: in a StepPlan helper, or by the engine applying the decision. The message names the
    request and the rule."""


@dataclasses.dataclass
class NoParams:
    pass


def param(default, help: str, *, choices: tuple | None = None, minimum: float | None = None,
          exclusive_minimum: bool = False):
    """A documented policy parameter with optional validation."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "exclusive": exclusive_minimum}
    return dataclasses.field(default=default, metadata=meta)


class Policy(abc.ABC):
    """A batching policy. Subclasses set ``name``, ``summary`` and ``Params`` (a dataclass of
    ``param`` fields) and implement ``on_arrival`` and ``schedule``; ``QueuedPolicy`` implements
    ``on_arrival`` with one FCFS queue.

    Life cycle: ``bind(spec)`` once; then, interleaved, ``on_arrival(req)`` for every admitted
    arrival, ``schedule(view)`` whenever the replica can start an iteration, and ``on_finish(req)``
    when a request completes. A policy keeps its own queues of waiting requests (the engine only
    counts them) and never mutates a ``RequestState``: it returns a ``Decision``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # The promise that lets an engine run a stretch of identical decode iterations in one step
    # (docs/writing-a-policy.md): when ``schedule`` returns a decode-only decision (no prefill,
    # preemption or rejection), it would return the same decode list at every later iteration
    # until the next event: an arrival, a completion, the decision's ``wake_at``, or the
    # iteration whose new KV blocks would not fit in the free ones. Only the class's own
    # declaration counts (``is_steady_decode``): a subclass that changes ``schedule`` may break
    # the promise its parent made, so it makes it again or not at all.
    steady_decode: ClassVar[bool] = False
    # With prefix caching, a further promise for such a stretch (``cache_read_by``): a
    # decode-only decision read the cache state (``cached``, ``cached_shared_blocks``) of no
    # waiting request but the head of ``self.waiting`` (admission in queue order that stops at
    # the first refusal), and no resident's ``shared_blocks`` (read only to preempt). The
    # stretch then runs on while evictions move other waiting requests' hits. Own declaration
    # only, as ``steady_decode``.
    reads_cache_of_head: ClassVar[bool] = False
    spec: ReplicaSpec           # the replica, set by bind() before any other call

    def refusal_outlasts_hit_loss(self) -> bool:
        """With ``reads_cache_of_head``, one more promise for a decode-only decision: the head
        it refused would be refused too with a shorter hit (``cached``), the same
        ``cached_shared_blocks`` and no more free blocks, which is all that evictions change in
        a stretch (they take unheld blocks only, at the end of a cached prefix). Mind that the
        free count a decision sees (``view.free_blocks``, less what the step's decodes take)
        can stay the same while the hit shrinks: the evicting block may be one the previous
        decision already counted as taken. So a rule whose need falls with the hit (a first
        chunk's blocks, ``ceil((cached + chunk) / block_size)``) does not keep the promise;
        one that needs the whole prompt's blocks less the held ones does. The engine's stretch
        then runs on through evictions that shorten the head's hit, instead of ending for a
        decision that would be the same. Only the class's own definition counts
        (``outlasts_hit_loss``), as ``steady_decode``. Default: no."""
        return False

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    def look_up_on_peek(self, look_up: Callable[[RequestState], None]) -> bool:
        """Offered, after ``bind``, by an engine with prefix caching: the policy calls
        ``look_up(req)`` before it reads a waiting request's cache state (``cached``,
        ``cached_shared_blocks``), so the engine need not look every waiting request up before
        each decision. Returns whether it will (default: no; every hit is then up to date at
        every call)."""
        return False

    def bind(self, spec: ReplicaSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def on_arrival(self, req: RequestState) -> None:
        """A request arrived (or, by default, was handed back: on_requeue): queue it."""

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

    def is_queued(self, req: RequestState) -> bool | None:
        """Whether ``req`` is in this policy's waiting structures (None: the policy cannot say).
        The engine asks after every preemption, so that a victim the policy forgot to requeue is
        reported at once rather than as a stall at the end of the run. Default: membership of
        the ``waiting`` queue, when the policy has one."""
        waiting = getattr(self, "waiting", None)
        return None if waiting is None else req in waiting

    @abc.abstractmethod
    def schedule(self, view: ReplicaView) -> Decision:
        """This iteration's batch. Never mutate ``view`` or a request: return a Decision."""

    def describe(self) -> dict:
        return {"policy": self.name, **dataclasses.asdict(self.params)}


def is_steady_decode(policy: Policy) -> bool:
    """Whether ``policy``'s own class declares ``steady_decode`` (inherited promises do not
    count: see ``Policy.steady_decode``)."""
    return vars(type(policy)).get("steady_decode", False) is True


def outlasts_hit_loss(policy: Policy) -> bool:
    """Whether ``policy``'s own class promises ``refusal_outlasts_hit_loss`` (and does, with
    its parameters)."""
    return "refusal_outlasts_hit_loss" in vars(type(policy)) and \
        policy.refusal_outlasts_hit_loss()


def cache_read_by(policy: Policy) -> set[int] | None:
    """The ids of the waiting requests whose prefix-cache state a decode-only decision of
    ``policy`` just read: its queue's head (none with an empty queue) if its own class declares
    ``reads_cache_of_head``; None (any request, residents too) otherwise."""
    if vars(type(policy)).get("reads_cache_of_head", False) is not True:
        return None
    waiting = getattr(policy, "waiting", None)
    return {waiting.peek().request_id} if waiting else set()


# --------------------------------------------------------------------------------------------
# What every engine checks as it asks a policy and applies the answer (the simulator's engine,
# and the vLLM adapter): a mistake is named at the step it happens, with the policy and the time.


def violation(policy: Policy, now: float, req: RequestState, what: str) -> PolicyViolation:
    return PolicyViolation(f"policy {policy.name} at t={now:.6f}s: request {req.request_id} "
                           f"{what} ({req!r})")


def decide(policy: Policy, view: ReplicaView) -> Decision:
    """``policy.schedule(view)``; a rule a StepPlan helper refused, or an answer that is not a
    Decision, is a PolicyViolation naming the policy and the time."""
    try:
        decision = policy.schedule(view)
    except PolicyViolation as e:
        raise PolicyViolation(f"policy {policy.name} at t={view.now:.6f}s: {e}") from None
    if not isinstance(decision, Decision):
        raise PolicyViolation(f"policy {policy.name} at t={view.now:.6f}s: schedule returned "
                              f"{type(decision).__name__} {decision!r:.60}, not a Decision")
    return decision


def check_victims(policy: Policy, decision: Decision, now: float) -> None:
    """Each preempted request must wait in the policy's queue for a later step. Scheduled in
    the same decision, an engine would re-admit it as a fresh prefill while the policy still
    queues it; not requeued, it would never run again. Either way the run would fail much
    later, naming another request. Checked once the preemptions are applied."""
    victims = {id(st) for st in decision.preempt}
    for st in [r for r, _ in decision.prefill] + list(decision.decode):
        if id(st) in victims:
            raise violation(policy, now, st, "was preempted and scheduled in the same decision "
                                             "(a preempted request waits for a later step)")
    for st in decision.preempt:
        if policy.is_queued(st) is False:
            raise violation(policy, now, st, "was preempted but the policy did not put it back "
                                             "in its waiting queue (it would never run again; "
                                             "StepPlan(on_preempt=...) requeues victims)")


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

    def look_up_on_peek(self, look_up: Callable[[RequestState], None]) -> bool:
        # A queue-order policy (reads_cache_of_head) reads a waiting request's cache state only
        # as its queue's peek returns it.
        if cache_read_by(self) is None:
            return False
        self.waiting.on_peek = look_up
        return True

    def on_requeue(self, req: RequestState) -> None:
        self.requeue_preempted(req)


# --------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, type[Policy]] = {}
_BROKEN_PLUGINS: dict[str, str] = {}    # entry-point name -> why it failed to load


def check_policy_class(cls: Any, where: str) -> None:
    """Refuse, in one line, a class that cannot run as a policy: at registration, and when a
    policy is named by path. (A class missing a method or with plain-class Params would
    otherwise fail later with a traceback from deep inside the simulator.)"""
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise PolicyError(f"{where} is not a Policy subclass (subclass scheduler.Policy, or "
                          f"scheduler.QueuedPolicy for one FCFS waiting queue)")
    if cls.__abstractmethods__:
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise PolicyError(f"{where} does not implement {missing}")
    params = cls.Params
    label = getattr(params, "__qualname__", repr(params))
    if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
        raise PolicyError(f"{where}: Params {label} is not a dataclass (decorate it with "
                          f"@dataclasses.dataclass; its fields are param(default, help))")
    fields = dataclasses.fields(params)
    names = {f.name for f in fields}
    ignored = [a for a in vars(params).get("__annotations__", {}) if a not in names]
    if ignored:
        raise PolicyError(f"{where}: Params {label} is not itself a dataclass, so its field "
                          f"{ignored[0]!r} is ignored (decorate it with @dataclasses.dataclass)")
    for f in fields:
        if f.init and f.default is dataclasses.MISSING and \
                f.default_factory is dataclasses.MISSING:
            raise PolicyError(f"{where}: Params field {f.name!r} has no default (declare it as "
                              f"{f.name}: type = param(default, help))")


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available by its ``name`` (CLI, configs, vLLM adapter)."""
    where = f"policy class {cls.__qualname__}"
    check_policy_class(cls, where)
    if not cls.name:
        raise PolicyError(f"{where} has no name (set name = \"...\" to register it)")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise PolicyError(f"{where}: policy name {cls.name!r} is already registered by "
                          f"{_REGISTRY[cls.name].__module__}.{_REGISTRY[cls.name].__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


_plugins_loaded = False


def _load_builtin() -> None:
    global _plugins_loaded
    if _plugins_loaded:   # scanning installed distributions costs milliseconds: do it once
        return
    import scheduler.policies  # noqa: F401  (registers the built-in policies)
    from importlib.metadata import entry_points
    # Third-party packages add policies under the 'servesim.policies' entry-point group: a
    # module whose classes use @register, or a Policy class (registered here, under the entry
    # point's name unless it names itself). One that fails to load is recorded and named when
    # asked for; it never takes the other policies down.
    for ep in entry_points(group="servesim.policies"):
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Policy) and \
                    _REGISTRY.get(obj.name) is not obj:
                if "name" not in vars(obj):
                    obj.name = ep.name
                register(obj)
        except Exception as e:  # noqa: BLE001  (any error in third-party code)
            _BROKEN_PLUGINS[ep.name] = f"plug-in {ep.name!r} ({ep.value}) failed to load: " \
                                       f"{_error_line(e)}"
    _plugins_loaded = True


def _error_line(e: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame: where a plug-in or a
    module named by path broke."""
    frames = traceback.extract_tb(e.__traceback__)
    at = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}{at}"


def plugin_errors() -> list[str]:
    """One line per installed plug-in that failed to load."""
    _load_builtin()
    return [_BROKEN_PLUGINS[k] for k in sorted(_BROKEN_PLUGINS)]


def policy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    """The class of a registered policy, or of ``package.module:Class`` (imported, checked,
    never registered): every command and the vLLM plug-in look policies up here."""
    if ":" in name:
        return _class_by_path(name)
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in _BROKEN_PLUGINS:
            raise PolicyError(f"policy {name!r}: {_BROKEN_PLUGINS[name]}") from None
        raise PolicyError(f"unknown policy {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
                          f" (or give a class as package.module:Class)") from None


def _class_by_path(spec: str) -> type[Policy]:
    module_name, _, attr = spec.partition(":")
    where = f"policy {spec!r}"
    if not module_name or not attr:
        raise PolicyError(f"{where}: expected package.module:Class")
    obj: Any = _import_module(module_name, where)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PolicyError(f"{where}: module {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    check_policy_class(obj, where)
    if "name" not in vars(obj):   # unnamed (or named by the class it extends): named by its path
        obj.name = spec
    return obj


def _import_module(module_name: str, where: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # A module in the current folder: `python -m` finds it, the `servesim` script does not
        # (its sys.path starts at the script's folder). Look there too, as uvicorn does.
        missing_is_target = e.name is not None and (module_name + ".").startswith(e.name + ".")
        if missing_is_target and os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
            return _import_module(module_name, where)
        if missing_is_target:
            raise PolicyError(f"{where}: no module named {e.name!r} (is its folder on "
                              f"PYTHONPATH?)") from None
        raise PolicyError(f"{where}: importing {module_name} failed: {_error_line(e)}") from None
    except Exception as e:  # noqa: BLE001  (any error in the policy's own module)
        raise PolicyError(f"{where}: importing {module_name} failed: {_error_line(e)}") from None


def make_policy(policy: str | type[Policy], params: dict[str, Any] | None = None) -> Policy:
    """A policy (a registered name, ``package.module:Class``, or a class) with ``params``
    (strings, as from the command line, are converted and validated)."""
    if isinstance(policy, str):
        cls = policy_class(policy)
    else:
        check_policy_class(policy, f"policy class {getattr(policy, '__qualname__', policy)}")
        cls = policy
    return cls(parse_params(cls, params or {}))


def param_docs(cls: type[Policy]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of each parameter of a policy."""
    hints = typing.get_type_hints(cls.Params)
    return [(f.name, _type_name(hints[f.name]), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls.Params)]


def parse_params(cls: type[Policy], raw: dict[str, Any], kind: str = "policy"):
    """Build ``cls.Params`` from a dict of values (strings from the CLI are converted); errors
    name the ``kind`` of class (a policy, or a router: scheduler/routers.py)."""
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    hints = typing.get_type_hints(cls.Params)
    values = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k not in fields:
            allowed = ", ".join(fields) or "none"
            raise PolicyError(f"{kind} {cls.name}: unknown parameter {key!r}; allowed: {allowed}")
        values[k] = _convert(f"{kind} {cls.name}", k, value, hints[k], fields[k].metadata)
    return cls.Params(**values)


def _type_name(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    name = getattr(base, "__name__", str(base))
    return f"{name} (optional)" if type(None) in typing.get_args(tp) else name


def _convert(owner: str, name: str, value, tp, meta):
    where = f"{owner}: parameter {name}"
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
