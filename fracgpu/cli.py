"""`fracgpu <command>`: one CLI for every program. Each command lives in its own package's main module."""

from __future__ import annotations

import importlib
import os
import sys

from fracgpu.configfile import ConfigFileError, apply, parser_factory

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module with main(argv) -> int, one-line help)
    "device-plugin": ("fracgpu.deviceplugin.main", "serve fracgpu.io/vgpu-core to the kubelet (DaemonSet)"),
    "dra-driver": ("fracgpu.draplugin.main", "publish GPUs to DRA and prepare their claims (DaemonSet, 1.36+)"),
    "extender": ("fracgpu.extender.main", "kube-scheduler extender: filter, prioritize, bind"),
    "controller": ("fracgpu.controller.main", "GPU health self-heal: evict, taint, recover"),
    "webhook": ("fracgpu.webhook.main", "mutating admission webhook for GPU pods"),
    "simulate": ("fracgpu.sim.main", "replay a workload through the placement core, no cluster needed"),
    "inspect": ("fracgpu.inspect.main", "GPUs, shares and tenants of a cluster or snapshot"),
}


def usage() -> str:
    lines = ["usage: fracgpu <command> [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'fracgpu <command> --help' for a command's options.",
              "Any command takes --config FILE (or $FRACGPU_CONFIG): a YAML file, one section per command,",
              "keys are the command's flags without dashes; flags on the command line win (docs/configuration.md)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("--version", "version"):
        from fracgpu import __version__

        print(__version__)
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"fracgpu: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    try:
        rest = apply(args[0], args[1:], os.environ, list(COMMANDS), parser_factory(entry[0]))
    except ConfigFileError as e:
        print(f"fracgpu {args[0]}: {e}", file=sys.stderr)
        return 2
    try:
        result: int = module.main(rest)
    except KeyboardInterrupt:  # Ctrl-C before a program installed its own handler (e.g. while it starts)
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
