"""Convert a saved ``torch.export`` program to a LiteRT ``.tflite`` file, FP32 or INT8.

Runs as a script in whichever Python environment has ``litert-torch``: the control
plane's own when the extra is installed there, or a separate one named by
``EDGEFLEET_LITERT_PYTHON`` (litert-torch pins its own pydantic and pulls JAX, which
the control plane's environment should not have to accept). It imports nothing from
EdgeFleet, only torch, numpy and litert-torch, so both environments can run it.

    python litert_convert.py --program model.pt2 --out model.tflite [--calibration calib.npy]

INT8 is litert-torch's PT2E route: symmetric per-channel int8 weights, int8
activations calibrated on the given batch (N x C x H x W float32), float input and
output, which is what the device's LiteRT backend feeds and reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _module_scoped(base: type, module_names: list[str]) -> type:
    """``base`` (litert-torch's PT2E quantizer, which only knows a global config) restricted to
    the named submodules: annotations on every other node are dropped, so they stay float."""
    if not module_names:
        return base

    def inside(node: object) -> bool:
        stack = getattr(node, "meta", {}).get("nn_module_stack") or {}
        return any(path.split(".")[0] in module_names for path, _ in stack.values())

    class ModuleScoped(base):  # type: ignore[misc]
        def annotate(self, model):  # type: ignore[no-untyped-def]
            model = super().annotate(model)
            for node in model.graph.nodes:
                if not inside(node):
                    node.meta.pop("quantization_annotation", None)
            return model

    return ModuleScoped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--program", type=Path, required=True, help="torch.export.save() output")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, help=".npy batch; given = INT8, absent = FP32")
    parser.add_argument("--quantize-module", action="append", default=[],
                        help="quantize only this submodule (repeatable); the rest stays float")
    args = parser.parse_args(argv)

    import litert_torch
    import numpy as np
    import torch

    program = torch.export.load(str(args.program))
    example = tuple(torch.zeros(tuple(spec.shape), dtype=spec.dtype)
                    for spec in (node.meta["val"] for node in program.graph.nodes if node.op == "placeholder"
                                 and node.name in program.graph_signature.user_inputs))
    module = program.module()
    quant_config = None
    if args.calibration is not None:
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

        calibration = np.load(args.calibration)
        # litert-torch's own scheme: histogram-calibrated activations (min/max calibration
        # measured 1.5 pp worse on the test set's shapes model).
        config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
        quantizer = _module_scoped(pt2e_quantizer.PT2EQuantizer, args.quantize_module)().set_global(config)
        module = quantize_pt2e.prepare_pt2e(module, quantizer)
        with torch.no_grad():
            for item in calibration:
                module(torch.from_numpy(item[np.newaxis]))
        module = quantize_pt2e.convert_pt2e(module, fold_quantize=False)
        # Without quant_config the converter keeps the Q/DQ pairs as float ops around
        # float kernels (measured 20x slower than FP32); with it, int8 kernels.
        quant_config = QuantConfig(pt2e_quantizer=quantizer)
    edge_model = litert_torch.convert(module, example, quant_config=quant_config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    edge_model.export(str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
