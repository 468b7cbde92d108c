"""Batching policies: pure decision logic shared by the simulator and the vLLM plug-in.

Nothing in this package imports SimPy or vLLM at module level.
"""

from scheduler.base import (Policy, PolicyError, QueuedPolicy, make_policy, param, param_docs,
                            policy_class, policy_names, register)
from scheduler.state import Decision, ReplicaSpec, ReplicaView, RequestState, Status

__all__ = [
    "Decision", "Policy", "PolicyError", "QueuedPolicy", "ReplicaSpec", "ReplicaView",
    "RequestState", "Status", "make_policy", "param", "param_docs", "policy_class", "policy_names",
    "register",
]
