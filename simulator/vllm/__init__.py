"""The vLLM backend: the scheduler plug-in that runs servesim policies inside vLLM (plugin),
vLLM's real scheduler inside the simulator (loop), and the live-server client (bench).

This room sits above the simulator core and the policies: it imports them, they never import it.
vLLM itself is imported lazily, so the simulator runs without it."""
