"""Experiment 4: mixed lengths from real data. ShareGPT (prompt + output <= 4096, the model's
context) with Poisson arrivals, and the Azure LLM inference conversation trace (its own arrivals,
native and scaled): Nested WAIT with L in {1, 2, 5, 10} equal-width segments against vLLM,
Sarathi (chunk 512) and MC-SF.

    python -m experiments.paper.exp4_mixed_lengths [--seeds 0 1] [--quick] [--jobs 2] [--cost C]

The rate grids are chosen around the roofline fluid limits (2.5 req/s for ShareGPT; rate scale
1.03 for the trace); under another --cost they move to the same fractions of that cost's limits.
"""

from __future__ import annotations

from experiments.paper import data
from experiments.paper.common import (Policy, fluid_for_lengths, follow_fluid_limit,
                                      parse_args, sweep)

CONTEXT = 4096      # Llama-2-7B's context: longer requests are rejected by every policy

POLICIES = [Policy("vllm", "vllm"), Policy("sarathi", "sarathi", {"chunk_size": 512}),
            Policy("mcsf", "mcsf")] + \
    [Policy(f"nested-wait L={L}", "nested-wait", {"segments": L}) for L in (1, 2, 5, 10)]


def main(argv=None):
    args = parse_args(__doc__, argv)
    if args.quick:
        rates, n_sg, speeds, n_az = [1.5], 100, [1.0], 300
    else:
        rates, n_sg, speeds, n_az = [1.0, 1.5, 2.0, 2.5], 800, [0.5, 0.75, 1.0, 1.25], 3000
    sharegpt = data.sharegpt_lengths(CONTEXT)
    prompts, outputs, native = data.azure_conv_lengths(n_az, CONTEXT)

    def sg_limit(cost):             # req/s
        return fluid_for_lengths(sharegpt.prompts, sharegpt.outputs, cost)[0].max_rate_scale

    def az_limit(cost):             # rate scale of the trace's arrivals (served requests only)
        return fluid_for_lengths(prompts, outputs, cost)[0].max_rate_scale / native

    rates = follow_fluid_limit(rates, args.cost, sg_limit)
    speeds = follow_fluid_limit(speeds, args.cost, az_limit)
    sweep("exp4_sharegpt", "Experiment 4a: ShareGPT lengths (<= 4096 tokens), Poisson arrivals",
          POLICIES, rates, lambda x: {"kind": "sharegpt", "rate": x, "max_total": CONTEXT}, n_sg,
          args, horizons=False, x_max=sg_limit(args.cost))
    # The trace is one sample path: one seed is enough (the policies are deterministic).
    args.seeds = args.seeds[:1]
    sweep("exp4_azure", f"Experiment 4b: Azure conv trace, first {n_az} requests, arrival times "
          f"divided by the rate scale (1 = native, {native:.2f} req/s served)", POLICIES, speeds,
          lambda x: {"kind": "azure", "speedup": x}, n_az, args, x_label="rate scale",
          horizons=False, x_max=az_limit(args.cost))


if __name__ == "__main__":
    main()
