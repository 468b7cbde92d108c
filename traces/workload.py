"""A workload: a table of requests sorted by arrival, plus a record of where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

from traces.arrivals import ArrivalProcess
from traces.errors import WorkloadError
from traces.lengths import LengthDistribution
from traces.prompt_text import TEXT_BLOCK_TOKENS
from traces.request import (ANSWER_OF, MOONCAKE_BLOCK, PROMPT_OF, PROMPT_TEXT, SYSTEM_PROMPT,
                            Request, TokenRuns)

COLUMNS = ("request_id", "arrival_s", "prompt_tokens", "output_tokens", "label")
# Independent random streams of one seed, by purpose: changing how lengths are drawn never moves
# the arrival times, and a trace replayed with generated arrivals gets the same times as a
# synthetic workload of the same seed.
STREAMS = ("arrivals", "lengths", "jitter", "sessions", "system_prompt")
# Extra columns that say which prompt tokens requests share (``Workload.prefix_columns``):
# Mooncake's hash_ids (one per 512 prompt tokens), the chained keys of a prompt text's 16-token
# blocks (traces/prompt_text.py), a synthetic shared system prompt's tokens at the head of the
# prompt (0: none), and the session a request is a turn of (-1: none; a turn's prompt repeats
# the session's previous prompt and answer, rows in turn order).
HASH_IDS, TEXT_BLOCKS = "hash_ids", "text_blocks"
SYSTEM_PROMPT_TOKENS, SESSION = "system_prompt_tokens", "session_id"
PREFIX_COLUMNS = (HASH_IDS, TEXT_BLOCKS, SYSTEM_PROMPT_TOKENS, SESSION)
# A session turn's think time: it arrives this long after the previous turn completes.
THINK_S = "think_s"
MOONCAKE_BLOCK_TOKENS = 512


def stream_rng(seed: int, stream: str) -> np.random.Generator:
    """The generator of one named stream of ``seed`` (child ``STREAMS.index(stream)``)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise WorkloadError(f"seed must be an integer >= 0, got {seed!r}")
    child = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))[STREAMS.index(stream)]
    return np.random.default_rng(child)


