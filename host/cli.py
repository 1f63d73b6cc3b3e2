"""The `pcmhil` command line. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pcmhil.errors import PcmhilError


def _seed(text: str) -> int:
    """argparse type of every --seed: an integer in [0, 2**64) (the keyed RNG's range)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"seed must be an integer in [0, 2**64), not {text!r}")
    return value


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    from pcmhil.host.doctor import format_report, run_doctor

    report = run_doctor(progress=(lambda _m: None) if args.json else _progress)
    print(json.dumps(report.as_json(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from pcmhil.host.demo import format_demo, run_demo

    result = run_demo(progress=(lambda _m: None) if args.json else _progress, images=args.images,
                      mode=args.mode)
    print(json.dumps(result) if args.json else format_demo(result))
    return 0 if result["all_layers_equal"] else 1


def cmd_infer(args: argparse.Namespace) -> int:
    from pcmhil.host.evaluate import infer

    result = infer(args.model, args.data, args.backend, images=args.images, preset=args.preset,
                   t_inference_s=args.t_inference, gdc=args.gdc, gdc_per_column=args.gdc_per_column,
                   replicate=args.replicate, seed=args.seed, mode=args.mode, verify=args.verify,
                   progress=None if args.json else _progress)
    _emit(result, args.json)
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from pcmhil.host.evaluate import drift, plot_drift

    times = [float(t) for t in args.times.split(",")]
    gdc = (args.gdc,) if args.gdc is not None else (False, True)
    models = [args.model] + ([args.contrast] if args.contrast else [])
    results = [drift(m, args.data, times_s=times, seeds=args.seeds, preset=args.preset, gdc=gdc,
                     gdc_per_column=args.gdc_per_column, replicate=args.replicate, images=args.images,
                     backend=args.backend, progress=None if args.json else _progress) for m in models]
    if args.plot:
        plot_drift(results, args.plot)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"runs": results}))
    else:
        for result in results:
            tiles = result["tiles_used"]
            print(f"{result['model']} ({result['preset']}, {result['seeds']} seeds, {tiles} "
                  f"tile{'s' if tiles != 1 else ''}, float {100 * result['float_accuracy']:.2f} %)")
            for r in result["results"]:
                print(f"  t = {r['t_s']:>10g} s  {'GDC   ' if r['gdc'] else 'no GDC'}  "
                      f"{100 * r['accuracy_mean']:6.2f} +- {100 * r['accuracy_std']:.2f} %")
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pcmhil.host.training import train

    record = train(args.model, args.hwa_noise, args.epochs, args.seed, args.out)
    _emit(record, args.json)
    return 0


def cmd_mvm(args: argparse.Namespace) -> int:
    from pcmhil.host.random_mvm import random_mvm
    from pcmhil.interface import ReadMode

    result = random_mvm(args.backend, mode=args.mode, rows=args.rows, cols=args.cols,
                        count=args.count, seed=args.seed, preset=args.preset,
                        read_mode=ReadMode[args.read_mode.upper().replace("-", "_")],
                        waves=args.waves or False, progress=None if args.json else _progress)
    _emit(result, args.json)
    return 0


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>18}: {value}")


def cmd_characterize(args: argparse.Namespace) -> int:
    from pcmhil.model.characterize import characterize, plot_characterization

    if not args.json:
        _progress(f"programming {args.devices} devices per target of preset {args.preset} ...")
    result = characterize(args.preset, devices=args.devices, seed=args.seed)
    if args.plot:
        plot_characterization(result, args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"preset {result['preset']}: g_max {result['g_max_us']} uS, t0 {result['t0_s']} s")
    print(f"{'x':>6} {'prog_sigma_us':>14} {'nu_mean':>9} {'nu_std':>9}")
    for p in result["points"]:
        print(f"{p['x']:>6} {p['prog_sigma_us']:>14.4f} {p['nu_mean']:>9.4f} {p['nu_std']:>9.4f}")
    print(f"{'x':>6} {'t_s':>10} {'G(t)/G0':>9} {'1/f sigma rel':>14}")
    for d in result["drift"]:
        print(f"{d['x']:>6} {d['t_s']:>10.0f} {d['g_ratio_mean']:>9.4f} {d['read_sigma_rel']:>14.5f}")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def cmd_bench_model(args: argparse.Namespace) -> int:
    from pcmhil.model.bench import bench_model

    result = bench_model(rows=args.rows, cols=args.cols, batch=args.batch, seed=args.seed,
                         progress=None if args.json else _progress)
    _emit(result, args.json)
    return 0


