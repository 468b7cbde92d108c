"""The vLLM backend: the scheduler plug-in that runs servesim policies inside vLLM (plugin),
vLLM's real scheduler inside the simulator (loop), and the live-server client (bench).

This room sits above the simulator core and the policies: it imports them, they never import it.
Importing it registers the engine "vllm" (``servesim run --engine vllm``) with the core's engine
registry. vLLM itself is imported lazily, so the simulator runs without it."""

from simulator.engines import register_engine


def _vllm_in_the_loop(cfg, workload, policy, spec, progress=None):
    from simulator.vllm.loop import loop_engine
    return loop_engine(cfg, workload, policy, spec, progress)


register_engine("vllm", _vllm_in_the_loop)
