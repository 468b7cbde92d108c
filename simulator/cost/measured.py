"""Measured iteration times as data: fit a linear cost to them, and score any cost model
against them shape by shape.

A measurement is a batch (``BatchShape``) and its time in seconds; repeated measurements of one
batch shape are summarised by their median (and min: on a shared machine the least disturbed
sample). Imports stay light (numpy), so a GPU machine with only PyTorch can run this too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from simulator.cost.base import BatchShape, CostModel
from simulator.cost.linear import TERMS, LinearFit, fit_linear


def shape_key(shape: BatchShape) -> tuple:
    return tuple(getattr(shape, s) for s in BatchShape.__slots__)


@dataclass(frozen=True)
class Measurement:
    label: str             # the grid point, e.g. "decode 8 x kv 256"
    shape: BatchShape      # the batch as measured (one representative sample)
    median_s: float
    min_s: float
    samples: int


def summarise(label_shape_times) -> list[Measurement]:
    """``(label, shape, seconds)`` samples -> one ``Measurement`` per label (its median-time
    sample's shape stands for the point: decode KV lengths drift by a token per step)."""
    groups: dict[str, list] = {}
    for label, shape, t in label_shape_times:
        groups.setdefault(label, []).append((t, shape))
    out = []
    for label, items in groups.items():
        items.sort(key=lambda x: x[0])
        times = [t for t, _ in items]
        out.append(Measurement(label, items[(len(items) - 1) // 2][1],
                               statistics.median(times), times[0], len(times)))
    return out


class MeasuredCost(CostModel):
    """The measured medians as a cost model over exactly the measured shapes."""

    name = "measured"

    def __init__(self, points: list[Measurement], statistic: str = "median"):
        self.points = points
        self._times = {shape_key(p.shape): getattr(p, f"{statistic}_s") for p in points}

    def iteration_time(self, shape: BatchShape) -> float:
        return self._times[shape_key(shape)]

    def batches(self) -> list[BatchShape]:
        return [p.shape for p in self.points]


def fit_measurements(points: list[Measurement], terms: tuple[str, ...] = TERMS,
                     statistic: str = "median") -> LinearFit:
    """Linear coefficients (>= 0) over the measured points, minimising relative errors: the
    calibration target is each shape's relative error, short decode steps as much as long
    prefills."""
    measured = MeasuredCost(points, statistic)
    return fit_linear(measured, measured.batches(), terms=terms, relative=True)


def relative_errors(points: list[Measurement], models: dict[str, CostModel],
                    statistic: str = "median") -> list[dict]:
    """One row per measured point: the measured min and median (ms), and each model's
    prediction (ms) with its error relative to the measured ``statistic`` (median or min)."""
    rows = []
    for p in points:
        row = {"point": p.label, "samples": p.samples, "measured_min_ms": p.min_s * 1e3,
               "measured_median_ms": p.median_s * 1e3}
        target = getattr(p, f"{statistic}_s")
        for name, model in models.items():
            pred = model.iteration_time(p.shape)
            row[f"{name}_ms"] = pred * 1e3
            row[f"{name}_error"] = (pred - target) / target
        rows.append(row)
    return rows


def error_summary(rows: list[dict], models) -> dict:
    """Per model: median and max |relative error| over the points."""
    out = {}
    for name in models:
        errs = sorted(abs(r[f"{name}_error"]) for r in rows)
        out[name] = {"median_abs_error": statistics.median(errs), "max_abs_error": errs[-1]}
    return out
