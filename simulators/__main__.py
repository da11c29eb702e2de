"""``python -m simulators <name> ...``: each simulator module provides ``add_arguments`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

SIMULATORS = {
    "fleet": ("simulators.fleet", "MQTT fleet of alarm buttons, detectors, sensors and duty terminals"),
    "pumproom": ("simulators.pumproom", "Modbus TCP fire pump room: control cabinets with physics"),
    "workflow": ("simulators.workflow", "grid-workflow receiver: checks signatures, answers through the API"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m simulators", description=__doc__)
    sub = parser.add_subparsers(dest="simulator", required=True)
    chosen = argv[0] if argv and argv[0] in SIMULATORS else None
    for name, (module, help_text) in SIMULATORS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(module)  # only the simulator asked for is imported
        p = sub.add_parser(
            name, help=help_text, description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        mod.add_arguments(p)
    args = parser.parse_args(argv)
    mod = importlib.import_module(SIMULATORS[args.simulator][0])
    result: int = mod.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
