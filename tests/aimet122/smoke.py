"""Smoke run of AIMET 1.22.2's own Python (shared sources) with our stand-in numeric core, on the legacy stack.

    .venv-legacy/bin/python tests/aimet122/smoke.py [--out DIR] [--skip-hrnet]

AIMET 1.22.2 Python, stand-in numeric core: the calls and the control flow are AIMET 1.22.2's (QuantizationSimModel,
wrappers, config parser, fold_all_batch_norms, compute_encodings, set_and_freeze_param_encodings, export); the
arithmetic is ours (tests/aimet122/standin), written to AIMET's TF-scheme rules. Nothing here proves AIMET's C++.

Checks, each printed with that label:
  1. a tiny conv, by hand: per-channel symmetric weights (and an all-positive channel, which unsigned_symmetric
     turns asymmetric), asymmetric input/output encodings, quantize-dequantize values equal to the formulas,
     round-half-away at an exact tie, the kernel writing into its input tensor;
  2. HRNet-W32 (hrnet_quanteval.model.pose_hrnet_w32): AIMET's fold_all_batch_norms, QuantizationSimModel with
     quant_scheme 'tf', rounding 'nearest', per_channel_aimet1.json, param bw 8 and 4, output bw 8: enabled
     quantizers before and after compute_encodings (expected 325 activation + 293 param = 618), a forward pass,
     export (.pth, .onnx, .encodings), set_and_freeze_param_encodings with a flat file (293 frozen).
Exit 0 when every check holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))           # the overlay helper sits beside this script (tests/, never app/)

import aimet122_overlay as ov  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

CONFIG = HERE.parents[1] / "app" / "hrnet_quanteval" / "quantsim_config" / "per_channel_aimet1.json"
FOLD_SHAPE = (1, 3, 256, 192)
CALIB_SHAPE = (1, 3, 128, 96)           # HRNet is fully convolutional; a smaller calibration input saves CPU time
EXPECTED = {"activation": 325, "param": 293, "total": 618}


def say(message: str) -> None:
    print("[%s] %s" % (ov.LABEL, message), flush=True)


def quiet_aimet() -> None:
    """AIMET's area loggers to WARNING (importing aimet_torch.quantsim resets them, so import it first)."""
    import aimet_torch.batch_norm_fold  # noqa: F401
    import aimet_torch.quantsim  # noqa: F401
    from aimet_common.utils import AimetLogger
    AimetLogger.set_level_for_all_areas(logging.WARNING)


def make_sim(model, param_bw: int, dummy_shape=FOLD_SHAPE):
    from aimet_torch.quantsim import QuantizationSimModel
    return QuantizationSimModel(model, dummy_input=torch.zeros(dummy_shape), quant_scheme="tf",
                                rounding_mode="nearest", default_output_bw=8, default_param_bw=param_bw,
                                config_file=str(CONFIG))


# ------------------------------------------------------------------------------------------------ tiny conv
class TinyConv(torch.nn.Module):
    """One 1x1 conv, 2 -> 2 channels, with known weights; the sim quantizes its input, weights and output."""

    WEIGHT = [[1.0, -0.5], [0.3, 0.6]]      # channel 0 signed (symmetric grid), channel 1 all positive (unsigned)
    BIAS = [0.1, -0.2]

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(self.WEIGHT).reshape(2, 2, 1, 1))
            self.conv.bias.copy_(torch.tensor(self.BIAS))

    def forward(self, x):
        return self.conv(x)


