"""fracgpu/startup.py: the converters every flag table uses, and binding a port before saying "listening"."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable
from typing import Any

import pytest

from fracgpu.startup import (
    Flag,
    Parser,
    StartupError,
    add_flags,
    boolean,
    listen,
    log_level,
    non_negative_int,
    port,
    port_or_off,
    positive_int,
    seconds,
)

ACCEPTED: list[tuple[Callable[[str], Any], str, object]] = [
    (port, "8888", 8888), (port, "65535", 65535), (port_or_off, "0", 0), (positive_int, "1", 1),
    (non_negative_int, "0", 0), (seconds, "1.5", 1.5), (seconds, "0", 0.0), (boolean, "true", True),
    (boolean, "Off", False), (log_level, "debug", "DEBUG"),
]
REFUSED: list[tuple[Callable[[str], Any], str, str]] = [
    (port, "0", "'0' is not a TCP port (1-65535)"), (port, "99999", "'99999' is not a TCP port"),
    (port, "http", "'http' is not a whole number"), (port_or_off, "-1", "(1-65535, or 0 for off)"),
    (positive_int, "0", "must be a whole number above 0"), (non_negative_int, "-2", "0 or more"),
    (seconds, "inf", "finite"), (seconds, "nan", "finite"), (seconds, "-1", "0 or more"),
    (seconds, "1m", "'1m' is not a number of seconds"), (boolean, "maybe", "'maybe' is not true or false"),
    (log_level, "loud", "'loud' is not a log level (DEBUG, INFO, WARNING, ERROR)"),
]


@pytest.mark.parametrize(("convert", "raw", "value"), ACCEPTED)
def test_converters_take_what_they_should(convert: Callable[[str], Any], raw: str, value: object) -> None:
    assert convert(raw) == value


@pytest.mark.parametrize(("convert", "raw", "message"), REFUSED)
def test_converters_refuse_and_say_why(convert: Callable[[str], Any], raw: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        convert(raw)
    assert message in str(refused.value)


def test_a_refused_flag_is_one_line_naming_it_and_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    p = Parser(prog="fracgpu toy")
    add_flags(p, [Flag("port", "port to listen on", "8888", port)], {})
    with pytest.raises(SystemExit) as exited:
        p.parse_args(["--port", "99999"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("fracgpu toy: argument --port: '99999' is not a TCP port (1-65535) "
                                       "(see 'fracgpu toy --help')\n")


def test_listen_gives_a_listening_socket() -> None:
    sock = listen("127.0.0.1", 0)
    try:
        host, bound = sock.getsockname()
        with socket.create_connection((host, bound), timeout=5):
            pass
    finally:
        sock.close()


def test_listen_on_an_address_this_machine_does_not_have() -> None:
    with pytest.raises(StartupError) as refused:
        listen("192.0.2.1", 8888)  # TEST-NET-1: no machine has it
    assert str(refused.value).startswith("cannot listen on 192.0.2.1:8888: ")
    assert str(refused.value).endswith("; no interface of this machine has that address: choose another --bind-address")


def test_listen_on_a_busy_port_names_the_fix() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        with pytest.raises(StartupError) as refused:
            listen("127.0.0.1", busy)
    assert str(refused.value) == (f"cannot listen on 127.0.0.1:{busy}: Address already in use; another program "
                                  "listens there: stop it or choose another --port")
