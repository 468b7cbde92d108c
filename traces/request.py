"""The request record every workload source produces and the simulator consumes."""

from __future__ import annotations

from dataclasses import dataclass

# Namespaces of a token run's content key (``TokenRuns``): what made the tokens. Integers, so
# that block hashes built from them are the same in every process (Python randomises str hashes).
MOONCAKE_BLOCK = 0     # a Mooncake hash_id: one 512-token block of a prompt (chained)
SYSTEM_PROMPT = 1      # a synthetic system prompt shared by the requests that carry it
PROMPT_OF = 2          # request N's own prompt tokens (those no run covers): key N
ANSWER_OF = 3          # request N's output tokens: key N (a session's next turn repeats them)
PROMPT_TEXT = 4        # a 16-token block of prompt text, keyed by its chained text hash


@dataclass(frozen=True, slots=True)
class TokenRuns:
    """What a request's prompt is made of, as far as sharing a KV prefix goes, without token
    ids: consecutive runs ``(namespace, key, length)`` of content that other prompts may repeat
    (two runs with the same namespace and key hold the same tokens). Prompt tokens after the
    runs are the request's own (``PROMPT_OF`` its id); its output tokens are ``ANSWER_OF`` its id.
    """

    runs: tuple[tuple[int, int, int], ...]

    @property
    def tokens(self) -> int:
        return sum(n for _, _, n in self.runs)


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as it arrives at the server.

    ``arrival_s`` is seconds from the start of the workload; ``prompt_tokens`` is the prefill length
    and ``output_tokens`` the number of tokens the request will generate (ignore-EOS semantics, as in
    ``vllm bench serve``). ``label`` names the request's class or type when the workload has them.
    ``prefix`` says which of its prompt tokens other requests share (None: none are shared).
    A session's later turn ``follows`` its previous turn (a request id): it arrives ``think_s``
    seconds after that one ends (closed loop), whatever ``arrival_s`` says. ``session`` names
    the session a request is a turn of (None: none), as a session-affine router reads it.
    """

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    label: str | None = None
    prefix: TokenRuns | None = None
    follows: int | None = None
    think_s: float = 0.0
    session: int | None = None
