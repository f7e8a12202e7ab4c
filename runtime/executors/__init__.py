"""Executors: one per graph file format, a closed table (no plugins on the device)."""
from edgesdk.registry import Registry

EXECUTORS = Registry("graph format", {
    "onnx": "edgesdk.runtime.executors.ort:OrtGraph",
    "tvm": "edgesdk.runtime.executors.tvm:TvmGraph",
    "tensorrt": "edgesdk.runtime.executors.tensorrt:TensorRTGraph",
    "fpga-csim": "edgesdk.runtime.executors.fpga_csim:FpgaCsimGraph",
    "pynq": "edgesdk.runtime.executors.pynq:PynqGraph",
})