def tiny_checks() -> Dict[str, object]:
    """The hand-computed checks on TinyConv; returns what was measured (asserts on the way)."""
    tfm = ov.load_math()
    f32 = np.float32
    calib = torch.tensor([0.2, -0.4]).reshape(1, 2, 1, 1)
    probe = torch.tensor([0.1, -0.13]).reshape(1, 2, 1, 1)
    sim = make_sim(TinyConv().eval(), 8, dummy_shape=(1, 2, 1, 1))
    sim.compute_encodings(lambda model, _: model(calib.clone()), None)
    wrapper = sim.model.conv

    # weights, by hand: channel 0 symmetric, M = 1.0, delta = 1/127, offset -128; channel 1 min >= 0 so asymmetric
    enc0, enc1 = wrapper.param_quantizers["weight"].encoding
    assert (enc0.delta, enc0.offset, enc0.min, enc0.max, enc0.bw) == (1.0 / 127, -128.0, -128.0 / 127, 1.0, 8), enc0
    top = float(f32(0.6))
    assert (enc1.min, enc1.max, enc1.offset) == (0.0, top, 0.0) and enc1.delta == top / 255, enc1

    # input (asymmetric): m = -0.4, M = 0.2 (as float32, widened to double); zero level round(-m/delta) = 170
    m, big_m = float(f32(-0.4)), float(f32(0.2))
    delta = (big_m - m) / 255
    zero = float(np.floor(-m / delta + 0.5))
    enc_in = wrapper.input_quantizers[0].encoding
    assert (enc_in.delta, enc_in.offset, enc_in.min) == (delta, -zero, -zero * delta), enc_in
    assert enc_in.max == big_m - m + enc_in.min, enc_in

    # output encoding: statistics of conv(float input, fake-quantized weights)
    def qdq(values, enc):
        return tfm.quantize_dequantize_reference(values, tfm.kernel_grid(enc.min, enc.max, enc.bw))
    w = np.asarray(TinyConv.WEIGHT, dtype=f32)
    wq = np.stack([qdq(w[0], enc0), qdq(w[1], enc1)])
    conv = lambda xv, wv: torch.nn.functional.conv2d(  # noqa: E731
        torch.tensor(xv).reshape(1, 2, 1, 1), torch.tensor(wv).reshape(2, 2, 1, 1), torch.tensor(TinyConv.BIAS)).reshape(-1).numpy()
    y_cal = conv(calib.reshape(-1).numpy(), wq).astype(np.float64)
    want_out = tfm.compute_encoding(min(y_cal), max(y_cal), 8, symmetric=False)
    enc_out = wrapper.output_quantizers[0].encoding
    assert (enc_out.min, enc_out.max, enc_out.delta, enc_out.offset) == (
        want_out.min, want_out.max, want_out.delta, want_out.offset), (enc_out, want_out)

    # a forward pass: qdq(input) -> conv with qdq(weights) -> qdq(output), each by the spec's formula
    x = probe.clone()
    got = sim.model(x).detach().reshape(-1).numpy()
    want = qdq(conv(qdq(probe.reshape(-1).numpy(), enc_in), wq), enc_out)
    assert np.array_equal(got, want), (got, want)
    # AIMET 1.22.2's kernel writes into the tensor it is given: the caller's input now holds its quantized values
    assert np.array_equal(x.reshape(-1).numpy(), qdq(probe.reshape(-1).numpy(), enc_in)), x

    # round half away from zero at an exact tie: grid [0, 15.9375], delta 1/16; 2.5 * delta -> 3 * delta
    quantizer = wrapper.output_quantizers[0]
    tie = torch.tensor([2.5 / 16, -0.0, 15.9375, 99.0])
    from aimet_common import libpymo
    enc = libpymo.TfEncoding()
    enc.min, enc.max, enc.bw = 0.0, 15.9375, 8
    tied = quantizer._cppOp[0].quantizeDequantize(tie.clone(), enc, libpymo.RoundingMode.ROUND_NEAREST, False)
    assert tied.tolist() == [3 / 16, 0.0, 15.9375, 15.9375], tied
    return {"weight": [enc0, enc1], "input": enc_in, "output": enc_out, "forward": got.tolist(),
            "tie": tied.tolist()}


