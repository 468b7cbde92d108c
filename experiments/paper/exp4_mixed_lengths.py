"""Experiment 4: mixed lengths from real data. ShareGPT (prompt + output <= 4096, the model's
context) with Poisson arrivals, and the Azure LLM inference conversation trace (its own arrivals,
native and scaled): Nested WAIT with L in {1, 2, 5, 10} equal-width segments against vLLM,
Sarathi (chunk 512) and MC-SF.

    python -m experiments.paper.exp4_mixed_lengths [--seeds 0 1] [--quick] [--jobs 2]
"""

from __future__ import annotations

from experiments.paper.common import Policy, arg_parser, sweep

POLICIES = [Policy("vllm", "vllm"), Policy("sarathi", "sarathi", {"chunk_size": 512}),
            Policy("mcsf", "mcsf")] + \
    [Policy(f"nested-wait L={L}", "nested-wait", {"segments": L}) for L in (1, 2, 5, 10)]


def main(argv=None):
    args = arg_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    if args.quick:
        rates, n_sg, speeds, n_az = [1.5], 100, [1.0], 300
    else:
        rates, n_sg, speeds, n_az = [1.0, 1.5, 2.0, 2.5], 800, [0.5, 0.75, 1.0, 1.25], 3000
    sweep("exp4_sharegpt", "Experiment 4a: ShareGPT lengths (<= 4096 tokens), Poisson arrivals",
          POLICIES, rates, lambda x: {"kind": "sharegpt", "rate": x, "max_total": 4096}, n_sg,
          args, horizons=False)
    # The trace is one sample path: one seed is enough (the policies are deterministic).
    args.seeds = args.seeds[:1]
    sweep("exp4_azure", f"Experiment 4b: Azure conv trace, first {n_az} requests, arrival times "
          "divided by the rate scale (1 = native, 5.5 req/s)", POLICIES, speeds,
          lambda x: {"kind": "azure", "speedup": x}, n_az, args, x_label="rate scale",
          horizons=False)


if __name__ == "__main__":
    main()
