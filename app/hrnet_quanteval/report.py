"""Published targets, the verdict, the terminal table, report.json and report.md."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional

from .errors import InputError
from .evaluation import STAT_NAMES
from .files import os_words
from .runs import describe_status, write_atomic

SCHEMA_VERSION = 1

# AIMET Model Zoo README, hrnet-posenet table (spec 1.1): only AP and AR are published.
PUBLISHED: Dict[str, Dict[str, float]] = {
    "fp32": {"AP": 0.765, "AR": 0.793},
    "w8a8": {"AP": 0.763, "AR": 0.792},
    "w4a8": {"AP": 0.762, "AR": 0.791},
}
PUBLISHED_SOURCE = "AIMET Model Zoo README (quic/aimet-model-zoo), hrnet-posenet, COCO val2017 with GT boxes"
# Published numbers have three decimals: a value within half a unit of the last digit rounds to them.
ROUNDING_TOLERANCE = 0.0005
# Extra allowance per stack. legacy is the published setup (torch 1.9.1, AIMET 1.22.2). current runs
# torch 2.x and aimet-torch 2.x, whose rounding (half to even), range minimum and clamp order differ at
# ties and range edges (spec 9.7), and other convolution kernels; local runs are treated like current.
STACK_ALLOWANCE: Dict[str, float] = {"legacy": 0.0, "current": 0.002, "local": 0.002}
# 0.765 + 0.0005 is 0.7655000000000001 in binary: the edge itself counts as within
FLOAT_SLACK = 1e-12
# The evaluation the published numbers describe: all of val2017 with ground-truth person boxes.
FULL_VAL2017 = {"images": 5000, "instances": 6352}

STAT_LABELS = {
    "AP": "AP @[.50:.95]", "AP50": "AP @.50", "AP75": "AP @.75", "APm": "AP medium", "APl": "AP large",
    "AR": "AR @[.50:.95]", "AR50": "AR @.50", "AR75": "AR @.75", "ARm": "AR medium", "ARl": "AR large",
}


def model_key(param_bw: int, output_bw: int) -> str:
    """Key of a quantized model in report.json, e.g. ``w8a8``."""
    return f"w{param_bw}a{output_bw}"


def tolerance(stack: str) -> float:
    return ROUNDING_TOLERANCE + STACK_ALLOWANCE.get(stack, STACK_ALLOWANCE["local"])


def target_applies(dataset: Mapping[str, object]) -> Optional[str]:
    """None when the run covers what the published numbers describe, else the reason it does not."""
    if dataset.get("max_images") is not None:
        return f"partial run (--max-images {dataset['max_images']})"
    for key, expected in FULL_VAL2017.items():
        if dataset.get(key) != expected:
            return f"dataset has {dataset.get(key)} {key}, COCO val2017 with GT boxes has {expected}"
    return None


def verdict(models: Mapping[str, Mapping[str, float]], dataset: Mapping[str, object], stack: str) -> Dict[str, object]:
    """Compare every model that has a published target; ``status`` is reproduced, not_reproduced or no_target."""
    tol = tolerance(stack)
    reason = target_applies(dataset)
    checks: List[Dict[str, object]] = []
    untargeted = [m for m in models if m not in PUBLISHED]
    if reason is None:
        for name, stats in models.items():
            for stat, target in PUBLISHED.get(name, {}).items():
                delta = stats[stat] - target
                checks.append(
                    {"model": name, "stat": stat, "value": stats[stat], "published": target,
                     "delta": delta, "within": abs(delta) <= tol + FLOAT_SLACK}
                )
    if not checks:
        why = reason or f"no published target for {', '.join(untargeted)}"
        status, text = "no_target", f"no published target: {why}"
    elif all(c["within"] for c in checks):
        status = "reproduced"
        text = f"reproduced: every published AP/AR within +-{tol:.4f}"
    else:
        status = "not_reproduced"
        worst = max(checks, key=lambda c: abs(c["delta"]))
        text = (f"not reproduced: {worst['model']} {worst['stat']} {worst['value']:.4f} vs published "
                f"{worst['published']:.3f} (delta {worst['delta']:+.4f}, tolerance +-{tol:.4f})")
    if untargeted and checks:
        text += f"; no published target for {', '.join(untargeted)}"
    return {"status": status, "text": text, "tolerance": tol, "stack": stack, "checks": checks}


def _cell(value: Optional[float], fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def table_rows(models: Mapping[str, Mapping[str, float]], published: bool = True) -> List[List[str]]:
    """Header plus one row per stat: each model's value and, with ``published``, its target and the delta."""
    header = ["stat"]
    for name in models:
        header += [name.upper(), "published", "delta"] if published else [name.upper()]
    rows = [header]
    for stat in STAT_NAMES:
        row = [stat]
        for name, stats in models.items():
            value = stats.get(stat)
            row.append(_cell(value))
            if published:
                target = PUBLISHED.get(name, {}).get(stat)
                delta = None if target is None or value is None else value - target
                row += [_cell(target, "{:.3f}"), _cell(delta, "{:+.4f}")]
        rows.append(row)
    return rows


