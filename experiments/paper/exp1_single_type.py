"""Experiment 1: one request type, prompt 512 / output 20 (p512d20), Poisson arrivals, lambda from
12 to 24 requests/s and finer near saturation; vLLM, Sarathi (chunk 512) and WAIT. Also the
low-load latency of WAIT's patience rule against the baselines.

    python -m experiments.paper.exp1_single_type [--seeds 0 1] [--quick] [--jobs 2] [--cost C]

The lambda grids are chosen around the roofline fluid limit (25.6 req/s); under another --cost
they move to the same fractions of that cost's limit (common.follow_fluid_limit).
"""

from __future__ import annotations

from experiments.paper.common import (Policy, Task, fluid_for_types, grid_for_types,
                                      markdown_table, parse_args, run_grid, summarize, sweep)

POLICIES = [Policy("vllm", "vllm"), Policy("sarathi", "sarathi", {"chunk_size": 512}),
            Policy("wait", "wait")]
PATIENCE = [Policy("vllm", "vllm"), Policy("sarathi", "sarathi", {"chunk_size": 512}),
            Policy("wait (patience 0.5 dT)", "wait", {"patience_factor": 0.5}),
            Policy("wait (patience 1 dT, default)", "wait"),
            Policy("wait (patience 4 dT)", "wait", {"patience_factor": 4.0}),
            Policy("wait (no patience: strict)", "wait", {"patience": 1e9})]


def main(argv=None):
    args = parse_args(__doc__, argv)
    if args.quick:
        lambdas, n, low, n_low = [12.0, 20.0, 24.0], 300, [6.0], 200
    else:
        lambdas = [float(x) for x in range(12, 25)] + [24.5, 25.0, 25.5, 26.0]
        n, low, n_low = 4000, [2.0, 6.0, 10.0], 1500
    lambdas, low = (grid_for_types(g, ["p512d20:1"], args.cost) for g in (lambdas, low))
    eq, fit = fluid_for_types(["p512d20:1"], args.cost)
    lam_max = eq.max_rate_scale

    def workload(x):
        return {"kind": "types", "types": [f"p512d20:{x}"]}

    df = run_grid([Task("exp1_patience", p, x, workload(x), s, n_low, cost=args.cost)
                   for x in low for p in PATIENCE for s in args.seeds], args.jobs)
    pat = summarize(df)
    extra = ("Low load, mean end-to-end latency (s) of WAIT's patience settings against the "
             "baselines (the strict rule waits for the full threshold however long it takes; "
             "after the last arrival every policy drains):\n\n"
             + markdown_table(pat, "mean_e2el_s", "{:.3f}"))
    sweep("exp1", "Experiment 1: p512d20 on Llama-2-7B / A100-80GB, C = 137,000 KV tokens",
          POLICIES, lambdas, workload, n, args, bound=lambda x: 20 * min(x, lam_max),
          x_max=lam_max,
          extra_md=f"Fluid fit to the {args.cost} cost: d0 = {fit.d0 * 1e3:.2f} ms, d1 = "
                   f"{fit.d1 * 1e6:.3f} us/KV token (max rel. error {fit.max_rel_error:.0%} over "
                   f"pipeline batches).\n\n" + extra)
    df.to_csv(args.out / "exp1_patience_runs.csv", index=False)


if __name__ == "__main__":
    main()
