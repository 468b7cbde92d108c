"""Declaring a run field once: its type, default, help, flag, bounds and checks.

``run_field`` puts a ``FieldInfo`` into a dataclass field's metadata; ``declared_fields`` reads
the dataclass back into ``Declared`` records, and everything else derives from them: the click
options (simulator/cli/options.py), the config-file keys and their checks, the sweep's field
list and the help defaults. ``Declared.coerce`` is the one check every value goes through,
whether it comes from a flag (text), a config file, a sweep axis or code.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from simulator.errors import ConfigError

INT64_MAX = 2**63 - 1
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


@dataclass(frozen=True)
class FieldInfo:
    group: str                            # policy, replica, workload, trace, run, output
    help: str
    flags: tuple[str, ...] | None = None  # None: --the-name; (): no shared run flag
    dest: str | None = None               # click parameter name (default: the field's name)
    low: float | None = None              # numbers: lower bound ...
    low_open: bool = False                # ... excluded (a positive number: low=0, low_open)
    high: float | None = None             # numbers: upper bound, included
    choices: tuple | None = None
    check: Callable[[Any, str], Any] | None = None      # a further check of the typed value
    from_cli: Callable[[Any, str], Any] | None = None   # a flag's values -> the field's value
    metavar: str | None = None
    show_default: bool = True
    repeatable: bool | None = None        # a flag given many times (default: mappings, lists)


def run_field(default: Any = dataclasses.MISSING, help: str = "", *, group: str,
              default_factory: Any = dataclasses.MISSING, **info) -> Any:
    """A dataclass field declared with everything the CLI, config files and sweeps need."""
    meta = {"run": FieldInfo(group=group, help=help, **info)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Declared:
    """One run field as declared: name, base type (bool, int, float, str, dict, list), whether
    None is allowed, default and ``FieldInfo``."""

    name: str
    kind: type
    optional: bool
    default: Any
    info: FieldInfo

    @property
    def flags(self) -> tuple[str, ...]:
        if self.info.flags is not None:
            return self.info.flags
        return ("--" + self.name.replace("_", "-"),)

    @property
    def flag(self) -> str | None:
        """The long flag, as error lines name it (None: the field has no run flag)."""
        return next((f for f in self.flags if f.startswith("--")), None)

    @property
    def label(self) -> str:
        """How an error line names the field given by its flag: ``kv_capacity (--kv-capacity)``."""
        return f"{self.name} ({self.flag})" if self.flag else self.name

    @property
    def dest(self) -> str:
        return self.info.dest or self.name

    @property
    def group(self) -> str:
        return self.info.group

    @property
    def repeatable(self) -> bool:
        if self.info.repeatable is not None:
            return self.info.repeatable
        return self.kind in (dict, list)

    def coerce(self, value: Any, where: str | None = None) -> Any:
        """``value`` checked against the declaration and converted to the field's type (a
        flag's text, a config file's number...); one ``ConfigError`` line naming ``where``
        (default: the field's name) otherwise."""
        where = where or self.name
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{where} may not be empty")
        value = _CONVERT[self.kind](value, where)
        if self.info.choices is not None and value not in self.info.choices:
            raise ConfigError(f"{where} must be one of: {', '.join(map(str, self.info.choices))}; "
                              f"got {value!r}")
        if self.kind in (int, float):
            check_number(value, where, self.kind, self.info.low, self.info.high,
                         self.info.low_open)
        if self.info.check is not None:
            value = self.info.check(value, where)
        return value

    def describe_default(self) -> str | None:
        """The default as help text shows it (None when it is derived or not worth showing)."""
        if not self.info.show_default or self.default is None or self.kind is bool or \
                self.kind in (dict, list):
            return None
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    def describe_type(self) -> str:
        if self.info.choices:
            return "one of " + ", ".join(map(str, self.info.choices))
        text = {bool: "true/false", int: "integer", float: "number", str: "text",
                dict: "mapping", list: "list"}[self.kind]
        if self.kind in (int, float) and (self.info.low is not None or self.info.high is not None):
            text += " " + bounds_text(self.kind, self.info.low, self.info.high, self.info.low_open)
        return text


def declared_fields(cls: type) -> dict[str, Declared]:
    """The ``Declared`` record of every ``run_field`` of a dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        info = f.metadata.get("run")
        if info is None:
            continue
        tp = hints[f.name]
        args = typing.get_args(tp)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if args else tp
        kind = typing.get_origin(base) or base
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        out[f.name] = Declared(f.name, kind, optional, default, info)
    return out


# ---------------------------------------------------------------------------------------------
# Conversion and bounds


def _to_bool(v, where):
    if isinstance(v, bool):
        return v
    raise ConfigError(f"{where} must be true/false, got {v!r}")


def _to_int(v, where):
    if isinstance(v, str) and _INTEGER.fullmatch(v):
        return int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise ConfigError(f"{where} must be an integer, got {v!r}")


def _to_float(v, where):
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where} must be a number, got {v!r}")
    try:
        return float(v)
    except OverflowError:        # an integer beyond float range
        raise ConfigError(f"{where} must be a finite number, got {v!r}") from None


def _to_str(v, where):
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ConfigError(f"{where} must be a string, got {v!r}")
    text = str(v)
    if not text.strip():
        raise ConfigError(f"{where} may not be empty")
    return text


def _to_dict(v, where):
    if not isinstance(v, dict):
        raise ConfigError(f"{where} must be a table/mapping, got {v!r}")
    return {str(k).replace("-", "_"): x for k, x in v.items()}


def _to_list(v, where):
    if not isinstance(v, list):
        raise ConfigError(f"{where} must be a list, got {v!r}")
    return v


def coerce_number(value, kind: type, where: str):
    """Text or a number as an ``int`` or ``float`` (one line naming ``where`` otherwise)."""
    return (_to_int if kind is int else _to_float)(value, where)


_CONVERT = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, dict: _to_dict,
            list: _to_list}


def _num(x: float) -> str:
    if isinstance(x, int) or (float(x).is_integer() and abs(x) < 1e7):
        return f"{int(x):,}"
    return f"{x:g}"


def bounds_text(kind: type, low: float | None, high: float | None, low_open: bool) -> str:
    if low == 0 and low_open:
        return "> 0" + (f" and <= {_num(high)}" if high is not None else "")
    if low is not None and high is not None:
        return f"in ({_num(low)}, {_num(high)}]" if low_open else \
            f"from {_num(low)} to {_num(high)}"
    if low is not None:
        return f"> {_num(low)}" if low_open else f">= {_num(low)}"
    return f"<= {_num(high)}" if high is not None else ""


def check_number(value, where: str, kind: type = float, low: float | None = None,
                 high: float | None = None, low_open: bool = False) -> None:
    """Refuse NaN, infinities, integers beyond int64 and values outside the bounds, in one line."""
    noun = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be {noun}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    bad = (low is not None and (value <= low if low_open else value < low)) or \
        (high is not None and value > high)
    if bad:
        if low == 0 and low_open:     # "a positive number", as people say it
            noun = "a positive integer" if kind is int else "a positive number"
            text = f"up to {_num(high)}" if high is not None else ""
        else:
            text = bounds_text(kind, low, high, low_open)
        raise ConfigError(f"{where} must be {noun}{' ' + text if text else ''}, got {value!r}")
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ConfigError(f"{where} must be an integer within int64 (|n| < 2**63), got {value}")
