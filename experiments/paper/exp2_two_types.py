"""Experiment 2: two types, 70% p512d20 + 30% p512d50 (Poisson), total lambda 12..25: vLLM,
Sarathi (chunk 512) and Nested WAIT with 2 segments (output lengths unknown; their distribution
known), with WAIT (lengths known) for reference.

    python -m experiments.paper.exp2_two_types [--seeds 0 1] [--quick] [--jobs 2] [--cost C]

The lambda grid is chosen around the roofline fluid limit (23.9 req/s); under another --cost it
moves to the same fractions of that cost's limit.
"""

from __future__ import annotations

from experiments.paper.common import Policy, fluid_for_types, grid_for_types, parse_args, sweep

POLICIES = [Policy("vllm", "vllm"), Policy("sarathi", "sarathi", {"chunk_size": 512}),
            Policy("nested-wait", "nested-wait"), Policy("wait", "wait")]


def types(lam: float) -> list[str]:
    return [f"p512d20:{0.7 * lam:g}", f"p512d50:{0.3 * lam:g}"]


def main(argv=None):
    args = parse_args(__doc__, argv)
    if args.quick:
        lambdas, n = [12.0, 20.0], 300
    else:
        lambdas, n = [12.0, 14.0, 16.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.0], 4000
    lambdas = grid_for_types(lambdas, types(1.0), args.cost)
    eq, fit = fluid_for_types(types(1.0), args.cost)
    lam_max = eq.max_rate_scale
    mean_out = 0.7 * 20 + 0.3 * 50
    sweep("exp2", "Experiment 2: 70% p512d20 + 30% p512d50, Llama-2-7B / A100-80GB, "
          "C = 137,000", POLICIES, lambdas, lambda x: {"kind": "types", "types": types(x)}, n,
          args, bound=lambda x: mean_out * min(x, lam_max), x_max=lam_max,
          extra_md=f"Fluid fit: d0 = {fit.d0 * 1e3:.2f} ms, d1 = {fit.d1 * 1e6:.3f} us/KV token "
                   f"(max rel. error {fit.max_rel_error:.0%}).")


if __name__ == "__main__":
    main()
