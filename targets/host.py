"""The development host: x86-64 (or whatever machine runs the SDK) with ONNX Runtime on the CPU."""
import platform

from edgesdk.targets.descriptor import Target

HOST = Target(
    name="host",
    description="this machine's CPU through ONNX Runtime (development and tests)",
    arch=platform.machine(),
    formats=("onnx",),
    executors=("onnxruntime",),
    precisions=("fp32", "fp16", "int8"),
    build_on="host",
    power_sensor="none known (probe with the profiler)",
    slow_precisions={"fp16": "ONNX Runtime's CPU kernels compute FP16 slower than FP32 (most "
                             "ops cast back); FP16 is for GPU targets"},
    notes=["INT8 is fast on x86 with VNNI (uint8 activations, int8 weights); without VNNI it "
           "may be slower than FP32 for some stages: profile and let convert --profile choose"],
)
