"""The ``servesim`` command line.

Each sub-command lives in its own module and registers itself on the ``cli`` group; ``main``
turns every servesim error into one line on stderr and the exit status its class carries
(traces/errors.py: 2 for bad input, 3 for a simulation that cannot go on; never a traceback).
"""

from __future__ import annotations

import re
import sys
import warnings

import click

from traces.errors import ServesimError

MAX_ERROR_CHARS = 400
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


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
    """Run a command. Python warnings raised meanwhile (a library's RuntimeWarning) are held
    back and shown after a command that succeeds; a command that fails prints only its one
    error line, so a warning never stands before or after it."""
    with warnings.catch_warnings(record=True) as held:
        _register_commands()
        rc, error = _run(argv)
    if error is not None:
        click.echo(error_line(error), err=True)
        return rc
    for w in held:
        click.echo(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line),
                   err=True, nl=False)
    return rc


def _run(argv: list[str] | None) -> tuple[int, str | None]:
    """The exit status and, for a failure, its message."""
    try:
        # Without standalone mode click returns (not raises) a command's ctx.exit(code).
        rc = cli.main(args=argv, prog_name="servesim", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code, None
    except click.Abort:
        return 130, "servesim: aborted"
    except click.ClickException as e:   # bad flag or value: one line, exit 2
        return 2, f"servesim: error: {e.format_message()}"
    except ServesimError as e:          # one line; the exit status is the error's class's
        return e.exit_code, f"servesim: {e.kind}: {e}"
    except KeyboardInterrupt:
        return 130, "servesim: interrupted"
    except BrokenPipeError:
        return 0, None
    return (rc if isinstance(rc, int) else 0), None


def error_line(message: str) -> str:
    """The one place a failure's message becomes its line on stderr: control characters and
    line breaks (from a file name or a quoted value) become spaces, and the line is cut to
    ``MAX_ERROR_CHARS``, so a 200 MB field can never be echoed whole."""
    from traces.files import cut
    return cut(_CONTROL.sub(" ", message).strip(), MAX_ERROR_CHARS)


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
