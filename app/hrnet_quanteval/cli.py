"""Command line: ``hrnet-quanteval <subcommand>`` (also ``python -m hrnet_quanteval``)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from typing import List, Optional, Sequence

from . import __version__
from .errors import (
    EXIT_INTERNAL,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    QuantEvalError,
    Terminated,
    from_worker,
    internal_error_message,
    save_traceback,
)
from .flags import int_range, parse_bool

# selftest defaults live here so `--help` works without importing torch-heavy modules
DEFAULT_IMAGES = 40
DEFAULT_SEED = 20191

EXIT_CODES = """exit codes:
  0    reproduced within tolerance, or no published target applies
  1    the reproduction check failed
  2    usage or input error (flags, dataset, checkpoint, results folder)
  3    environment error (GPU, AIMET, artifacts)
  4    internal error: a bug in hrnet-quanteval (traceback saved; --debug prints it)
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
        help="COCO root with annotations/person_keypoints_val2017.json and images/val2017/ (or a plain unzip's "
        "val2017/) (env HRNET_QUANTEVAL_DATASET; /data/coco in the images)",
    )
    parser.add_argument(
        "--annotation-file", metavar="FILE",
        help="instead of --evaluation-dataset: any COCO-format person-keypoint annotation file (with --image-dir); "
        "a set other than val2017 has no published target",
    )
    parser.add_argument(
        "--image-dir", metavar="DIR",
        help="the folder of --annotation-file's images (each image record's file_name, else <12-digit id>.jpg)",
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
    """A subcommand whose --help ends with the exit codes, with --debug."""
    parser = commands.add_parser(name, help=help_text, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_debug_option(parser, argparse.SUPPRESS)
    return parser


def _add_debug_option(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "--debug", action="store_true", default=default,
        help="print the traceback of an internal error (exit 4) instead of only saving it",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrnet-quanteval",
        description="Evaluate HRNet-W32 pose models (FP32 and AIMET-quantized) on COCO val2017 keypoints "
        "and say whether the AIMET Model Zoo's published accuracy is reproduced.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_debug_option(parser, False)
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
        help="memory for calibration's decoded crops, read again by the evaluation pass (default 2048; 0: off)",
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

    be = _command(commands, "bench", "time every stage on a synthetic set against floors measured in the same run")
    be.add_argument(
        "--scale", choices=("small", "coco"), default="small",
        help="small: --instances people and an HRNet, against its forward passes (default); coco: COCO val2017's "
        "shape (5000 images, 6352 people, drawn once into the cache) and a negligible model, against decoding and COCOeval",
    )
    be.add_argument("--instances", type=int_range(1, 100000), default=64, help="person instances at --scale small (default 64)")
    be.add_argument(
        "--coco-images", type=int_range(10, 100000), default=5000, metavar="N",
        help="images of the COCO-shaped set (default 5000, val2017's; people scale with it); smaller for a quick look",
    )
    be.add_argument("--arch", choices=("w32", "tiny"), default="tiny", help="HRNet-W32, or a cheap variant (default)")
    be.add_argument("--engine", choices=("native", "reference", "both"), default="native", help="default native")
    be.add_argument("--repeat", type=int_range(1, 100), default=3, help="repetitions; medians are reported (default 3)")
    be.add_argument("--seed", type=int, default=DEFAULT_SEED, help="synthetic set seed")
    be.add_argument(
        "--calibration-images", type=int_range(1), default=384, metavar="N",
        help="calibration crops (default 384, capped at the set's size)",
    )
    _add_run_options(be)

    di = _command(
        commands, "diagnose",
        "name the quantized layers that cost accuracy (output SQNR, per-layer sensitivity) and check frozen weight "
        "encodings against their weights",
    )
    _add_dataset_option(di)
    di.add_argument(
        "--fp32-checkpoint", metavar="FILE",
        help="FP32 HRNet weights, the reference (folded); default: the zoo's hrnet_posenet_FP32.pth",
    )
    di.add_argument(
        "--quantized-checkpoint", metavar="FILE",
        help="quantized weights to wrap as they are; default: the zoo's, or, with --fp32-checkpoint, the FP32 model folded",
    )
    di.add_argument(
        "--encodings", metavar="FILE",
        help="1.22-style weight encodings to load, freeze and check; default: the zoo's with its checkpoint, else computed",
    )
    _add_artifact_options(di)
    _add_quant_options(di)
    di.add_argument(
        "--images", type=int_range(1), default=64, metavar="N",
        help="the first N crops in loader order for SQNR and sensitivity (default 64; every quantized layer runs them once)",
    )
    _add_run_options(di)
    di.set_defaults(skip_fp32=False, fp32_only=False)  # the FP32 model is always the reference

    co = _command(commands, "compare", "the stats of two runs side by side")
    co.add_argument("run_a", metavar="RUN_A", help="a run folder or its report.json")
    co.add_argument("run_b", metavar="RUN_B", help="another run folder or report.json")

    sy = _command(commands, "synth", "write a synthetic COCO-format person keypoint set")
    sy.add_argument("directory", metavar="DIR", help="output folder (gets annotations/ and images/val2017/)")
    sy.add_argument("--images", type=int_range(1, 100000), default=32, help="number of images (default 32)")
    sy.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def run_synth(args) -> int:
    """Write the set into a new folder beside the target and move it into place: never over an existing set."""
    import shutil
    import tempfile

    from .files import check_empty_or_new_dir, user_path
    from .synth import generate

    target = os.path.abspath(args.directory)
    fix = "pass a new or empty folder (a synthetic set is never written over existing files)"
    check_empty_or_new_dir(target, "synthetic set folder", fix)
    with user_path("synthetic set folder", target, fix, action="write to"):
        work = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target))
        try:
            counts = generate(work, images=args.images, seed=args.seed)
            os.chmod(work, 0o777 & ~_umask())  # mkdtemp makes 0700; the set gets the umask's modes
            os.replace(work, target)  # replaces only an empty folder: anything written there meanwhile stays
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    print(
        f"wrote {counts['images']} images with {counts['people']} people "
        f"({counts['crowd']} crowd and {counts['keypointless']} keypoint-less annotations) to {args.directory}"
    )
    return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


# libgomp (PyTorch's OpenMP on Linux) keeps each idle thread spinning for GOMP's default 300,000 rounds
# after every parallel region. With loader processes decoding on the same cores, those spins take the cycles the
# loaders need (bench --scale coco: 17.4 s against 15.2 s). 20,000 rounds keep the model's own forward pass as
# fast as the default (HRNet-W32, batch 16, two threads) and only decide when a thread sleeps: no number changes.
SPIN_ENV = "GOMP_SPINCOUNT"
DEFAULT_SPINCOUNT = "20000"


def limit_idle_spinning(environ=os.environ, modules=sys.modules) -> bool:
    """Set ``GOMP_SPINCOUNT`` before PyTorch's OpenMP runtime starts (it reads it once, when loaded); a value
    the user set, or ``OMP_WAIT_POLICY``, wins. Whether it was set here."""
    if "torch" in modules or SPIN_ENV in environ or "OMP_WAIT_POLICY" in environ:
        return False
    environ[SPIN_ENV] = DEFAULT_SPINCOUNT
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    limit_idle_spinning()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    command: List[str] = ["hrnet-quanteval"] + argv
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)  # unwind like Ctrl-C: the run folder is marked, exit 143
    try:
        return _dispatch(args, command)
    except QuantEvalError as error:
        error = from_worker(error)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        print(f"interrupted (SIGINT){_where(interrupt)}", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated as terminated:
        print(f"terminated (SIGTERM){_where(terminated)}", file=sys.stderr)
        return EXIT_SIGTERM
    except Exception as error:  # noqa: BLE001 - anything else is a bug: one paragraph, the traceback saved, exit 4
        saved = getattr(error, "hrnet_traceback", None) or save_traceback(error)
        if getattr(args, "debug", False):
            traceback.print_exception(type(error), error, error.__traceback__)
        print(f"error: {internal_error_message(error, saved)}", file=sys.stderr)
        return EXIT_INTERNAL


def _where(interrupt: BaseException) -> str:
    run_dir = getattr(interrupt, "hrnet_run_dir", None)
    if run_dir is None:
        return ": stopped before any run folder was created"
    return f": the run folder {run_dir} is marked interrupted and has no report.json"


def _dispatch(args, command: List[str]) -> int:
    if args.command == "eval":
        from .run import run_eval

        return run_eval(args, command)
    if args.command == "synth":
        return run_synth(args)
    if args.command == "bench":
        from .bench import run_bench

        return run_bench(args, command)
    if args.command == "diagnose":
        from .diagnose import run_diagnose

        return run_diagnose(args, command)
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
    raise ValueError(f"unknown command {args.command}")
