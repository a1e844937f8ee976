"""Command line: ``hrnet-quanteval <subcommand>`` (also ``python -m hrnet_quanteval``)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import List, Optional, Sequence

from . import __version__
from .errors import EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, QuantEvalError, Terminated, from_worker
from .flags import int_range, parse_bool

# selftest defaults live here so `--help` works without importing torch-heavy modules
DEFAULT_IMAGES = 40
DEFAULT_SEED = 20191

EXIT_CODES = """exit codes:
  0    reproduced within tolerance, or no published target applies
  1    the reproduction check failed
  2    usage or input error (flags, dataset, checkpoint, results folder)
  3    environment error (GPU, AIMET, artifacts)
  130  interrupted (SIGINT); 143 terminated (SIGTERM)
"""

def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--use-cuda", type=parse_bool, default=None, metavar="BOOL",
        help="true/false/1/0/yes/no; default: use a GPU when PyTorch sees one",
    )
    parser.add_argument("--batch-size", type=int_range(1, 4096), default=32, help="instances per batch (default 32)")
    parser.add_argument(
        "--workers", type=int_range(0, 256), default=default_workers(),
        help=f"data loader processes (default {default_workers()}; 0 loads in the main process)",
    )
    parser.add_argument(
        "--results-dir", default=os.environ.get("HRNET_QUANTEVAL_RESULTS", "results"),
        help="where run folders go (default ./results, env HRNET_QUANTEVAL_RESULTS)",
    )
    parser.add_argument("--run-id", default=None, help="name of this run's folder (default: timestamp)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _add_visualize_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--visualize", type=int_range(0), default=0, metavar="N",
        help="also draw N images with ground-truth and predicted skeletons side by side (visualize/*.png)",
    )


def _add_dataset_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--evaluation-dataset", metavar="DIR", default=os.environ.get("HRNET_QUANTEVAL_DATASET"),
        required=not os.environ.get("HRNET_QUANTEVAL_DATASET"),
        help="COCO root with annotations/person_keypoints_val2017.json and images/val2017/ "
        "(env HRNET_QUANTEVAL_DATASET; /data/coco in the images)",
    )


def _add_artifact_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts-dir", metavar="DIR", default=None,
        help="cache of the zoo's files (env HRNET_QUANTEVAL_ARTIFACTS; /cache in the images; else ~/.cache/hrnet-quanteval)",
    )
    parser.add_argument(
        "--artifacts-url", metavar="URL", default=None,
        help="release base URL, for mirrors (env HRNET_QUANTEVAL_ARTIFACTS_URL); files keep their release names",
    )
    parser.add_argument("--offline", action="store_true", help="never use the network; missing artifacts are an error")


def _add_quant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--default-param-bw", type=int_range(1), default=8, metavar="BITS",
        help="weight bitwidth: 8 for W8A8, 4 for W4A8 (default 8)",
    )
    parser.add_argument(
        "--default-output-bw", type=int_range(1), default=8, metavar="BITS",
        help="activation bitwidth (default 8)",
    )
    parser.add_argument(
        "--calibration-images", type=int_range(1), default=384, metavar="N",
        help="activation encodings from the first N crops in loader order (default 384: the zoo's 12 batches of 32)",
    )


def _command(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with the exit codes."""
    return commands.add_parser(name, help=help_text, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrnet-quanteval",
        description="Evaluate HRNet-W32 pose models (FP32 and AIMET-quantized) on COCO val2017 keypoints "
        "and say whether the AIMET Model Zoo's published accuracy is reproduced.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    ev = _command(commands, "eval", "evaluate on COCO val2017 and compare with the published numbers")
    _add_dataset_option(ev)
    ev.add_argument(
        "--fp32-checkpoint", metavar="FILE",
        help="FP32 HRNet weights (state dict or whole pickled model); default: the zoo's hrnet_posenet_FP32.pth",
    )
    ev.add_argument(
        "--quantized-checkpoint", metavar="FILE",
        help="quantized weights to wrap as they are (the zoo's path); default: the zoo's hrnet_posenet_W<p>A<o>.pth, "
        "or, with --fp32-checkpoint, the FP32 model folded and quantized",
    )
    ev.add_argument(
        "--encodings", metavar="FILE",
        help="1.22-style weight encodings to load and freeze; default: the zoo's with its checkpoint, else computed",
    )
    _add_artifact_options(ev)
    _add_quant_options(ev)
    which = ev.add_mutually_exclusive_group()
    which.add_argument("--skip-fp32", action="store_true", help="evaluate only the quantized model")
    which.add_argument("--fp32-only", action="store_true", help="evaluate only FP32 (no AIMET needed)")
    ev.add_argument("--export", metavar="DIR", help="also export the quantized model (ONNX + encodings) to DIR")
    ev.add_argument(
        "--no-cache", action="store_true",
        help="recompute FP32 even when the results cache has this checkpoint, dataset, code and device",
    )
    ev.add_argument(
        "--crop-cache-mb", type=int_range(0), default=2048, metavar="MB",
        help="memory for decoded crops reused by calibration and the quantized pass (default 2048; 0: off)",
    )
    ev.add_argument(
        "--engine", choices=("native", "reference"), default="native",
        help="native: this package's pipeline; reference: the seed's code path through HRNet's patched lib (HRNET_LIB)",
    )
    ev.add_argument(
        "--max-images", type=int_range(1), default=None, metavar="N",
        help="evaluate only the first N images of the annotation file (quick partial run; no published target)",
    )
    _add_run_options(ev)
    _add_visualize_option(ev)

    st = _command(
        commands, "selftest", "run the whole pipeline on a synthetic set with a model that knows the answer (no COCO needed)"
    )
    st.add_argument(
        "--images", type=int_range(1, 10000), default=DEFAULT_IMAGES, help=f"synthetic images (default {DEFAULT_IMAGES})"
    )
    st.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"synthetic set seed (default {DEFAULT_SEED})")
    st.add_argument(
        "--calibration-images", type=int_range(1), default=384, metavar="N",
        help="calibration crops for the quantized rows (default 384, capped at the set's size)",
    )
    _add_run_options(st)
    _add_visualize_option(st)

    pa = _command(commands, "parity", "evaluate one model with the native and the reference engine and compare them")
    _add_dataset_option(pa)
    model = pa.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", metavar="FILE", help="HRNet weights (default: the zoo's FP32 checkpoint)")
    model.add_argument("--oracle", action="store_true", help="use the self-test's hand-weighted model")
    pa.add_argument("--max-images", type=int_range(1), default=None, metavar="N", help="only the first N images")
    _add_artifact_options(pa)
    _add_run_options(pa)

    be = _command(commands, "bench", "time every stage on a synthetic set against the model's own forward passes")
    be.add_argument("--instances", type=int_range(1, 100000), default=64, help="person instances (default 64)")
    be.add_argument("--arch", choices=("w32", "tiny"), default="tiny", help="HRNet-W32, or a cheap variant (default)")
    be.add_argument("--engine", choices=("native", "reference", "both"), default="native", help="default native")
    be.add_argument("--repeat", type=int_range(1, 100), default=3, help="repetitions; medians are reported (default 3)")
    be.add_argument("--seed", type=int, default=DEFAULT_SEED, help="synthetic set seed")
    be.add_argument(
        "--calibration-images", type=int_range(1), default=384, metavar="N",
        help="calibration crops (default 384, capped at the set's size)",
    )
    _add_run_options(be)

    co = commands.add_parser("compare", help="the stats of two runs side by side")
    co.add_argument("run_a", metavar="RUN_A", help="a run folder or its report.json")
    co.add_argument("run_b", metavar="RUN_B", help="another run folder or report.json")

    sy = commands.add_parser("synth", help="write a synthetic COCO-format person keypoint set")
    sy.add_argument("directory", metavar="DIR", help="output folder (gets annotations/ and images/val2017/)")
    sy.add_argument("--images", type=int_range(1, 100000), default=32, help="number of images (default 32)")
    sy.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def run_synth(args) -> int:
    from .synth import generate

    counts = generate(args.directory, images=args.images, seed=args.seed)
    print(
        f"wrote {counts['images']} images with {counts['people']} people "
        f"({counts['crowd']} crowd and {counts['keypointless']} keypoint-less annotations) to {args.directory}"
    )
    return 0


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    command: List[str] = ["hrnet-quanteval"] + argv
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)  # unwind like Ctrl-C: the run folder is marked, exit 143
    try:
        if args.command == "eval":
            from .run import run_eval

            return run_eval(args, command)
        if args.command == "synth":
            return run_synth(args)
        if args.command == "bench":
            from .bench import run_bench

            return run_bench(args, command)
        if args.command == "compare":
            from .report import compare_runs

            print(compare_runs(args.run_a, args.run_b))
            return 0
        if args.command == "parity":
            from .parity import run_parity

            return run_parity(args, command)
        if args.command == "selftest":
            from .selftest import run_selftest

            return run_selftest(args, command)
    except QuantEvalError as error:
        error = from_worker(error)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted (SIGINT): the run folder is marked interrupted and has no report.json", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print("terminated (SIGTERM): the run folder is marked interrupted and has no report.json", file=sys.stderr)
        return EXIT_SIGTERM
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE
