"""Is latency bounded? The finite-horizon test behind lambda* and the capacity search.

Criterion (stated once, used everywhere): split the arrival window at its midpoint and compare
the mean end-to-end latency of the requests that arrived in the second half with that of the
first half. ``latency_growth`` is that ratio; a run is *stable* when it is at most
``DEFAULT_GROWTH_LIMIT`` and every request completed.

Why 1.5: a queue that is stable sits at its stationary mean in both halves (ratio ~1, a little
above when the first half holds the warm-up from an empty system); an overloaded queue started
empty grows linearly, so the halves average 1/4 and 3/4 of the final backlog (ratio -> 3); at
critical load it grows like sqrt(t), ratio ~1.8. 1.5 separates the stable case from both. Near
the boundary the answer depends on the horizon (a load slightly under capacity needs a long run
to reach its stationary backlog), so lambda* from a finite run errs slightly low; measured on
M/D/1 (tests/test_capacity.py) with 20k requests per seed it lands within 3% of 1/D.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_GROWTH_LIMIT = 1.5


def half_means(requests: pd.DataFrame) -> tuple[float, float]:
    """(first-half, second-half) mean E2E latency in ms of completed requests, split at the
    midpoint of their arrival window (NaN for an empty half)."""
    done = requests[requests["status"] == "completed"]
    if len(done) < 2:
        return math.nan, math.nan
    arrival = done["arrival_s"].to_numpy()
    e2el = done["e2el_ms"].to_numpy()
    mid = (arrival.min() + arrival.max()) / 2
    first, second = e2el[arrival < mid], e2el[arrival >= mid]
    return (float(first.mean()) if len(first) else math.nan,
            float(second.mean()) if len(second) else math.nan)


def pooled_growth(halves: list[tuple[float, float]]) -> float:
    """Growth over several seeds: the ratio of the seeds' mean second-half to mean first-half
    latencies (pooling before dividing keeps one noisy seed from deciding alone)."""
    import numpy as np      # not at the top: servesim imports DEFAULT_GROWTH_LIMIT at start-up
    firsts = np.array([f for f, _ in halves], dtype=float)
    seconds = np.array([s for _, s in halves], dtype=float)
    ok = ~(np.isnan(firsts) | np.isnan(seconds))
    if not ok.any() or firsts[ok].mean() <= 0:
        return math.nan
    return float(seconds[ok].mean() / firsts[ok].mean())
