"""What every `fracgpu <command>` does before it serves: read its flags, bind its ports, reach its cluster.

Flags are declared in a table (`Flag`): name, help, default, converter, environment variables and
old names. `add_flags` turns the table into argparse actions so that

- the converter is argparse's `type=`: a bad value, typed or read from the environment, is an
  argparse error that names the flag (and the variable), never a traceback while the parser is built;
- every flag's help ends with its environment variable and its default, so `--help` teaches;
- an old name (`Flag.old`, and the environment variable derived from it) is still accepted for one
  release, hidden from the usage line, named in the new flag's help, and warned about in one line when
  used (on the command line, in a config file, or through the environment).

A value that parses but cannot be used (flags that contradict, a setting out of range) is a
`ConfigError`, raised by the command's config checks. Anything else a program cannot start with is a
`StartupError`: one line naming the problem and the
fix, exit 2 (`EXIT_USAGE`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

EXIT_USAGE = 2
CONFIG_HELP = ("YAML file with this command's settings, in its section (keys: the long flags without dashes); "
               "flags on the command line win; see docs/configuration.md")


class StartupError(Exception):
    """The program cannot start; the message is one line: what is wrong and what to do about it."""


class ConfigError(ValueError):
    """A flag, environment value or setting that cannot be used (every command's); the message names it."""


# ---- converters (argparse `type=`): a ValueError or ArgumentTypeError is a clean argparse error ------------
def port(raw: str) -> int:
    value = integer(raw)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a TCP port (1-65535)")
    return value


def port_or_off(raw: str) -> int:
    value = integer(raw)
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a TCP port (1-65535, or 0 for off)")
    return value


def integer(raw: str) -> int:
    try:
        return int(str(raw).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None


def positive_int(raw: str) -> int:
    value = integer(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a whole number above 0")
    return value


def non_negative_int(raw: str) -> int:
    value = integer(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a whole number, 0 or more")
    return value


def seconds(raw: str) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a finite number of seconds, 0 or more")
    return value


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def boolean(raw: str) -> bool:
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{raw!r} is not true or false")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(raw: str) -> str:
    text = str(raw).strip().upper()
    if text not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return text


def text(raw: str) -> str:
    return str(raw)


# ---- the table ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Flag:
    name: str  # the long flag without dashes
    help: str
    default: str | None = None  # as it would be typed; None: unset
    type: Callable[[str], Any] = text
    env: tuple[str, ...] = ()  # the variable that sets the default; more than one: the others are old names
    old: tuple[str, ...] = ()  # old flag names, accepted (with a warning) for one release
    choices: tuple[str, ...] | None = None
    switch: bool = False  # takes no value; the environment may still say true/false
    unset: str = "unset"  # what the default means when there is none, as --help shows it
    metavar: str | None = None
    short: str | None = None  # e.g. "-o"


class EnvDefault(str):
    """A default read from the environment: its variable is named when the value cannot be used."""

    var: str
    instead: str | None  # the current variable, when `var` is an old name

    def __new__(cls, value: str, var: str, instead: str | None) -> EnvDefault:
        self = super().__new__(cls, value)
        self.var = var
        self.instead = instead
        return self


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def deprecated_flag(prog: str, old: str, new: str) -> str:
    return f"{prog}: {old} is deprecated, use {new} (the old name is removed in the next release)"


def _converter(flag: Flag, prog: str) -> Callable[[str], Any]:
    """The flag's type, naming the environment variable when the value came from one."""
    convert = flag.type

    def from_env_or_line(raw: str) -> Any:
        if not isinstance(raw, EnvDefault):
            return convert(raw)
        where = f"{raw.var}={str(raw)!r} (environment)"
        if flag.choices is not None and str(raw) not in flag.choices:
            raise argparse.ArgumentTypeError(f"{where}: one of {', '.join(flag.choices)}")
        try:
            value = convert(raw)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{where}: {e}") from None
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{where}: not a valid value") from None
        if raw.instead is not None:  # after the check: a refused value is one line, not a warning and an error
            _warn(f"{prog}: environment variable {raw.var} is deprecated, use {raw.instead} "
                  "(the old name is removed in the next release)")
        return value

    # argparse names the type in "invalid <type> value" messages
    from_env_or_line.__name__ = getattr(convert, "__name__", "value")
    return from_env_or_line


class _Switch(argparse.Action):
    """`--flag` sets True; its default may be a string from the environment, converted by `type`."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)


class _Deprecated(argparse.Action):
    """An old name of a flag: stores into the new flag's dest and says, once per use, what to write instead."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", switch: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0 if switch else None, **kwargs)
        self.new = new
        self.switch = switch

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        _warn(deprecated_flag(parser.prog, option_string or self.option_strings[0], self.new))
        setattr(namespace, self.dest, True if self.switch else values)


def env_names(flag: Flag, prefix: str | None) -> tuple[str, ...]:
    """The flag's environment variables, current first: explicit, or derived from `prefix` and its names."""
    if flag.env or prefix is None:
        return flag.env
    return tuple(prefix + n.upper().replace("-", "_") for n in (flag.name, *flag.old))


def _default(flag: Flag, envs: tuple[str, ...], environ: Mapping[str, str]) -> Any:
    for i, var in enumerate(envs):
        raw = environ.get(var)
        if raw:  # an empty variable is an unset one, as in a Pod spec's `value: ""`
            return EnvDefault(raw, var, envs[0] if i else None)
    if flag.switch:
        return False
    return flag.default


def help_text(flag: Flag, envs: tuple[str, ...]) -> str:
    """What --help says of a flag: its help, old names, environment variable and default."""
    parts = [flag.help]
    if flag.old:
        parts.append("(was " + ", ".join(f"--{o}" for o in flag.old) + ", deprecated)")
    if envs:
        parts.append(f"[env {envs[0]}]")
    if flag.switch:
        shown = "false"
    elif flag.default is None:
        shown = flag.unset
    else:
        shown = flag.default if flag.default != "" else '""'
    parts.append(f"(default: {shown})")
    return " ".join(parts)


def _help(flag: Flag, envs: tuple[str, ...]) -> str:
    return help_text(flag, envs).replace("%", "%%")  # argparse formats help with %


_METAVARS: dict[Callable[[str], Any], str] = {
    port: "PORT", port_or_off: "PORT", integer: "N", positive_int: "N", non_negative_int: "N", seconds: "SECONDS",
    boolean: "BOOL", log_level: "LEVEL",
}


def _metavar(flag: Flag) -> str | None:
    if flag.metavar is not None or flag.choices is not None:
        return flag.metavar
    return _METAVARS.get(flag.type)


def add_flags(p: argparse.ArgumentParser, flags: Sequence[Flag], environ: Mapping[str, str], *,
              env_prefix: str | None = None) -> None:
    """The table as argparse actions (each carries its `Flag` as `.flag` and variables as `.env`)."""
    for f in flags:
        envs = env_names(f, env_prefix)
        names = [f"--{f.name}"] if f.short is None else [f.short, f"--{f.name}"]
        dest = f.name.replace("-", "_")
        kwargs: dict[str, Any] = {"dest": dest, "default": _default(f, envs, environ), "help": _help(f, envs),
                                  "type": _converter(f, p.prog)}
        if f.switch:
            action = p.add_argument(*names, action=_Switch, **kwargs)
        else:
            action = p.add_argument(*names, choices=f.choices, metavar=_metavar(f), **kwargs)
        action.flag = f  # type: ignore[attr-defined]
        action.env = envs  # type: ignore[attr-defined]
        takes: dict[str, Any] = {} if f.switch else {"type": _converter(f, p.prog), "choices": f.choices,
                                                      "metavar": _metavar(f)}
        for old in f.old:
            alias = p.add_argument(f"--{old}", action=_Deprecated, dest=dest, new=f"--{f.name}", switch=f.switch,
                                   default=argparse.SUPPRESS, help=argparse.SUPPRESS, **takes)
            alias.deprecated_for = f"--{f.name}"  # type: ignore[attr-defined]


def add_config_flag(p: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """`--config FILE`, read by `fracgpu.cli` before the command parses its flags; here so --help shows it."""
    add_flags(p, [Flag("config", CONFIG_HELP, env=("FRACGPU_CONFIG",), metavar="FILE", unset="none")], environ)


def is_deprecated(action: argparse.Action) -> bool:
    return hasattr(action, "deprecated_for")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: the problem, and where the flags are described.

    The usage line is short (`fracgpu extender [options]`): the options follow in --help, each with
    its environment variable and default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("usage", "%(prog)s [options]")
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


# ---- serving: bind before saying "listening" --------------------------------------------------------------
def _bind_fix(e: OSError, address_flag: str, port_flag: str) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"another program listens there: stop it or choose another {port_flag}"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"no interface of this machine has that address: choose another {address_flag}"
    if e.errno == errno.EACCES:
        return f"ports below 1024 need privileges: choose another {port_flag}"
    return f"choose another {address_flag} or {port_flag}"


def listen(host: str, port_: int, *, address_flag: str = "--bind-address", port_flag: str = "--port",
           backlog: int = 128) -> socket.socket:
    """A bound, listening TCP socket (non-blocking), or a StartupError naming the address and the fix."""
    where = f"{host}:{port_}" if ":" not in host else f"[{host}]:{port_}"
    try:
        infos = socket.getaddrinfo(host or None, port_, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise StartupError(f"cannot listen on {where}: {getattr(e, 'strerror', None) or e}; "
                           f"give {address_flag} an IP address of this machine (0.0.0.0: all)") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: a restart need not wait
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {where}: {e.strerror or e}; {_bind_fix(e, address_flag, port_flag)}"
                           ) from None
    sock.setblocking(False)
    return sock


def metrics_server_error(e: OSError, port_: int) -> StartupError:
    return StartupError(f"cannot serve /metrics on port {port_}: {e.strerror or e}; "
                        f"{_bind_fix(e, '--metrics-port', '--metrics-port')} (0: off)")


def no_cluster(error: object, fix: str) -> StartupError:
    """The API server cannot be found from here (no kubeconfig, not in a pod)."""
    return StartupError(f"no usable cluster configuration ({' '.join(str(error).split())}); {fix}")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed flags, or the exit code argparse chose: 0 after --help, 2 for a flag it refused (it
    printed why, in one line for a Parser)."""
    try:
        return p.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2


def begin(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed flags with logging started at their --log-level, or parse's exit code."""
    args = parse(p, argv)
    if not isinstance(args, int):
        start_logging(args.log_level)
    return args


def start_logging(level: str) -> None:
    """Structured lines on stderr, every program alike."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
