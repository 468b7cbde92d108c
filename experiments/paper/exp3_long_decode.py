"""Experiment 3: long decodes, p512d1000 (Poisson), lambda 0.5..5: latency and evictions
(restarts) of vLLM, Sarathi (chunk 512) and WAIT; vLLM also with the paper's restart-on-eviction
model.

    python -m experiments.paper.exp3_long_decode [--seeds 0 1] [--quick] [--jobs 2] [--cost C]

The lambda grid is the paper's range around the roofline fluid limit (1.83 req/s); under another
--cost it moves to the same fractions of that cost's limit.
"""

from __future__ import annotations

from experiments.paper.common import Policy, fluid_for_types, grid_for_types, parse_args, sweep

POLICIES = [Policy("vllm", "vllm"), Policy("sarathi", "sarathi", {"chunk_size": 512}),
            Policy("wait", "wait"),
            Policy("vllm (restart)", "vllm", config={"preemption": "restart"})]


def main(argv=None):
    args = parse_args(__doc__, argv)
    if args.quick:
        lambdas, n = [0.5, 3.0], 40
    else:
        lambdas, n = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0], 500
    lambdas = grid_for_types(lambdas, ["p512d1000:1"], args.cost)
    eq, fit = fluid_for_types(["p512d1000:1"], args.cost)
    lam_max = eq.max_rate_scale
    sweep("exp3", "Experiment 3: p512d1000, Llama-2-7B / A100-80GB, C = 137,000", POLICIES,
          lambdas, lambda x: {"kind": "types", "types": [f"p512d1000:{x}"]}, n, args,
          bound=lambda x: 1000 * min(x, lam_max), x_max=lam_max,
          extra_md=f"Fluid fit: d0 = {fit.d0 * 1e3:.2f} ms, d1 = {fit.d1 * 1e6:.3f} us/KV token; "
                   f"memory binds first here (M* reaches C at lambda = {lam_max:.2f}).")


if __name__ == "__main__":
    main()