@dataclass
class Workload:
    """Requests as one table (columns ``COLUMNS`` plus any extras a loader keeps).

    Columnar so that million-request traces stay compact and transformations are vectorised; the
    simulator iterates it as ``Request`` records. ``meta`` records the source and every
    transformation applied, and ends up in the run's summary.
    """

    frame: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        missing = [c for c in COLUMNS if c not in self.frame.columns]
        if missing:
            raise WorkloadError(f"workload table lacks columns {missing}")

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def prefix_columns(self) -> tuple[str, ...]:
        """The columns that give its requests a shared prefix (``PREFIX_COLUMNS``)."""
        return tuple(c for c in PREFIX_COLUMNS if c in self.frame.columns)

    def requests(self) -> Iterator[Request]:
        f = self.frame
        labels = f["label"].to_numpy(dtype=object)
        rows = zip(f["request_id"].to_numpy(), f["arrival_s"].to_numpy(),
                   f["prompt_tokens"].to_numpy(), f["output_tokens"].to_numpy(), labels)
        prefixes = self._prefixes() if self.prefix_columns else None
        follows = self._follows() if SESSION in f else None
        for rid, t, p, o, lab in rows:
            after, think, session = next(follows) if follows is not None else (None, 0.0, None)
            yield Request(int(rid), float(t), int(p), int(o), None if lab is None else str(lab),
                          None if prefixes is None else next(prefixes), after, think, session)

    def _follows(self) -> Iterator[tuple[int | None, float, int | None]]:
        """Per request, the previous turn of its session (None: none), its think time and its
        session (None: none)."""
        f = self.frame
        think = f[THINK_S].to_numpy() if THINK_S in f else np.zeros(len(f))
        last: dict[int, int] = {}
        for rid, session, t in zip(f["request_id"].to_numpy(), f[SESSION].to_numpy(), think):
            session = int(session)
            previous = last.get(session) if session >= 0 else None
            if session >= 0:
                last[session] = int(rid)
            yield previous, float(t), session if session >= 0 else None

    def _prefixes(self) -> Iterator[TokenRuns]:
        """Each request's ``TokenRuns``, in table order, from its prefix columns."""
        f = self.frame
        n = len(f)
        none = np.full(n, None, dtype=object)
        hash_ids = f[HASH_IDS].to_numpy(dtype=object) if HASH_IDS in f else none
        text_ids = f[TEXT_BLOCKS].to_numpy(dtype=object) if TEXT_BLOCKS in f else none
        system = f[SYSTEM_PROMPT_TOKENS].to_numpy() if SYSTEM_PROMPT_TOKENS in f else \
            np.zeros(n, dtype=np.int64)
        sessions = f[SESSION].to_numpy() if SESSION in f else np.full(n, -1)
        last_turn: dict[int, tuple[tuple, int, int, int]] = {}   # session -> its last turn
        for rid, prompt, output, ids, text, sys_len, session in zip(
                f["request_id"].to_numpy(), f["prompt_tokens"].to_numpy(),
                f["output_tokens"].to_numpy(), hash_ids, text_ids, system, sessions):
            rid, prompt, session = int(rid), int(prompt), int(session)
            runs: list = []
            previous = last_turn.get(session) if session >= 0 else None
            if previous is not None:
                # This turn's prompt: the previous turn's prompt and answer, then a new message.
                prev_runs, prev_id, prev_own, prev_output = previous
                runs.extend(prev_runs)
                if prev_own > 0:
                    runs.append((PROMPT_OF, prev_id, prev_own))
                runs.append((ANSWER_OF, prev_id, prev_output))
            elif sys_len > 0:
                runs.append((SYSTEM_PROMPT, 0, int(sys_len)))
            elif ids is not None and len(ids):
                runs.extend((MOONCAKE_BLOCK, int(h), MOONCAKE_BLOCK_TOKENS) for h in ids)
            elif text is not None and len(text):
                runs.extend((PROMPT_TEXT, int(k), TEXT_BLOCK_TOKENS) for k in text)
            runs = _clip(runs, prompt)
            if session >= 0:
                last_turn[session] = (tuple(runs), rid, prompt - sum(r[2] for r in runs),
                                      int(output))
            yield TokenRuns(tuple(runs))

    @classmethod
    def from_arrays(cls, arrival_s, prompt_tokens, output_tokens, labels=None,
                    meta: dict | None = None, extra: dict | None = None) -> "Workload":
        n = len(arrival_s)
        frame = pd.DataFrame({
            "request_id": np.arange(n, dtype=np.int64),
            "arrival_s": np.asarray(arrival_s, dtype=np.float64),
            "prompt_tokens": np.asarray(prompt_tokens, dtype=np.int64),
            "output_tokens": np.asarray(output_tokens, dtype=np.int64),
            "label": pd.Series(labels if labels is not None else [None] * n, dtype=object),
        })
        for k, v in (extra or {}).items():
            frame[k] = v
        return cls(frame, dict(meta or {}))

    @classmethod
    def from_requests(cls, requests: list[Request], meta: dict | None = None) -> "Workload":
        frame = pd.DataFrame(
            [(r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens, r.label)
             for r in requests], columns=list(COLUMNS))
        frame = frame.astype({"request_id": "int64", "arrival_s": "float64",
                              "prompt_tokens": "int64", "output_tokens": "int64"})
        frame["label"] = frame["label"].astype(object)
        return cls(frame.sort_values("arrival_s", kind="stable").reset_index(drop=True),
                   dict(meta or {}))

    def summary(self) -> dict:
        """Count, span, mean rate (requests/s) and mean lengths. With sessions, whose turns all
        carry the session's start time, the rate is the sessions' start rate times their mean
        number of turns (the requests a stable server is offered per second; what a policy
        planning with an arrival rate needs), and ``session_rate`` is the start rate."""
        f = self.frame
        span = float(f["arrival_s"].iloc[-1] - f["arrival_s"].iloc[0]) if len(f) > 1 else 0.0
        rate = (len(f) - 1) / span if span > 0 else None
        sessions = {}
        if SESSION in f:
            n = int(f[SESSION].nunique())
            starts = (n - 1) / span if span > 0 and n > 1 else None
            rate = starts * len(f) / n if starts else None
            sessions = {"session_rate": starts}
        return {
            "requests": len(f),
            "span_s": span,
            "mean_rate": rate,
            **sessions,
            "mean_prompt_tokens": float(f["prompt_tokens"].mean()) if len(f) else None,
            "mean_output_tokens": float(f["output_tokens"].mean()) if len(f) else None,
        }


def _clip(runs: list, tokens: int) -> list:
    """The runs cut to the first ``tokens`` tokens (a trace's last 512-token block is partial;
    a truncated prompt keeps its head)."""
    out, total = [], 0
    for ns, key, n in runs:
        if total + n >= tokens:
            if tokens > total:
                out.append((ns, key, tokens - total))
            return out
        out.append((ns, key, n))
        total += n
    return out


def synthesize(arrival: ArrivalProcess, lengths: LengthDistribution, seed: int,
               num_requests: int | None = None, duration_s: float | None = None) -> Workload:
    """Generate a seeded synthetic workload.

    Arrivals and lengths draw from independent child streams of one seed, so changing the length
    distribution leaves the arrival times unchanged (and vice versa): comparisons stay paired.
    """
    times = arrival.sample(stream_rng(seed, "arrivals"), n=num_requests, until=duration_s)
    prompts, outputs, labels = lengths.sample(stream_rng(seed, "lengths"), len(times))
    meta = {
        "source": "synthetic",
        "arrival": arrival.name,
        "mean_rate": arrival.mean_rate,
        "lengths": lengths.describe() if hasattr(lengths, "describe") else type(lengths).__name__,
        "seed": int(seed),
    }
    return Workload.from_arrays(times, prompts, outputs, labels, meta=meta)
