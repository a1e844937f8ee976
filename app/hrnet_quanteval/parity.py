"""``parity``: the native and the reference engine on the same model and data, compared.

Per instance and joint: the distance between the two engines' image-space keypoints (max, mean, share
within 0.01 px) and the largest maxval difference; per model: all ten COCO stats. Parity holds when every
stat agrees to 1e-4 and at least 99.9 % of joints agree within 0.01 px.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np

from . import run
from .engines.native import NativeEngine
from .evaluation import STAT_NAMES
from .files import sha256_file
from .progress import StageTimer
from .runs import check_writable, in_run_folder
from .runtypes import Outcome, RunOptions

STAT_TOLERANCE = 1e-4
JOINT_TOLERANCE_PX = 0.01
MIN_JOINT_AGREEMENT = 0.999


def compare(
    native_preds: np.ndarray, reference_preds: np.ndarray,
    native_stats: Dict[str, float], reference_stats: Dict[str, float],
) -> Dict[str, object]:
    """The comparison of one model's evaluation by both engines; ``passed`` and ``reasons`` say the verdict."""
    native_preds = np.asarray(native_preds, dtype=np.float64)
    reference_preds = np.asarray(reference_preds, dtype=np.float64)
    if native_preds.shape != reference_preds.shape:
        raise ValueError(f"the engines saw different instances: {native_preds.shape} vs {reference_preds.shape}")
    distance = np.linalg.norm(native_preds[..., :2] - reference_preds[..., :2], axis=-1)
    within = float(np.mean(distance <= JOINT_TOLERANCE_PX)) if distance.size else 1.0
    deltas = {name: native_stats[name] - reference_stats[name] for name in STAT_NAMES}
    reasons: List[str] = [
        f"{name} differs by {delta:+.6f} (native {native_stats[name]:.6f}, reference {reference_stats[name]:.6f})"
        for name, delta in deltas.items() if abs(delta) > STAT_TOLERANCE
    ]
    if within < MIN_JOINT_AGREEMENT:
        reasons.append(f"only {100 * within:.3f} % of joints agree within {JOINT_TOLERANCE_PX} px")
    return {
        "instances": int(native_preds.shape[0]),
        "joints": int(distance.size),
        "max_abs_px": float(distance.max()) if distance.size else 0.0,
        "mean_abs_px": float(distance.mean()) if distance.size else 0.0,
        "fraction_within_tolerance": within,
        "max_abs_maxval": float(np.abs(native_preds[..., 2] - reference_preds[..., 2]).max()) if distance.size else 0.0,
        "stat_deltas": deltas,
        "native": dict(native_stats),
        "reference": dict(reference_stats),
        "passed": not reasons,
        "reasons": reasons,
    }


def parity_verdict(comparisons: Dict[str, Dict[str, object]]) -> Dict[str, object]:
    failed = {model: c["reasons"] for model, c in comparisons.items() if not c["passed"]}
    if failed:
        text = "parity FAILED: " + "; ".join(f"{m}: {', '.join(r)}" for m, r in failed.items())  # type: ignore[arg-type]
    else:
        worst = max(c["max_abs_px"] for c in comparisons.values())  # type: ignore[type-var]
        text = f"parity holds: all stats within {STAT_TOLERANCE:g}, joints at most {worst:.2g} px apart"
    return {
        "status": "parity_failed" if failed else "parity_passed", "text": text,
        "tolerances": {"stat": STAT_TOLERANCE, "joint_px": JOINT_TOLERANCE_PX, "min_joint_agreement": MIN_JOINT_AGREEMENT},
    }


def format_comparison(comparisons: Dict[str, Dict[str, object]]) -> str:
    lines = []
    for model, c in comparisons.items():
        lines.append(
            f"{model}: {c['instances']} instances, joints max {c['max_abs_px']:.3g} px, mean {c['mean_abs_px']:.3g} px, "
            f"{100 * c['fraction_within_tolerance']:.3f} % within {JOINT_TOLERANCE_PX} px, maxvals max {c['max_abs_maxval']:.3g}"
        )
        rows = [f"  {name:5s} native {c['native'][name]:.6f} reference {c['reference'][name]:.6f} "  # type: ignore[index]
                f"delta {c['stat_deltas'][name]:+.2e}" for name in STAT_NAMES]  # type: ignore[index]
        lines += rows
    return "\n".join(lines)


def run_parity(args, command: Sequence[str]) -> int:
    """The ``parity`` subcommand; exit 0 when parity holds, 1 when it does not."""
    from .engines.reference import ReferenceEngine

    device = run.resolve_device(args.use_cuda)
    check_writable(args.results_dir)
    reference = ReferenceEngine()  # fails early, with how to get the lib, when it is missing
    native = NativeEngine()
    options = RunOptions(args.batch_size, args.workers, args.quiet)
    model, artifacts = _model(args)
    evalset = run.open_evalset(args)

    def work(run_id: str, run_dir: str) -> int:
        run.seed_everything(device)
        outcome = Outcome(timer=StageTimer(device), engine="native+reference")
        comparisons: Dict[str, Dict[str, object]] = {}
        engines = {}
        with run.out_of_memory_advice(device, options.batch_size):
            for engine in (native, reference):
                folder = os.path.join(run_dir, engine.name)
                os.makedirs(folder)
                engines[engine.name] = engine.evaluate("fp32", model, evalset, device, folder, options, outcome.timer)
        comparisons["fp32"] = compare(
            engines["native"].preds, engines["reference"].preds, engines["native"].stats, engines["reference"].stats
        )
        outcome.models["fp32"] = engines["native"].stats
        verdict = parity_verdict(comparisons)
        record = run.build_report(run_id, command, outcome, verdict, evalset, device, options, artifacts)
        record["parity"] = comparisons
        record["results_files"] = {f"{e}/fp32": f"{e}/keypoints_fp32_results.json" for e in engines}
        print(format_comparison(comparisons))
        run.finish(run_dir, record, published=False)
        return 0 if verdict["status"] == "parity_passed" else 1

    return in_run_folder(args.results_dir, args.run_id, "parity", work)


def _model(args):
    from .checkpoint import load_hrnet

    if args.oracle:
        from .oracle import OraclePoseNet

        return OraclePoseNet(), {"model": "self-test oracle"}
    if args.checkpoint:
        record = {"path": args.checkpoint, "sha256": sha256_file(args.checkpoint)}
        return load_hrnet(args.checkpoint), {"fp32_checkpoint": record}
    from .artifacts import ArtifactStore, fp32_name

    store = ArtifactStore.from_options(args.artifacts_dir, args.artifacts_url, args.offline, args.quiet)
    fetched = store.fetch(fp32_name())
    for notice in store.notices:
        print(notice)
    return load_hrnet(fetched.path), {"fp32_checkpoint": dict(fetched.record(), source="zoo release")}

