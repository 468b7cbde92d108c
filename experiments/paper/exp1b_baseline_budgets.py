"""Experiment 1b: are the baselines of experiment 1 held back by their default step budgets rather
than by the cost model? p512d20 near the fluid limit: vLLM and Sarathi with vLLM's defaults
(4096 prefill tokens per step and chunk 512, 256 sequences) and with the budgets lifted (vLLM:
a prefill budget of the whole KV capacity; Sarathi: chunk 2048; both 2048 sequences), against
WAIT.

    python -m experiments.paper.exp1b_baseline_budgets [--seeds 0 1] [--quick] [--jobs 2] [--cost C]

Why: with the paper's linear cost an iteration pays a fixed 13 ms, so a baseline that moves at
most 512 (Sarathi) or 4096 (vLLM) prompt tokens per step is capped by its budget, not by memory;
WAIT has no such budget. This sweep separates the two effects. The grid is the upper part of
experiment 1's, following the cost's fluid limit in the same way.
"""

from __future__ import annotations

from experiments.paper.common import (KV_CAPACITY, Policy, fluid_for_types, grid_for_types,
                                      parse_args, sweep)

LIFTED_SEQS = 2048
POLICIES = [Policy("vllm", "vllm"),
            Policy("vllm (budget C)", "vllm", {"max_num_batched_tokens": KV_CAPACITY,
                                               "max_num_seqs": LIFTED_SEQS}),
            Policy("sarathi", "sarathi", {"chunk_size": 512}),
            Policy("sarathi (chunk 2048)", "sarathi", {"chunk_size": 2048,
                                                       "max_num_seqs": LIFTED_SEQS}),
            Policy("wait", "wait")]


def main(argv=None):
    args = parse_args(__doc__, argv)
    if args.quick:
        lambdas, n = [20.0, 25.0], 300
    else:
        lambdas, n = [16.0, 20.0, 22.0, 23.0, 24.0, 24.5, 25.0, 25.5], 4000

    lambdas = grid_for_types(lambdas, ["p512d20:1"], args.cost)
    lam_max = fluid_for_types(["p512d20:1"], args.cost)[0].max_rate_scale
    sweep("exp1b", "Experiment 1b: p512d20, baselines with default and lifted step budgets",
          POLICIES, lambdas, lambda x: {"kind": "types", "types": [f"p512d20:{x}"]}, n, args,
          bound=lambda x: 20 * min(x, lam_max), x_max=lam_max)


if __name__ == "__main__":
    main()
