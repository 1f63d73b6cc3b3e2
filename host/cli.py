"""The `pcmhil` command line. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pcmhil.errors import PcmhilError


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    from pcmhil.host.doctor import format_report, run_doctor

    report = run_doctor(progress=(lambda _m: None) if args.json else _progress)
    print(json.dumps(report.as_json(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    # The inference demo arrives with the host driver (issue 6); until then the main job is to
    # prove the toolchain, and it says so.
    print("pcmhil demo: the DNN inference demo is not built yet; running `pcmhil doctor` instead.",
          file=sys.stderr)
    return cmd_doctor(args)


def cmd_mvm(args: argparse.Namespace) -> int:
    from pcmhil.host.random_mvm import random_mvm

    result = random_mvm(args.backend, mode=args.mode, rows=args.rows, cols=args.cols,
                        count=args.count, seed=args.seed, preset=args.preset,
                        waves=args.waves or False, progress=None if args.json else _progress)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>13}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcmhil",
        description="Hardware-in-the-loop co-simulation of a HERMES-like PCM in-memory-computing core.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="check the toolchain end to end (build + simulate)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.set_defaults(func=cmd_doctor)

    demo = sub.add_parser("demo", help="the main job on the built-in default")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(func=cmd_demo)
    mvm = sub.add_parser("mvm", help="program a random matrix, run random MVMs, hash the codes")
    mvm.add_argument("--backend", choices=("twin", "cosim"), default="twin")
    mvm.add_argument("--mode", choices=("transaction", "cycle"), default="transaction",
                     help="cosim fidelity: one model call per window, or boundary every clock")
    mvm.add_argument("--rows", type=int, default=64)
    mvm.add_argument("--cols", type=int, default=64)
    mvm.add_argument("--count", type=int, default=100)
    mvm.add_argument("--seed", type=int, default=1)
    mvm.add_argument("--preset", default="pcm")
    mvm.add_argument("--waves", nargs="?", const="waves", default=None, metavar="DIR",
                     help="cosim: write an FST waveform into DIR (default ./waves)")
    mvm.add_argument("--json", action="store_true")
    mvm.set_defaults(func=cmd_mvm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PcmhilError as exc:
        print(f"pcmhil {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
