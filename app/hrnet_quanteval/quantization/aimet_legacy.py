"""AIMET 1.22 adapter (the ``legacy`` image: the zoo's published setup).

Written against AIMET 1.22.2's source (quic/aimet, tag 1.22.2): ``QuantizationSimModel(model, dummy_input,
quant_scheme, rounding_mode, default_output_bw, default_param_bw, in_place, config_file, default_data_type)``,
``compute_encodings(callback, args)`` calling ``callback(sim.model, args)``,
``set_and_freeze_param_encodings(path)``, ``fold_all_batch_norms(model, input_shapes)``, wrappers
``QcQuantizeWrapper`` with ``param_quantizers`` (dict), ``input_quantizers``/``output_quantizers`` (lists)
of tensor quantizers with ``enabled``, ``bitwidth``, ``use_symmetric_encodings`` and ``encoding``
(libpymo ``TfEncoding``: ``min``, ``max``, ``delta``, ``offset``, ``bw``).

AIMET 1.22 wheels exist only for Python 3.8 and CUDA; no test here can import them. Reused modules need no
work in this generation: 1.22 wraps HRNet's shared ReLUs once, which is the behaviour being reproduced.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
from torch import nn

from .base import AdapterBase


class Adapter(AdapterBase):
    generation = 1
    package = "AimetTorch"
    config_name = "per_channel_aimet1.json"

    def __init__(self) -> None:
        from aimet_common.utils import AimetLogger
        from aimet_torch.batch_norm_fold import fold_all_batch_norms
        from aimet_torch.qc_quantize_op import QcQuantizeWrapper
        from aimet_torch.quantsim import QuantizationSimModel

        super().__init__(AimetLogger)
        self._fold = fold_all_batch_norms
        self._sim_class = QuantizationSimModel
        self._wrapper = QcQuantizeWrapper

    def create_sim(self, model: nn.Module, dummy: torch.Tensor, param_bw: int, output_bw: int):
        # the zoo's call: quant_scheme "tf", rounding_mode left at its default "nearest"
        return self._sim_class(
            model, dummy_input=dummy, quant_scheme="tf", rounding_mode="nearest",
            default_output_bw=output_bw, default_param_bw=param_bw, config_file=self.config_file,
        )

    def _wrappers(self, sim):
        return [(name, m) for name, m in sim.model.named_modules() if isinstance(m, self._wrapper)]

    def param_channels(self, sim) -> Dict[str, int]:
        return {
            f"{name}.{param}": int(getattr(wrapper._module_to_wrap, param).shape[0])  # noqa: SLF001
            for name, wrapper in self._wrappers(sim)
            for param, quantizer in wrapper.param_quantizers.items()
            if quantizer.enabled
        }

    def load_param_encodings(self, sim, encodings: Dict[str, List[dict]], path: str) -> None:
        # ``match_encodings`` has checked every key, so 1.22's silent no-match cannot happen here
        sim.set_and_freeze_param_encodings(encoding_path=path)

    def fold_param_quantizers(self, sim) -> bool:
        """AIMET 1.22 has no way to quantize weights once; the sim keeps doing it per forward pass."""
        return False

    def compute_encodings(self, sim, callback: Callable[[nn.Module], None]) -> None:
        sim.compute_encodings(lambda model, _: callback(model), None)

    def summary(self, sim) -> Dict[str, int]:
        activation = params = 0
        for _, wrapper in self._wrappers(sim):
            activation += sum(q.enabled for q in list(wrapper.input_quantizers) + list(wrapper.output_quantizers))
            params += sum(q.enabled for q in wrapper.param_quantizers.values())
        return {"activation": activation, "param": params, "enabled": activation + params}

    def export_param_encodings(self, sim) -> Dict[str, List[dict]]:
        out = {}
        for name, wrapper in self._wrappers(sim):
            for param, quantizer in wrapper.param_quantizers.items():
                if not quantizer.enabled or quantizer.encoding is None:
                    continue
                encodings = quantizer.encoding if isinstance(quantizer.encoding, list) else [quantizer.encoding]
                out[f"{name}.{param}"] = [
                    {"bitwidth": e.bw, "dtype": "int", "is_symmetric": str(quantizer.use_symmetric_encodings),
                     "max": e.max, "min": e.min, "offset": e.offset, "scale": e.delta}
                    for e in encodings
                ]
        return out
