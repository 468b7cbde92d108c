"""Synthetic prefix sharing: a system prompt some requests start with, and multi-turn sessions
whose turns arrive in closed loop.

- ``system_prompt``: each request (with sessions: each session, on all its turns) carries,
  with probability ``share`` (seeded), one shared system prompt of ``tokens`` tokens ahead of
  its own prompt (its prompt grows by that much).
- ``synthesize_sessions``: sessions start at the arrival process's times; turn 1's prompt is a
  drawn message, turn k's prompt is turn k-1's prompt + its answer + a new drawn message (so it
  shares a prefix with everything the session said before). A turn after the first arrives a
  think time (exponential, mean ``think_time_s``, seeded) after the previous turn's answer
  completes: the engine releases it then (closed loop, as chat and agent clients behave), and
  its ``arrival_s`` in the table is only the session's start.
"""

from __future__ import annotations

import numpy as np

from traces.arrivals import ArrivalProcess
from traces.errors import WorkloadError
from traces.lengths import LengthDistribution
from traces.transforms import _derive
from traces.workload import SESSION, SYSTEM_PROMPT_TOKENS, THINK_S, Workload, stream_rng


def system_prompt(w: Workload, tokens: int, share: float, seed: int) -> Workload:
    """``w`` with a shared system prompt of ``tokens`` tokens on a ``share`` of its requests;
    with sessions, on a ``share`` of its sessions, every turn of which carries it (turn k's
    prompt holds turn 1's). Arrivals are unchanged, and so is the workload's rate."""
    if not (isinstance(tokens, (int, np.integer)) and tokens >= 1):
        raise WorkloadError(f"system prompt length must be an integer >= 1, got {tokens!r}")
    if not 0 <= share <= 1:
        raise WorkloadError(f"system prompt share must be in [0, 1], got {share!r}")
    frame = w.frame.copy()
    record = {"op": "system_prompt", "tokens": int(tokens), "share": float(share)}
    if SESSION in frame:
        session = frame[SESSION].to_numpy()
        picked = stream_rng(seed, "system_prompt").random(int(session.max()) + 1) < share
        carries = picked[session]
        record["sessions_carried"] = int(picked[np.unique(session)].sum())
    else:
        carries = stream_rng(seed, "system_prompt").random(len(w)) < share
    frame[SYSTEM_PROMPT_TOKENS] = np.where(carries, int(tokens), 0).astype(np.int64)
    frame["prompt_tokens"] = frame["prompt_tokens"] + frame[SYSTEM_PROMPT_TOKENS]
    record.update(carried=int(carries.sum()), seed=int(seed))   # carried: requests
    return _derive(w, frame, record, restamp=False)


def synthesize_sessions(arrival: ArrivalProcess, lengths: LengthDistribution, seed: int,
                        num_requests: int, turns: int, think_time_s: float) -> Workload:
    """``num_requests // turns`` sessions of ``turns`` turns (see the module's docstring)."""
    if turns < 2 or num_requests < turns:
        raise WorkloadError(f"sessions need >= 2 turns and at least one session's requests "
                            f"(turns {turns}, requests {num_requests})")
    if not think_time_s >= 0:
        raise WorkloadError(f"think time must be >= 0 seconds, got {think_time_s!r}")
    sessions = num_requests // turns
    starts = arrival.sample(stream_rng(seed, "arrivals"), n=sessions)
    messages, outputs, labels = lengths.sample(stream_rng(seed, "lengths"), sessions * turns)
    think = stream_rng(seed, "sessions").exponential(think_time_s, size=sessions * turns) \
        if think_time_s > 0 else np.zeros(sessions * turns)
    prompts = np.empty(sessions * turns, dtype=np.int64)
    for s in range(sessions):
        context = 0
        for k in range(turns):
            i = s * turns + k
            prompts[i] = context + int(messages[i])
            context = prompts[i] + int(outputs[i])
    turn = np.tile(np.arange(turns), sessions)
    think[turn == 0] = 0.0
    # The arrival process starts sessions: the requests offered per second are its rate times
    # the turns (Workload.summary measures the same way).
    rate = arrival.mean_rate
    meta = {"source": "synthetic", "arrival": arrival.name,
            "mean_rate": None if rate is None else rate * turns, "session_rate": rate,
            "lengths": f"sessions of {turns} turns, messages "
                       f"{lengths.describe() if hasattr(lengths, 'describe') else lengths}",
            "sessions": {"count": sessions, "turns": turns, "think_time_s": think_time_s,
                         "closed_loop": True},
            "seed": int(seed)}
    return Workload.from_arrays(np.repeat(starts, turns), prompts, outputs, labels, meta=meta,
                                extra={SESSION: np.repeat(np.arange(sessions), turns),
                                       THINK_S: think})
