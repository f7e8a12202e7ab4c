"""The development host: x86-64 (or whatever machine runs the SDK) with ONNX Runtime on the CPU."""
import platform

from edgesdk.targets.descriptor import Target

HOST = Target(
    name="host",
    description="this machine's CPU through ONNX Runtime (development and tests)",
    arch=platform.machine(),
    formats=("onnx",),
    executors=("onnxruntime",),
    precisions=("fp32", "int8"),
    build_on="host",
    power_sensor="none known (probe with the profiler)",
)
