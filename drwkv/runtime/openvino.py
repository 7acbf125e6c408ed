"""OpenVINO backend for ``precision="bf16"``: a drwkv ONNX export with its matrix products in
bfloat16, on CPUs with bf16 matrix instructions (AVX512-BF16, AMX).

ONNX Runtime's CPU provider has no bf16 MatMul on x86; OpenVINO's CPU plugin runs them with oneDNN.
Only the products by constant weights are made bf16, in memory when the model is loaded (weights
rounded to bf16, activations converted on the way in, results back to float32); everything else
runs in float32. OpenVINO's own bf16 mode (INFERENCE_PRECISION_HINT=bf16) would run the whole graph
in bf16, the portable Bi-WKV's exponentials of log-sums included, and those lose 30% of the output
at bf16's 8-bit mantissa. OpenVINO cannot run drwkv's BiWKV node: the file's BiWKV nodes are
replaced, in memory, by the standard ops of drwkv.runtime.portable (a ``--portable`` export already
has them), which OpenVINO reads from a temporary folder.
"""
import os
import tempfile

import numpy as np

from drwkv.runtime.base import ArtifactError, Denoiser
from drwkv.runtime.onnx import VAE_SHA256_KEY, DECODER_FILE_KEY, read_onnx
from drwkv.runtime.portable import expand_bi_wkv

def bf16_products(model):
    """Rewrite (in place) every MatMul of an ov.Model of tokens [B, T, C] by a constant float32 2-D
    weight to compute in bf16, its output converted back to float32; -> how many. The products of
    one row per image (timestep embedding, adaLN modulation) stay float32: they cost next to nothing,
    in bf16 they cost the Fashion-MNIST model 2.4 dB of PSNR (benchmarks/bench_precision.py --fidelity)."""
    import openvino.opset13 as ops

    count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        weight = node.input_value(1).get_node()
        if (weight.get_type_name() != "Constant" or weight.get_output_element_type(0).get_type_name() != "f32"
                or len(weight.get_output_partial_shape(0)) != 2 or len(node.get_input_partial_shape(0)) != 3):
            continue
        attrs = node.get_attributes()
        product = ops.matmul(ops.convert(node.input_value(0), "bf16"), ops.convert(weight, "bf16"),
                             attrs["transpose_a"], attrs["transpose_b"])
        result = ops.convert(product, "f32")
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(result.output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count


def bf16_support():
    """Why this CPU cannot run bf16 products natively (one line), or None when it can."""
    import openvino

    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return None
    return "this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX), so bf16 would be slower than fp32"


class OpenVINODenoiser(Denoiser):
    """A drwkv ONNX denoiser (default or ``--portable`` export) in OpenVINO with its matrix products in bf16.

    intra_op_threads: OpenVINO's inference threads (default: its own choice).
    """

    name = "openvino"

    def __init__(self, path, intra_op_threads=None):
        import openvino

        self.path = os.fspath(path)
        model, self.config = read_onnx(self.path)
        meta = {p.key: p.value for p in model.metadata_props}
        if meta.get("drwkv.dtype", "fp32") != "fp32":
            raise ArtifactError(f"{self.path} is a {meta['drwkv.dtype']} export: precision bf16 takes a float32 one")
        self.exported_vae_sha256 = meta.get(VAE_SHA256_KEY)
        self.decoder_file = meta.get(DECODER_FILE_KEY)
        why_not = bf16_support()
        if why_not:
            raise ValueError(f"precision bf16: {why_not}; use fp32 or int8")
        try:
            expanded = expand_bi_wkv(model)
        except ValueError as e:
            raise ArtifactError(f"{self.path}: {e}; precision bf16 needs it, use fp32 or int8") from None
        core = openvino.Core()
        if expanded:
            with tempfile.TemporaryDirectory(prefix="drwkv_openvino_") as folder:
                network = core.read_model(_save_with_external_weights(model, folder))
        else:
            network = core.read_model(self.path)
        #: How many matrix products run in bf16.
        self.bf16_products = bf16_products(network)
        # f32 elsewhere: the explicit bf16 products keep their precision under this hint.
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = int(intra_op_threads)
        try:
            self._compiled = core.compile_model(network, "CPU", config)
        except RuntimeError as e:
            raise ArtifactError(f"{self.path}: OpenVINO cannot compile the graph: "
                                f"{str(e).strip().splitlines()[0][:300]}") from None
        self._request = self._compiled.create_infer_request()
        self._out = self._compiled.output("out")

    def forward(self, x, t, y):
        out = self._request.infer({"x": x, "t": t, "y": y})[self._out]
        return np.array(out, np.float32)  # a copy: the request reuses its output buffer


def _save_with_external_weights(model, folder):
    """Write ``model`` (ModelProto) to ``folder`` for OpenVINO to read -> the file's path; the weights
    go to a file of their own, so that models past protobuf's 2 GiB fit too."""
    import onnx

    path = os.path.join(folder, "model.onnx")
    onnx.save_model(model, path, save_as_external_data=True, location="model.weights", size_threshold=1024)
    return path
