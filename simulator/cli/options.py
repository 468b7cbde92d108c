"""The run flags, shared by every command that takes a run configuration (run, fluid, capacity...).

Each flag is derived from its field's declaration in simulator/config.py: name, help, default
shown in the help, metavar, and the check of its value (``Declared.coerce``, the same as for a
config file's key).
"""

from __future__ import annotations

import click

from simulator.config import FIELDS, build_config, load_config_file
from simulator.errors import ConfigError
from simulator.fields import Declared

# The groups of fields that describe the simulated replicas and their policy, not the workload.
REPLICA_GROUPS = ("policy", "replica", "cluster")


class FieldValue(click.ParamType):
    """A flag's text checked as its run field (one line naming the flag when it is wrong)."""

    def __init__(self, field: Declared):
        self.field = field
        self.name = {int: "integer", float: "float"}.get(field.kind, "text")

    def convert(self, value, param, ctx):
        if isinstance(value, str) and self.field.info.from_cli is None:
            return self.field.coerce(value, self.field.label)
        return value


def _option(f: Declared):
    """The click option of one run field."""
    info = f.info
    kw: dict = {"help": info.help}
    flags = f.flags
    if f.kind is bool:
        kw["is_flag"] = True
        kw["default"] = None
        if _has_off_switch(f):     # click's on/off pair: "--x/--no-x"
            flags = ("/".join(flags),)
    elif f.repeatable:
        kw.update(multiple=True, metavar=info.metavar or "KEY=VALUE")
    else:
        # Every single-valued flag is collected as a list, so that a flag given twice is refused
        # (click would keep the last one silently).
        kw["multiple"] = True
        kw["type"] = click.Choice(info.choices) if info.choices else FieldValue(f)
        if info.metavar:
            kw["metavar"] = info.metavar
        shown = f.describe_default()
        if shown is not None:
            kw["help"] = f"{info.help} [default: {shown}]"
    return click.option(*flags, f.dest, **kw)


def _flag_fields() -> list[Declared]:
    return [f for f in FIELDS.values() if f.flags]


_CONFIG_OPTION = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                              help="YAML or TOML file with run fields; flags override it.")


def run_options(f):
    """Decorate a click command with every run flag."""
    for field in reversed(_flag_fields()):
        f = _option(field)(f)
    return _CONFIG_OPTION(f)


# Flags that describe the simulated replica and its policy rather than the workload.
REPLICA_FLAGS = tuple(f.dest for f in _flag_fields() if f.group in REPLICA_GROUPS)


def workload_options(f, keep: tuple[str, ...] = ()):
    """Decorate a click command with the run flags that describe the workload (config file,
    arrivals, lengths, seed, SLOs...), and those of REPLICA_FLAGS named in ``keep``, for
    commands that drive a real server."""
    for field in reversed(_flag_fields()):
        if field.group not in REPLICA_GROUPS or field.dest in keep:
            f = _option(field)(f)
    return _CONFIG_OPTION(f)


def config_from_options(opts: dict, extra: dict | None = None):
    """Build a validated RunConfig from the run flags (and an optional config file) in a
    command's ``opts``; its own options are not run flags and are ignored."""
    file_values, overrides = option_fields(opts)
    overrides.update(extra or {})
    return build_config(file_values, overrides)


def option_fields(opts: dict) -> tuple[dict, dict]:
    """(the config file's values, the run fields the flags give) of the run flags in ``opts``
    (flags not given are left out)."""
    file_values = load_config_file(opts["config_file"]) if opts.get("config_file") else {}
    overrides = {}
    for f in _flag_fields():
        raw = opts.get(f.dest)
        if raw is None or raw == () or (raw is False and not _has_off_switch(f)):
            continue
        if not f.repeatable:
            raw = _once(f, raw)
        value = f.info.from_cli(raw, f.flag) if f.info.from_cli else raw
        overrides[f.name] = f.coerce(value, f.label)
    # A flag overrides the file's field, and also the file's alternative to it.
    if "duration" in overrides and "num_requests" in file_values:
        file_values.pop("num_requests")
    if "num_requests" in overrides and "duration" in file_values:
        file_values.pop("duration")
    return file_values, overrides


def _has_off_switch(f: Declared) -> bool:
    """A boolean flag declared with its off switch, ``("--x", "--no-x")``: its False is given,
    not a default."""
    return f.kind is bool and len(f.flags) == 2 and f.flags[1] == "--no-" + f.flags[0][2:]


def _once(f: Declared, raw):
    """The one value of a single-valued flag (a command's own option gives it bare)."""
    if not isinstance(raw, (tuple, list)):
        return raw
    if len(raw) > 1:
        raise ConfigError(f"{f.flag} given {len(raw)} times ({', '.join(map(str, raw))}); "
                          f"give it once")
    return raw[0]


def nonempty_path(ctx, param, value):
    """Click callback: an empty path is a mistake (it would write nothing, or into the working
    directory), not a request for the default."""
    if value is not None and not str(value).strip():
        raise click.BadParameter("may not be empty (leave the option out for the default)")
    return value


class Number(click.ParamType):
    """A command's own numeric option, checked as a run field's number is: NaN, infinities,
    integers beyond int64 and values outside the bounds are one line naming the flag."""

    def __init__(self, kind: type = float, low: float | None = None, high: float | None = None,
                 low_open: bool = False):
        self.kind, self.low, self.high, self.low_open = kind, low, high, low_open
        self.name = "integer" if kind is int else "float"

    def convert(self, value, param, ctx):
        from simulator.fields import check_number, coerce_number
        where = max(param.opts, key=len) if param is not None else "value"
        number = coerce_number(value, self.kind, where)
        check_number(number, where, self.kind, self.low, self.high, self.low_open)
        return number
