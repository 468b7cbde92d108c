"""The ``servesim`` command line.

Each sub-command lives in its own module and registers itself on the ``cli`` group; ``main``
turns every servesim error into one line on stderr and the exit status its class carries
(traces/errors.py: 2 for bad input, 3 for a simulation that cannot go on; never a traceback).
"""

from __future__ import annotations

import sys

import click

from traces.errors import ServesimError


def stdout_console():
    """The console for a command's report on stdout.

    Rich wraps text and squeezes tables to 80 columns when stdout is not a terminal; piped or
    captured output keeps each line whole (so ``grep`` finds it) and gives tables room.
    """
    from rich.console import Console
    console = Console()
    return console if console.is_terminal else Console(width=160, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="servesim", prog_name="servesim")
def cli():
    """servesim: simulate LLM serving policies, replay traces, plug policies into vLLM."""


def main(argv: list[str] | None = None) -> int:
    _register_commands()
    try:
        # Without standalone mode click returns (not raises) a command's ctx.exit(code).
        rc = cli.main(args=argv, prog_name="servesim", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("servesim: aborted", err=True)
        return 130
    except click.ClickException as e:   # bad flag or value: one line, exit 2
        click.echo(f"servesim: error: {e.format_message()}", err=True)
        return 2
    except ServesimError as e:          # one line; the exit status is the error's class's
        click.echo(f"servesim: {e.kind}: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("servesim: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return rc if isinstance(rc, int) else 0


def _register_commands() -> None:
    """Import every module of this package; each registers its commands on ``cli``.

    A command that needs an optional extra (vLLM, Ray) imports it inside the command, so
    importing its module here stays cheap and cannot fail for lack of the extra.
    """
    import importlib
    import pkgutil

    import simulator.cli as package
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{mod.name}")


def entry() -> None:
    sys.exit(main())
