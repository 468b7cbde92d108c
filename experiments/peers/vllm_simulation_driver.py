"""Run the seed authors' decode-only simulator (Luoxiaogan/vllm_simulation) on one workload file.

    python experiments/peers/vllm_simulation_driver.py --peer-dir /work/peers/vllm_simulation \\
        --requests W1/requests.csv --out /tmp/vs-out

What their ``experiments/run_advanced.py`` does, minus the plotting: their ``VLLMSimulator``
with their ``AdvancedPolicy`` (sacrifice + aggressive, the setting of their config/config.yaml,
vLLM's recompute), then their ``EventLogger.save_all`` writes their per-request, batch and event
CSVs (the counterpart of servesim's requests.csv and timeline.csv). Our code: it only imports
theirs from ``--peer-dir``, and nothing of theirs is copied here.

Their model has no prefill (requests arrive ready to decode) and prices a batch as
d0 + d1 * (KV tokens of the batch); we give it the fluid paper's own fit for llama-2-7b on an
A100 (experiments/paper/common.py: PAPER_D0_S, PAPER_D1_S) and servesim's KV capacity for that
model and GPU (117,648 tokens at 0.9 GPU memory utilisation), with a batch budget B as large as
the KV capacity (every running request decodes each step, as in their config).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
from pathlib import Path

# The fluid paper's fit, as experiments/paper/common.py (literal: the driver imports no servesim)
D0_S = 0.276 / 21        # = PAPER_D0_S
D1_S = 0.0115e-3 / 21    # = PAPER_D1_S
KV_CAPACITY = 117_648    # servesim's llama-2-7b / a100-80gb KV capacity at 0.9 utilisation


def config() -> dict:
    return {
        "system": {"M_total": KV_CAPACITY, "B": KV_CAPACITY, "d_0": D0_S, "d_1": D1_S},
        "control": {"queue_policy": "FCFS", "preemption_mode": "sacrifice",
                    "preemption_strategy": "aggressive", "allow_waiting_preempt": False,
                    "victim_policy": "LIFO"},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-dir", type=Path, required=True, help="extracted vllm_simulation")
    ap.add_argument("--requests", type=Path, required=True,
                    help="CSV: arrival_s, prompt_tokens, output_tokens")
    ap.add_argument("--out", type=Path, required=True, help="folder for their output CSVs")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.peer_dir))
    from control.advanced_policy import AdvancedPolicy
    from core.request import Request
    from simulation.event_logger import EventLogger
    from simulation.vllm_simulator import VLLMSimulator

    with open(args.requests, newline="") as f:
        requests = [Request(req_id=i, arrival_time=float(row["arrival_s"]),
                            prefill_length=int(row["prompt_tokens"]),
                            decode_length=int(row["output_tokens"]))
                    for i, row in enumerate(csv.DictReader(f))]
    cfg = config()
    # Their simulator prints a progress line every 100 batches: kept (it is their cost), unshown.
    with contextlib.redirect_stdout(io.StringIO()):
        results = VLLMSimulator(cfg, AdvancedPolicy(cfg["control"])).run(requests)
        EventLogger(str(args.out)).save_all(results)
    print(json.dumps({"requests": len(requests), "completed": results["completed_requests"],
                      "simulated_s": results["total_time"], "batches": results["total_batches"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
