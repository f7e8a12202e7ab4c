"""The development host: x86-64 (or whatever machine runs the SDK) with ONNX Runtime or TVM
on its CPU."""
import os
import platform

from edgesdk.targets.descriptor import Processor, Target

HOST = Target(
    name="host",
    description="this machine's CPU through ONNX Runtime or TVM (development and tests)",
    arch=platform.machine(),
    precisions=("fp32", "fp16", "int8"),
    build_on={"onnxruntime": "host", "tvm": "host"},
    power_sensor="none known (probe with the profiler)",
    slow_precisions={"fp16": "ONNX Runtime's CPU kernels compute FP16 slower than FP32 (most "
                             "ops cast back); FP16 is for GPU targets"},
    toolchains=("onnxruntime", "tvm"),
    # mtriple and mcpu None: filled in from LLVM's view of the machine that builds.
    processors=(Processor(name="cpu", description="this machine's CPU (detected by LLVM)",
                          tvm_target={"kind": "llvm", "mtriple": None, "mcpu": None,
                                      "num-cores": os.cpu_count() or 1},
                          arch=platform.machine()),),
    notes=["INT8 is fast on x86 with VNNI (uint8 activations, int8 weights); without VNNI it "
           "may be slower than FP32 for some stages: profile and let convert --profile choose"],
)
