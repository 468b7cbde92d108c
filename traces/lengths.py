"""Length distributions: how many prompt and output tokens each request has."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from traces.errors import WorkloadError


@dataclass(frozen=True)
class Fixed:
    value: int

    def __post_init__(self):
        if not isinstance(self.value, (int, np.integer)) or self.value < 1:
            raise WorkloadError(f"a token length must be an integer >= 1, got {self.value!r}")

    @property
    def mean(self) -> float:
        return float(self.value)

    @property
    def max(self) -> int:
        return int(self.value)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)

    def __str__(self):
        return str(self.value)


@dataclass(frozen=True)
class Uniform:
    """Integer lengths uniform on [low, high], both included."""

    low: int
    high: int

    def __post_init__(self):
        if self.low < 1 or self.high < self.low:
            raise WorkloadError(
                f"a uniform length range needs 1 <= low <= high, got {self.low}:{self.high}")

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    @property
    def max(self) -> int:
        return int(self.high)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, size=n, dtype=np.int64)

    def __str__(self):
        return f"{self.low}:{self.high}"


def parse_length(text: str | int, field: str = "length") -> Fixed | Uniform:
    """Parse a length flag: ``512`` (fixed) or ``128:1024`` (uniform, inclusive)."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return Fixed(int(text))
    m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", str(text))
    if not m:
        raise WorkloadError(
            f"{field}: expected a token count like 512 or a range like 128:1024, got {text!r}")
    low = int(m.group(1))
    try:
        return Fixed(low) if m.group(2) is None else Uniform(low, int(m.group(2)))
    except WorkloadError as e:
        raise WorkloadError(f"{field}: {e}") from None


class LengthDistribution:
    """Samples (prompt_tokens, output_tokens, labels or None) for n requests."""

    def sample(self, rng: np.random.Generator, n: int):
        raise NotImplementedError


@dataclass(frozen=True)
class IndependentLengths(LengthDistribution):
    prompt: Fixed | Uniform
    output: Fixed | Uniform

    def sample(self, rng, n):
        return self.prompt.sample(rng, n), self.output.sample(rng, n), None

    def describe(self) -> str:
        return f"prompt {self.prompt}, output {self.output}"


@dataclass(frozen=True)
class EmpiricalLengths(LengthDistribution):
    """(prompt, output) pairs drawn with replacement from observed data (a trace, a length file)."""

    prompts: np.ndarray
    outputs: np.ndarray
    source: str = "empirical"

    def __post_init__(self):
        if len(self.prompts) == 0 or len(self.prompts) != len(self.outputs):
            raise WorkloadError(f"{self.source}: empirical lengths need matching, non-empty lists")
        if np.min(self.prompts) < 1 or np.min(self.outputs) < 1:
            raise WorkloadError(f"{self.source}: empirical lengths must be >= 1 token")

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[int, int]], source: str = "empirical"):
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return cls(arr[:, 0], arr[:, 1], source)

    def sample(self, rng, n):
        idx = rng.integers(0, len(self.prompts), size=n)
        return self.prompts[idx], self.outputs[idx], None

    def describe(self) -> str:
        return f"sampled from {self.source} ({len(self.prompts)} pairs)"


@dataclass(frozen=True)
class RequestType:
    """One type of the paper's multi-type model: fixed prompt and output lengths, Poisson rate."""

    name: str
    prompt_tokens: int
    output_tokens: int
    rate: float

    def __post_init__(self):
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise WorkloadError(f"type {self.name}: prompt and output lengths must be >= 1")
        if not self.rate > 0:
            raise WorkloadError(f"type {self.name}: rate must be > 0, got {self.rate!r}")


def parse_type(text: str) -> RequestType:
    """Parse ``p512d20:8.4`` (prompt 512, output 20, 8.4 req/s), optionally ``name=p512d20:8.4``."""
    m = re.fullmatch(r"\s*(?:([\w.-]+)=)?p(\d+)d(\d+):([0-9.eE+-]+)\s*", text)
    if not m:
        raise WorkloadError(f"type: expected like p512d20:8.4 (prompt, output, rate), got {text!r}")
    try:
        rate = float(m.group(4))
    except ValueError:
        raise WorkloadError(f"type: rate must be a number, got {m.group(4)!r} in {text!r}")
    name = m.group(1) or f"p{m.group(2)}d{m.group(3)}"
    return RequestType(name, int(m.group(2)), int(m.group(3)), rate)


@dataclass(frozen=True)
class TypeMixture(LengthDistribution):
    """Each request is of type j with probability lambda_j / sum(lambda); labels name the type.

    With Poisson arrivals at the total rate this is exactly the superposition of independent
    Poisson streams of the paper's model.
    """

    types: tuple[RequestType, ...]

    def __post_init__(self):
        if not self.types:
            raise WorkloadError("a type mixture needs at least one type")
        names = [t.name for t in self.types]
        if len(set(names)) != len(names):
            raise WorkloadError(f"type names must be unique, got {names}")

    @property
    def total_rate(self) -> float:
        return sum(t.rate for t in self.types)

    def sample(self, rng, n):
        weights = np.array([t.rate for t in self.types]) / self.total_rate
        idx = rng.choice(len(self.types), size=n, p=weights)
        prompts = np.array([t.prompt_tokens for t in self.types], dtype=np.int64)[idx]
        outputs = np.array([t.output_tokens for t in self.types], dtype=np.int64)[idx]
        labels = np.array([t.name for t in self.types], dtype=object)[idx]
        return prompts, outputs, labels

    def describe(self) -> str:
        return ", ".join(f"{t.name} @ {t.rate:g}/s" for t in self.types)