def format_table(models: Mapping[str, Mapping[str, float]], verdict_text: str, published: bool = True) -> str:
    """The terminal table and verdict line."""
    rows = table_rows(models, published)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + ["", f"verdict: {verdict_text}"])


def markdown(report: Mapping[str, object], published: bool = True) -> str:
    """report.md: the same facts as report.json, for people."""
    models = report["models"]
    rows = table_rows(models, published)  # type: ignore[arg-type]
    out = [f"# hrnet-quanteval run {report['run_id']}", "", f"**Verdict:** {report['verdict']['text']}", ""]  # type: ignore[index]
    out.append("| " + " | ".join(rows[0]) + " |")
    out.append("|" + "---|" * len(rows[0]))
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    out += ["", f"Published: {PUBLISHED_SOURCE}. Stats: pycocotools COCOeval keypoints, maxDets 20.", ""]
    for section in ("dataset", "settings", "artifacts", "quantization", "timings", "environment"):
        values = report.get(section)
        if not values:
            continue
        out += [f"## {section.capitalize()}", ""]
        for key, value in values.items():  # type: ignore[union-attr]
            out.append(f"- {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
        out.append("")
    out += ["## Command", "", "```", " ".join(report.get("command", [])), "```", ""]  # type: ignore[arg-type]
    return "\n".join(out)


def write_report(run_dir: str, report: Mapping[str, object], published: bool = True) -> None:
    """report.md, then report.json; if report.json cannot be written, report.md goes too: no half report."""
    md = os.path.join(run_dir, "report.md")
    write_atomic(md, markdown(report, published))
    try:
        write_atomic(os.path.join(run_dir, "report.json"), json.dumps(report, indent=2, sort_keys=False) + "\n")
    except BaseException:
        os.remove(md)
        raise



def load_report(path: str) -> Dict[str, object]:
    """report.json of a run folder (or the file itself), checked for the shape ``compare`` reads, or an error
    naming the path; a run folder without one is described from its status.json (running, did not finish...)."""
    file = os.path.join(path, "report.json") if os.path.isdir(path) else path
    fix = "pass a run folder or a report.json written by hrnet-quanteval"
    try:
        with open(file) as f:
            content = json.load(f)
    except FileNotFoundError:
        folder = path if os.path.isdir(path) else os.path.dirname(file)
        if os.path.exists(os.path.join(folder, "status.json")):
            raise InputError(f"{folder} has no report.json: {describe_status(folder)}", "compare finished runs") from None
        raise InputError(f"{file} does not exist", fix) from None
    except OSError as error:
        raise InputError(f"cannot read {file}: {os_words(error)}", fix) from None
    except (ValueError, RecursionError) as error:
        raise InputError(f"{file} is not JSON ({error})", fix) from None
    models = content.get("models") if isinstance(content, dict) else None
    if not isinstance(models, dict) or not models:
        raise InputError(f"{file} is not an hrnet-quanteval report (no models)", fix)
    for name, stats in models.items():
        if not isinstance(stats, dict):
            raise InputError(f"{file}: models.{name} is not a table of stats", fix)
        bad = [k for k, v in stats.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if bad:
            raise InputError(f"{file}: models.{name}.{bad[0]} is {stats[bad[0]]!r}, not a number", fix)
    for section in ("environment", "verdict"):
        if section in content and not isinstance(content[section], dict):
            raise InputError(f"{file}: {section} is a {type(content[section]).__name__}, not an object", fix)
    return content


ENVIRONMENT_KEYS = ("stack", "device", "gpu_name", "torch", "cuda", "aimet", "numpy", "opencv", "app_git_commit")


def compare_runs(path_a: str, path_b: str) -> str:
    """The ten stats of every model of two runs side by side, with B - A for models both have."""
    a, b = load_report(path_a), load_report(path_b)
    names = list(dict.fromkeys(list(a["models"]) + list(b["models"])))  # type: ignore[arg-type]
    header = ["stat"]
    for name in names:
        header += [f"A {name.upper()}", f"B {name.upper()}", "B-A"]
    rows = [header]
    for stat in STAT_NAMES:
        row = [stat]
        for name in names:
            va = a["models"].get(name, {}).get(stat)  # type: ignore[union-attr]
            vb = b["models"].get(name, {}).get(stat)  # type: ignore[union-attr]
            row += [_cell(va), _cell(vb), _cell(None if va is None or vb is None else vb - va, "{:+.4f}")]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"A: {a.get('run_id')} ({path_a})", f"B: {b.get('run_id')} ({path_b})", ""]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    differing = [k for k in ENVIRONMENT_KEYS if env_a.get(k) != env_b.get(k)]  # type: ignore[union-attr]
    lines.append("")
    for key in differing:
        lines.append(f"{key}: A {env_a.get(key)}  B {env_b.get(key)}")  # type: ignore[union-attr]
    lines.append(f"verdict A: {a.get('verdict', {}).get('text')}")  # type: ignore[union-attr]
    lines.append(f"verdict B: {b.get('verdict', {}).get('text')}")  # type: ignore[union-attr]
    return "\n".join(lines)
