"""``servesim check POLICY``: run the invariant checker (simulator/policycheck.py) on a policy."""

from __future__ import annotations

import click

from simulator.cli import cli


@cli.command()
@click.argument("policy")
@click.option("-p", "--policy-param", "policy_param", multiple=True, metavar="KEY=VALUE",
              help="Policy parameter, repeatable.")
@click.option("--examples", default=50, show_default=True, type=click.IntRange(min=1),
              help="Workloads to draw.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Fixes the workloads drawn.")
def check(policy, policy_param, examples, seed):
    """Check a policy's invariants on drawn workloads (POLICY: a name or package.module:Class).

    Exit status 0 when they hold; 1 with the failure and the smallest workload found."""
    from simulator.config import parse_pairs
    from simulator.policycheck import check_policy
    from traces.errors import SimulationError
    params = parse_pairs(policy_param, "--policy-param")
    try:
        report = check_policy(policy, params, max_examples=examples, seed=seed)
    except ImportError as e:
        raise click.ClickException(str(e))
    except SimulationError as e:    # a broken invariant, a refused decision, a stall
        click.echo(f"servesim: check failed: {e}", err=True)
        for note in getattr(e, "__notes__", ()):
            click.echo(note, err=True)
        click.get_current_context().exit(1)
    click.echo(str(report))
