"""Block accounting inside one scheduling step, before the engine applies the decision."""

from __future__ import annotations

from scheduler.state import ReplicaView, RequestState


class StepKV:
    """Free KV blocks as a policy plans one iteration.

    ``need`` is the number of extra blocks a request needs to compute ``tokens`` more tokens;
    ``release`` returns a preempted request's blocks. Reserving (with the ``watermark`` blocks
    vLLM V0 keeps free when admitting new prefills) is StepPlan's, inlined on its hot path.
    """

    __slots__ = ("free", "block_size", "watermark", "_settle")

    def __init__(self, view: ReplicaView, watermark_blocks: int = 0):
        self.free = view.free_blocks
        self.block_size = view.spec.block_size
        self.watermark = watermark_blocks
        self._settle = view.settle_cache

    def need(self, req: RequestState, tokens: int) -> int:
        return max(0, req.blocks_to_take(tokens, self.block_size))

    def release(self, req: RequestState) -> None:
        # A block another live request holds stays in use (a prefix-cache block counts once).
        if self._settle is not None:        # shared blocks looked up lazily: bring them up
            self._settle(req)
        self.free += req.kv_blocks - req.shared_blocks


def watermark_blocks(num_blocks: int, fraction: float) -> int:
    return int(num_blocks * fraction)
