"""The request record every workload source produces and the simulator consumes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as it arrives at the server.

    ``arrival_s`` is seconds from the start of the workload; ``prompt_tokens`` is the prefill length
    and ``output_tokens`` the number of tokens the request will generate (ignore-EOS semantics, as in
    ``vllm bench serve``). ``label`` names the request's class or type when the workload has them.
    """

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    label: str | None = None
