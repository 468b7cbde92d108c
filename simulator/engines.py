"""The replica loops a run can be simulated with, by name (``RunConfig.engine``).

The simulator core registers its own engine ("native", simulator/engine.py); a backend in a
room above registers its engines when imported (simulator/vllm registers "vllm", vLLM's
scheduler in the loop), so the core never imports the rooms that build on it. This module
imports nothing heavy: the vLLM plug-in imports it in a server process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from simulator.errors import ConfigError

if TYPE_CHECKING:
    from scheduler.base import Policy
    from scheduler.state import ReplicaSpec
    from simulator.config import RunConfig
    from simulator.engine import ReplicaLoop
    from traces.workload import Workload

# (run config, workload, policy, replica, progress callback) -> a loop ready to ``run()``
EngineFactory = Callable[["RunConfig", "Workload", "Policy", "ReplicaSpec",
                          Optional[Callable[[int, int], None]]], "ReplicaLoop"]

_FACTORIES: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make ``factory`` the engine called ``name``."""
    _FACTORIES[name] = factory


def engine_factory(name: str) -> EngineFactory:
    if name == "native":
        import simulator.engine  # noqa: F401  (registers "native")
    try:
        return _FACTORIES[name]
    except KeyError:
        hint = "; import simulator.vllm to register it" if name == "vllm" else ""
        raise ConfigError(f"engine {name!r} is not available (registered: "
                          f"{', '.join(sorted(_FACTORIES)) or 'none'}){hint}") from None
