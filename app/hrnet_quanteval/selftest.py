"""``selftest``: the whole pipeline on a synthetic set with a model that knows the answer.

The oracle (``oracle.OraclePoseNet``) finds the synthetic people's joints by construction, so its AP says
whether crop, normalisation, flip test, decoding, the way back to image pixels, rescoring, OKS-NMS and
COCOeval all work on this host; with AIMET installed, BN folding and W8A8/W4A8 QuantSim run too, through
the same code as ``eval``, and each quantized row may lose at most ``QUANT_MAX_DROP`` AP against FP32.

Inside the images (``HRNET_QUANTEVAL_STACK`` set) AIMET is part of what is being tested: if it does not
import, the self-test fails. Elsewhere the quantized rows are skipped without AIMET.
"""
from __future__ import annotations

import tempfile
from typing import Dict, Sequence

from . import environment, run, synth
from .errors import EnvironmentProblem
from .oracle import OraclePoseNet
from .runs import check_writable, in_run_folder
from .runtypes import RunOptions
from .validation import open_dataset

PASS_AP = 0.9  # the oracle's FP32 AP must reach this
QUANT_MAX_DROP = 0.02  # a quantized row may lose at most this much AP against FP32
IMAGE_STACKS = ("legacy", "current")


def selftest_verdict(models: Dict[str, Dict[str, float]]) -> Dict[str, object]:
    """Passed when the oracle's FP32 AP is at least PASS_AP and no quantized row is more than QUANT_MAX_DROP below it."""
    fp32 = models["fp32"]["AP"]
    passed = fp32 >= PASS_AP
    parts = [f"FP32 AP {fp32:.4f} {'>=' if passed else '<'} {PASS_AP}"]
    for name, stats in models.items():
        if name != "fp32":
            drop = fp32 - stats["AP"]
            ok = drop <= QUANT_MAX_DROP + 1e-12
            passed = passed and ok
            limit = "" if ok else f", more than the {QUANT_MAX_DROP} allowed"
            parts.append(f"{name.upper()} AP {stats['AP']:.4f} (delta {stats['AP'] - fp32:+.4f}{limit})")
    return {
        "status": "selftest_passed" if passed else "selftest_failed",
        "text": f"self-test {'passed' if passed else 'FAILED'}: " + ", ".join(parts),
        "threshold": PASS_AP,
        "quant_max_drop": QUANT_MAX_DROP,
    }


def quantization_adapter():
    """The installed AIMET's adapter; None outside the images when AIMET is absent, an error inside them."""
    from .quantization.simulate import load_adapter

    stack = environment.stack()
    try:
        return load_adapter()
    except EnvironmentProblem as problem:
        if stack in IMAGE_STACKS:
            raise EnvironmentProblem(
                f"the self-test of the {stack} image needs AIMET, and AIMET does not import here: {problem.problem}",
                "the image is broken: rebuild it (docker compose build) and check the AIMET install step's log",
            ) from None
        return None


def run_selftest(args, command: Sequence[str], quantized: Sequence[int] = (8, 4)) -> int:
    """Generate the set, evaluate the oracle FP32 and (with AIMET) W8A8 and W4A8; exit 0 when all rows pass."""
    from .quantization.simulate import QuantPlan

    device = run.resolve_device(args.use_cuda)
    check_writable(args.results_dir)
    adapter = quantization_adapter()
    options = RunOptions(args.batch_size, args.workers, args.quiet)
    with tempfile.TemporaryDirectory(prefix="hrnet-quanteval-selftest-") as root:
        synth.generate(root, images=args.images, seed=args.seed)
        evalset = open_dataset(root)
        oracle = OraclePoseNet()

        def work(run_id: str, run_dir: str) -> int:
            outcome = run.execute(evalset, device, run_dir, options, fp32=oracle)
            if adapter is None:
                print("AIMET is not installed: quantized self-test rows skipped")
            else:
                for bits in quantized:
                    plan = QuantPlan(param_bw=bits, output_bw=8, calibration_images=args.calibration_images)
                    result, sim = run.quantize_and_evaluate(
                        oracle, plan, evalset, device, run_dir, options, outcome.timer, adapter
                    )
                    run.record_model(outcome, plan.key, result)
                    outcome.quantization[plan.key] = sim.info
            verdict = selftest_verdict(outcome.models)
            record = run.build_report(run_id, command, outcome, verdict, evalset, device, options, {})
            record["dataset"]["synthetic_seed"] = args.seed
            run.finish(run_dir, record, published=False, outcome=outcome, evalset=evalset, visualize=args.visualize)
            return 0 if verdict["status"] == "selftest_passed" else 1

        return in_run_folder(args.results_dir, args.run_id, "selftest", work)

