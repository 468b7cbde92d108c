"""The hooks an engine uses behind a policy's back (scheduler/base.py): ``on_requeue`` (a request
handed back to waiting: vLLM refused an admission or preempted it) and ``on_abort`` (a client
left), for the policies that keep their own structures: WAIT's per-type gates, Nested WAIT's
segments and boundary waiters, MC-SF's predictions. vLLM is not needed: the engine's part is
played by hand here; tests/test_vllm_adapter.py runs the same hooks inside vLLM's scheduler."""

from __future__ import annotations

from scheduler.base import make_policy
from scheduler.state import ReplicaSpec, ReplicaView, RequestState, Status
from simulator.cost.linear import LinearCost
from tests.fluid_helpers import hint
from traces.lengths import RequestType

TYPES = [RequestType("a", 10, 2, 1.0), RequestType("b", 10, 5, 1.0)]


def bound(name: str, params: dict, types=None):
    policy = make_policy(name, params)
    cost = LinearCost.paper(0.01, 1e-5)
    policy.bind(ReplicaSpec(num_blocks=10_000, block_size=1, max_model_len=4096, cost_model=cost,
                            workload_hint=hint(types, cost=cost) if types else None))
    return policy


def arrive(policy, rid: int, output: int, label: str | None = None) -> RequestState:
    req = RequestState(rid, 0.0, 10, output, label)
    policy.on_arrival(req)
    return req


def step(policy, now=0.0, resident=()):
    """One schedule call on an idle replica (or with ``resident`` holding KV); returns the ids
    admitted, marked resident as an engine would."""
    view = ReplicaView(policy.spec)
    view.now, view.resident = now, list(resident)
    decision = policy.schedule(view)
    admitted = [r for r, _ in decision.prefill if r.status is Status.WAITING]
    for r in admitted:
        r.status = Status.RESIDENT
    return [r.request_id for r in admitted]


def handed_back(policy, *reqs):
    """What the vLLM adapter does with admissions vLLM refused: waiting again, handed back in
    reverse order so that they end up in front in their original order."""
    for r in reversed(reqs):
        r.status, r.computed = Status.WAITING, 0
        policy.on_requeue(r)


def ids(queue):
    return [r.request_id for r in queue]


def test_wait_requeues_at_the_front_of_the_requests_own_gate():
    wait = bound("wait", {"thresholds": "2,2", "patience": 100.0}, TYPES)
    gate_a, gate_b = wait.gates
    a0, b1, a2, b3 = (arrive(wait, i, o, t) for i, (o, t) in
                      enumerate([(2, "a"), (5, "b"), (2, "a"), (5, "b")]))
    assert sorted(step(wait)) == [0, 1, 2, 3]           # both gates reached 2
    handed_back(wait, a2, b3)                           # vLLM admitted only a0 and b1
    assert (ids(gate_a.queue), ids(gate_b.queue)) == ([2], [3])
    arrive(wait, 4, 2, "a")
    handed_back(wait, a0)                               # a preemption: front of its gate
    assert (ids(gate_a.queue), ids(gate_b.queue)) == ([0, 2, 4], [3])
    # The next run of gate a starts with the requests handed back, in their order.
    assert step(wait, resident=[b1]) == [0, 2]


def test_wait_abort_leaves_every_structure_and_the_threshold_count():
    wait = bound("wait", {"thresholds": "2,2", "patience": 100.0}, TYPES)
    gate_a, gate_b = wait.gates
    _, b1, a2 = arrive(wait, 0, 2, "a"), arrive(wait, 1, 5, "b"), arrive(wait, 2, 2, "a")
    wait.on_abort(a2)                                   # waiting: out of gate a's entry
    assert ids(gate_a.queue) == [0] and 2 not in wait._gate_of
    assert step(wait) == []                             # gate a holds 1 < 2 again: closed
    b3 = arrive(wait, 3, 5, "b")
    assert sorted(step(wait)) == [1, 3]                 # gate b reached 2
    wait.on_abort(b1)                                   # resident: no queue holds it
    assert ids(gate_b.queue) == [] and 1 not in wait._gate_of
    assert 3 in wait._gate_of and b3.status is Status.RESIDENT


def test_nested_wait_requeues_a_boundary_waiter_at_the_front_of_the_prefill_queue():
    nested = bound("nested-wait", {"thresholds": "2,1", "patience": 100.0}, TYPES)
    prefill = nested.gates[0].queue
    r0, r1 = arrive(nested, 0, 5), arrive(nested, 1, 5)
    assert step(nested) == [0, 1]
    # r0 reached the boundary of segment 2 (2 tokens out) and waits there with its KV.
    r0.computed, r0.generated = 11, 2
    r1.computed, r1.generated = 10, 1
    assert step(nested, now=1.0, resident=[r0, r1]) == []
    assert nested._at_boundary[0] == (2, 1.0)
    arrive(nested, 2, 5)
    handed_back(nested, r0)                             # preempted: recompute from the start
    assert ids(prefill) == [0, 2]
    nested.on_abort(r0)                                 # ... and then the client left
    assert ids(prefill) == [2] and 0 not in nested._at_boundary
    nested.on_abort(r1)                                 # resident: only forgotten
    assert ids(prefill) == [2]


def test_mcsf_requeue_keeps_the_prediction_and_abort_forgets_it():
    def arrivals(requeue: bool):
        mcsf = bound("mcsf", {"predictor": "noisy", "noise_sigma": 1.0})
        reqs = [arrive(mcsf, i, 50) for i in range(3)]
        predicted = dict(mcsf.predicted)
        if requeue:
            mcsf.waiting.remove(reqs[1])                # admitted, then handed back
            handed_back(mcsf, reqs[1])
        arrive(mcsf, 3, 50)
        return mcsf, reqs, predicted

    plain, _, _ = arrivals(requeue=False)
    mcsf, reqs, before = arrivals(requeue=True)
    assert mcsf.predicted == plain.predicted            # same draws for r1 and for r3
    assert {k: mcsf.predicted[k] for k in before} == before
    assert sorted(ids(mcsf.waiting)) == [0, 1, 2, 3]
    mcsf.on_abort(reqs[2])
    assert sorted(ids(mcsf.waiting)) == [0, 1, 3] and 2 not in mcsf.predicted
    assert 2 not in step(mcsf) and not mcsf.waiting     # everything else admitted


def test_priority_queue_takes_back_a_removed_request_once():
    """MC-SF's skip scan and a client abort remove from the middle of the heap; a request
    removed then handed back must be queued once, in its key's place."""
    from scheduler.queues import PriorityQueue
    reqs = [RequestState(i, 0.0, 10, o) for i, o in enumerate([30, 10, 20])]
    q = PriorityQueue(key=lambda r: r.output_tokens)
    for r in reqs:
        q.append(r)
    q.remove(reqs[1])
    assert ids(q) == [2, 0] and len(q) == 2 and reqs[1] not in q
    q.prepend(reqs[1])
    assert ids(q) == [1, 2, 0] and len(q) == 3
    assert [q.pop().request_id for _ in range(3)] == [1, 2, 0] and not q
