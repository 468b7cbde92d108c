"""servesim's simulator: time and state (run config, workload and hint building, the replica
loop, KV cache, metrics, outputs, cost models), sweeps and reports, the vLLM backend
(simulator.vllm) and the command line (simulator.cli). Rooms and import rules:
docs/architecture.md."""