# ------------------------------------------------------------------------------------------------ HRNet-W32
def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so that folding changes the weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            n = bn.num_features
            bn.weight.copy_(0.5 + torch.rand(n, generator=gen))
            bn.bias.copy_(0.2 * torch.randn(n, generator=gen))
            bn.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def calibrate(model, _args=None):
    """Two forward passes of fixed random data (AIMET calls this as cb(sim.model, args) under no_grad, eval)."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        model(torch.randn(CALIB_SHAPE, generator=gen))


def hrnet_checks(out_dir: Path, log=say) -> Dict[str, object]:
    """The HRNet-W32 run; returns counts, timings and paths (asserts on the way)."""
    from aimet_torch.batch_norm_fold import fold_all_batch_norms

    from hrnet_quanteval.model import pose_hrnet_w32

    result: Dict[str, object] = {}
    t0 = time.time()
    torch.manual_seed(0)
    model = pose_hrnet_w32().eval()
    randomise_bn(model)
    probe = torch.randn(CALIB_SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(probe)
    pairs = fold_all_batch_norms(model, FOLD_SHAPE)
    with torch.no_grad():
        after = model(probe)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    result["fold"] = {
        "pairs": len(pairs),
        "identity": sum(isinstance(m, torch.nn.Identity) for m in model.modules()),
        "batchnorm_left": sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()),
        "convs": len(convs), "convs_with_bias": sum(c.bias is not None for c in convs),
        "max_abs_diff": float((before - after).abs().max()), "scale": float(before.abs().max()),
    }
    log("fold_all_batch_norms: %s (%.0f s)" % (result["fold"], time.time() - t0))
    assert result["fold"]["pairs"] == 292 and result["fold"]["identity"] == 292, result["fold"]
    assert result["fold"]["convs_with_bias"] == 293 == result["fold"]["convs"], result["fold"]
    assert result["fold"]["max_abs_diff"] <= 1e-4 * max(1.0, result["fold"]["scale"]), result["fold"]

    for bw in (8, 4):
        t1 = time.time()
        sim = make_sim(model, bw)
        built = ov.count_enabled_quantizers(sim.model)
        sim.compute_encodings(calibrate, None)
        calibrated = ov.count_enabled_quantizers(sim.model)
        with torch.no_grad():
            out = sim.model(probe.clone())
        result["W%dA8" % bw] = {"built": built, "calibrated": calibrated, "output_shape": list(out.shape),
                                "finite": bool(torch.isfinite(out).all())}
        log("W%dA8 enabled quantizers: after construction %s, after compute_encodings %s (%.0f s)"
            % (bw, built, calibrated, time.time() - t1))
        assert built == EXPECTED and calibrated == EXPECTED, (built, calibrated)
        assert list(out.shape) == [1, 17, CALIB_SHAPE[2] // 4, CALIB_SHAPE[3] // 4] and torch.isfinite(out).all()
        if bw == 8:
            t2 = time.time()
            sim.export(str(out_dir), "hrnet_w8a8", torch.zeros(FOLD_SHAPE))
            written = sorted(p.name for p in out_dir.iterdir())
            exported = json.loads((out_dir / "hrnet_w8a8.encodings").read_text())
            result["export"] = {"files": written, "param_encodings": len(exported["param_encodings"]),
                                "activation_encodings": len(exported["activation_encodings"]),
                                "version": exported["version"]}
            log("export: %s (%.0f s)" % (result["export"], time.time() - t2))
            assert {"hrnet_w8a8.pth", "hrnet_w8a8.onnx", "hrnet_w8a8.encodings",
                    "hrnet_w8a8_torch.encodings"} <= set(written), written
            assert result["export"]["param_encodings"] == 293, result["export"]
            flat = ov.flat_weight_encodings(sim.model)
            flat_path = out_dir / "hrnet_w8_flat.encodings"
            flat_path.write_text(json.dumps(flat, sort_keys=True, indent=4))
            result["flat_file"] = str(flat_path)
            reference_out = out
        else:
            # the W4 sim loads the W8 sim's weight encodings from the flat file: AIMET 1.22.2 sets and freezes
            # them, the file's bitwidth (8) overriding default_param_bw (4); recalibrating keeps them
            sim.set_and_freeze_param_encodings(str(flat_path))
            frozen = ov.frozen_param_quantizers(sim.model)
            bitwidths = sorted({q.bitwidth for q in frozen.values()})
            sim.compute_encodings(calibrate, None)
            with torch.no_grad():
                out_frozen = sim.model(probe.clone())
            same = bool(torch.equal(out_frozen, reference_out))
            result["freeze"] = {"frozen": len(frozen), "bitwidths": bitwidths,
                                "still_frozen_after_calibration": len(ov.frozen_param_quantizers(sim.model)),
                                "output_equals_w8a8": same}
            log("set_and_freeze_param_encodings(flat file) on the W4A8 sim: %s" % result["freeze"])
            assert len(frozen) == 293 and bitwidths == [8] and same, result["freeze"]
    result["seconds"] = round(time.time() - t0, 1)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the export (default: a temporary folder)")
    parser.add_argument("--skip-hrnet", action="store_true", help="only the tiny-conv checks")
    args = parser.parse_args(argv)
    reason = ov.unavailable_reason()
    if reason:
        print("cannot run: %s" % reason, file=sys.stderr)
        return 1
    with ov.activated():
        quiet_aimet()
        import aimet_torch.quantsim as quantsim_module
        say("aimet_torch.quantsim from %s" % quantsim_module.__file__)
        tiny = tiny_checks()
        say("tiny conv by hand: weights %s, input %s, output %s, forward %s, tie %s -> OK"
            % (tiny["weight"], tiny["input"], tiny["output"], tiny["forward"], tiny["tie"]))
        if not args.skip_hrnet:
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                result = hrnet_checks(out)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    result = hrnet_checks(Path(tmp))
            say("HRNet-W32: all checks hold (%s s)" % result["seconds"])
    say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