def cmd_bench_cosim(args: argparse.Namespace) -> int:
    from pcmhil.host.bench import bench_cosim

    result = bench_cosim(rows=args.rows, cols=args.cols, count=args.count, cycle_count=args.cycle_count,
                         progress=None if args.json else _progress)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pcmhil.interface import Geometry
    from pcmhil.rtl.export import export

    geometry = Geometry(args.rows, args.cols, args.tiles)
    result = export(geometry, args.out, args.target, progress=None if args.json else _progress)
    if args.json:
        print(json.dumps(result))
        return 0 if result["lint_ok"] else 1
    print("\n".join(result["files"]))
    print(f"verilator --lint-only -Wall: {'clean' if result['lint_ok'] else 'FAILED (see lint_report.txt)'}")
    if result["device"]:
        print(f"{result['device']}: {result['luts']} LUTs ({result['lut_utilization_pct']} %), "
              f"{result['ffs']} FFs, {result['brams']} BRAMs, {result['dsps']} DSPs")
        if result["pnr_ok"]:
            print(f"Fmax {result['fmax_mhz']} MHz (target {result['fmax_target_mhz']:g} MHz); "
                  f"critical path {result['critical_path']['from']} -> {result['critical_path']['to']}")
        else:
            print(f"place and route failed: {result['pnr_error']}")
    return 0 if result["lint_ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcmhil",
        description="Hardware-in-the-loop co-simulation of a HERMES-like PCM in-memory-computing core.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="check the toolchain end to end (build + simulate)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.set_defaults(func=cmd_doctor)

    demo = sub.add_parser("demo", help="the default MLP through the co-simulated chip vs. the twin")
    demo.add_argument("--images", type=int, default=120)
    demo.add_argument("--mode", choices=("transaction", "cycle"), default="transaction")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(func=cmd_demo)

    infer = sub.add_parser("infer", help="accuracy of a network run through a backend")
    infer.add_argument("--model", required=True, help="shipped name, FILE.onnx, FILE.pt or FILE.npz")
    infer.add_argument("--data", default="digits", help="digits, mnist1d or FILE.npz (keys x, y)")
    infer.add_argument("--backend", choices=("float", "twin", "cosim"), default="twin")
    infer.add_argument("--mode", choices=("transaction", "cycle"), default="transaction")
    infer.add_argument("--images", type=int)
    infer.add_argument("--preset", default="pcm")
    infer.add_argument("--t-inference", type=float, default=1.0, metavar="SECONDS")
    infer.add_argument("--gdc", action=argparse.BooleanOptionalAction, default=True,
                       help="global drift compensation")
    infer.add_argument("--gdc-per-column", action="store_true",
                       help="drift compensation per column instead of one factor per tile")
    infer.add_argument("--replicate", action=argparse.BooleanOptionalAction, default=True,
                       help="copies of the weights in idle columns, averaged (else one copy per weight)")
    infer.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                       help="program-and-verify (else one-shot programming)")
    infer.add_argument("--seed", type=_seed, default=0)
    infer.add_argument("--json", action="store_true")
    infer.set_defaults(func=cmd_infer)

    drift = sub.add_parser("drift", help="accuracy vs. time after programming, over seeds")
    drift.add_argument("--model", required=True)
    drift.add_argument("--contrast", help="a second model on the same plot (e.g. digits-mlp-nohwa)")
    drift.add_argument("--data", default="digits")
    drift.add_argument("--backend", choices=("twin", "cosim"), default="twin")
    drift.add_argument("--times", default="1,3600,86400,2592000,31536000")
    drift.add_argument("--seeds", type=int, default=3)
    drift.add_argument("--images", type=int)
    drift.add_argument("--preset", default="pcm")
    drift.add_argument("--gdc", action=argparse.BooleanOptionalAction, default=None,
                       help="only with (--gdc) or only without (--no-gdc); default both")
    drift.add_argument("--gdc-per-column", action="store_true",
                       help="drift compensation per column instead of one factor per tile")
    drift.add_argument("--replicate", action=argparse.BooleanOptionalAction, default=True,
                       help="copies of the weights in idle columns, averaged (else one copy per weight)")
    drift.add_argument("--json", action="store_true")
    drift.add_argument("--plot", metavar="FILE.png")
    drift.set_defaults(func=cmd_drift)

    train = sub.add_parser("train", help="hardware-aware training (needs the torch extra)")
    train.add_argument("--model", required=True, choices=("digits-mlp", "digits-mlp-300",
                                                           "digits-cnn", "mnist1d-cnn"))
    train.add_argument("--hwa-noise", type=float, help="weight noise relative to max |w|")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--out", required=True, metavar="DIR")
    train.add_argument("--json", action="store_true")
    train.set_defaults(func=cmd_train)
    mvm = sub.add_parser("mvm", help="program a random matrix, run random MVMs, hash the codes")
    mvm.add_argument("--backend", choices=("twin", "cosim"), default="twin")
    mvm.add_argument("--mode", choices=("transaction", "cycle"), default="transaction",
                     help="cosim fidelity: one model call per window, or boundary every clock")
    mvm.add_argument("--rows", type=int, default=64)
    mvm.add_argument("--cols", type=int, default=64)
    mvm.add_argument("--count", type=int, default=100)
    mvm.add_argument("--seed", type=_seed, default=1)
    mvm.add_argument("--preset", default="pcm")
    mvm.add_argument("--read-mode", choices=("one-phase", "four-phase"), default="one-phase",
                     help="one signed window per MVM, or HERMES's four unipolar windows")
    mvm.add_argument("--waves", nargs="?", const="waves", default=None, metavar="DIR",
                     help="cosim: write an FST waveform into DIR (default ./waves)")
    mvm.add_argument("--json", action="store_true")
    mvm.set_defaults(func=cmd_mvm)
    device = sub.add_parser("device", help="PCM device statistics").add_subparsers(
        dest="device_command", required=True, metavar="SUBCOMMAND")
    char = device.add_parser("characterize", help="program and age N devices, measure statistics")
    char.add_argument("--preset", required=True)
    char.add_argument("--devices", type=int, default=65536)
    char.add_argument("--seed", type=_seed, default=0)
    char.add_argument("--json", action="store_true")
    char.add_argument("--plot", metavar="FILE.png")
    char.set_defaults(func=cmd_characterize)

    bench = sub.add_parser("bench", help="benchmarks, measured side by side in one run").add_subparsers(
        dest="bench_command", required=True, metavar="SUBCOMMAND")
    bmodel = bench.add_parser("model", help="analog model MVM time vs a numpy float matmul")
    bmodel.add_argument("--rows", type=int, default=256)
    bmodel.add_argument("--cols", type=int, default=256)
    bmodel.add_argument("--batch", type=int, default=1000)
    bmodel.add_argument("--seed", type=_seed, default=0)
    bmodel.add_argument("--json", action="store_true")
    bmodel.set_defaults(func=cmd_bench_model)

    bcosim = bench.add_parser("cosim", help="cosim MVM/s (both modes) vs. ceiling, twin and float matmul")
    bcosim.add_argument("--rows", type=int, default=256)
    bcosim.add_argument("--cols", type=int, default=256)
    bcosim.add_argument("--count", type=int, default=300, help="transaction-mode MVMs")
    bcosim.add_argument("--cycle-count", type=int, default=40, help="cycle-mode MVMs")
    bcosim.add_argument("--json", action="store_true")
    bcosim.set_defaults(func=cmd_bench_cosim)

    export = sub.add_parser("export", help="the chip as Verilog, its register map and boundary, lint, "
                                           "FPGA synthesis and timing")
    export.add_argument("--out", default="pcmhil-export", metavar="DIR")
    export.add_argument("--target", choices=("generic", "ecp5", "ice40"), default="generic",
                        help="ecp5 / ice40: also Yosys synthesis and nextpnr place and route")
    export.add_argument("--rows", type=int, default=256)
    export.add_argument("--cols", type=int, default=256)
    export.add_argument("--tiles", type=int, default=1)
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=cmd_export)
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
