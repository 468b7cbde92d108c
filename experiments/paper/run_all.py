"""Run the experiments in turn (1, 1b, 2, 3, 4) and report the wall time of each.

    python -m experiments.paper.run_all [--seeds 0 1] [--quick] [--jobs 2] [--cost C]

Every flag goes to every experiment; with ``--cost paper-linear`` (or ``profile``) the results go
to results/paper-linear/ (results/profile/) unless ``--out`` is given, and with ``--quick`` to
one new temporary folder.
"""

from __future__ import annotations

import sys
import time

from experiments.paper import (common, exp1_single_type, exp1b_baseline_budgets, exp2_two_types,
                               exp3_long_decode, exp4_mixed_lengths)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = common.arg_parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.quick and args.out is None:          # one folder for all the experiments
        argv += ["--out", str(common.quick_folder())]
    total = time.perf_counter()
    for mod in (exp1_single_type, exp1b_baseline_budgets, exp2_two_types, exp3_long_decode,
                exp4_mixed_lengths):
        t0 = time.perf_counter()
        mod.main(argv)
        print(f"{mod.__name__.rsplit('.', 1)[-1]}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"all experiments: {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
