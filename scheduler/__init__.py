"""Batching policies: pure decision logic shared by the simulator and the vLLM plug-in.

Nothing in this package imports SimPy or vLLM at module level. What a policy author needs is
exported here (docs/writing-a-policy.md): the interface and its state types, the waiting queues,
StepPlan (one step's token budget, KV blocks and preemptions) with its victim pickers, typed
parameters and the registry. The invariant checker needs the engine, so it lives on the
simulator side: ``simulator.policycheck.check_policy``.
"""

from scheduler.base import (NoParams, Policy, PolicyError, PolicyViolation, QueuedPolicy,
                            make_policy, param, param_docs, plugin_errors, policy_class,
                            policy_names, register)
from scheduler.kvbudget import watermark_blocks
from scheduler.plan import (VICTIMS, StepPlan, arrival_order, check_whole_prompt_budget,
                            latest_admitted, latest_arrival)
from scheduler.queues import FCFSQueue, PriorityQueue
from scheduler.state import Decision, ReplicaSpec, ReplicaView, RequestState, Status

__all__ = [
    "VICTIMS", "Decision", "FCFSQueue", "NoParams", "Policy", "PolicyError", "PolicyViolation",
    "PriorityQueue", "QueuedPolicy", "ReplicaSpec", "ReplicaView", "RequestState", "Status",
    "StepPlan", "arrival_order", "check_whole_prompt_budget", "latest_admitted",
    "latest_arrival", "make_policy", "param", "param_docs", "plugin_errors", "policy_class",
    "policy_names", "register", "watermark_blocks",
]
