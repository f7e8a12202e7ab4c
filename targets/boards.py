"""Descriptors of the boards edgesdk deploys to: precision rules, toolchains, processors and
their TVM targets, C library floor, power sensor. Data only."""
import dataclasses

from edgesdk.targets.descriptor import Fabric, Processor, Target

AARCH64_GNU = "aarch64-linux-gnu-g++"
AARCH64_PACKAGE = "g++-aarch64-linux-gnu"
# The onnxruntime-gpu wheels built for JetPack carry the CUDA and TensorRT providers.
JETPACK_PROVIDERS = {p: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                         "CPUExecutionProvider"] for p in ("fp32", "fp16", "int8")}

TX2_CPU = Processor(
    name="cpu",
    description="4x Cortex-A57 (NEON) + 2x Denver2; TVM code is tuned for the A57 cluster",
    tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a57",
                "mattr": ["+neon"], "num-cores": 4},
    arch="aarch64", cross_compiler=AARCH64_GNU, cross_package=AARCH64_PACKAGE)

TX2_GPU = Processor(
    name="gpu",
    description="256-core Pascal GPU (CUDA compute capability 6.2), TVM tag nvidia/jetson-tx2",
    tvm_target={"tag": "nvidia/jetson-tx2",
                "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a57",
                         "mattr": ["+neon"]}},
    arch="aarch64", kernels="cuda", cross_compiler=AARCH64_GNU, cross_package=AARCH64_PACKAGE,
    device_build="nvcc -ptx -arch=sm_62 (CUDA 10.2 from JetPack 4.6; nvcc 12+ dropped sm_62)")

SD865_CPU_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a77",
                    "mattr": ["+neon", "+dotprod"], "num-cores": 4}

SD865_CPU = Processor(
    name="cpu",
    description="Kryo 585: 1+3 Cortex-A77-class big cores (dot-product instructions) + 4 A55",
    tvm_target=SD865_CPU_TARGET, arch="aarch64", cross_compiler=AARCH64_GNU,
    cross_package=AARCH64_PACKAGE)

SD865_GPU = Processor(
    name="gpu",
    description="Adreno 650 through OpenCL (kernels compiled by the board's OpenCL driver "
                "when the library loads)",
    tvm_target={"kind": "opencl", "device": "adreno",
                "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a77",
                         "mattr": ["+neon", "+dotprod"]}},
    arch="aarch64", kernels="opencl", cross_compiler=AARCH64_GNU, cross_package=AARCH64_PACKAGE,
    device_build="none: the OpenCL driver compiles the embedded kernel source at load time")

JETSON_TX2 = Target(
    name="jetson-tx2",
    description="NVIDIA Jetson TX2: 4x Cortex-A57 + 2x Denver2 CPU, 256-core Pascal GPU "
                "(sm_62), JetPack 4.6 (Ubuntu 18.04, CUDA 10.2, TensorRT 8.2, Python 3.6)",
    arch="aarch64",
    precisions=("fp32", "fp16", "int8"),
    build_on={"onnxruntime": "host", "tvm": "host (CUDA kernels: PTX made on the board)",
              "tensorrt": "device"},
    tensorrt="8.2",
    power_sensor="INA3221 (iio on JetPack 4, hwmon on JetPack 5)",
    max_opset=13,
    default_precision="fp16",
    slow_precisions={"int8": "the TX2's Pascal GPU (sm_62) has no fast INT8 path: INT8 runs no "
                             "faster than FP16 there, with more accuracy lost"},
    int8_activations="int8-symmetric",
    int8_no_bool=True,
    toolchains=("onnxruntime", "tvm", "tensorrt"),
    processors=(TX2_CPU, TX2_GPU),
    os="linux",
    glibc="2.27",
    memory_mb=8192,  # 8 GB LPDDR4, shared by the CPU and the GPU
    onnxruntime_providers=JETPACK_PROVIDERS,
    notes=["TensorRT 8.2 reads ONNX opset <= 13 and needs Q/DQ zero points of 0",
           "TensorRT engines are built on the board itself",
           "glibc 2.27 (Ubuntu 18.04): every library built for it must need no newer symbol"],
)

SNAPDRAGON_865 = Target(
    name="snapdragon-865",
    description="Qualcomm Snapdragon 865 development board (e.g. RB5 on Ubuntu 18.04): Kryo 585 "
                "CPU (Cortex-A77/A55, dot-product instructions), Adreno 650 GPU, Hexagon 698 DSP",
    arch="aarch64",
    precisions=("fp32", "fp16", "int8"),
    build_on={"onnxruntime": "host", "tvm": "host"},
    power_sensor="Linux power_supply (voltage_now x current_now)",
    default_precision="int8",
    toolchains=("onnxruntime", "tvm"),
    processors=(SD865_CPU, SD865_GPU),
    os="linux",
    glibc="2.27",
    memory_mb=8192,  # RB5: 8 GB LPDDR5; phones ship 6-12 GB (the runtime also reads its own)
    # onnxruntime-qnn: the Hexagon (HTP) backend runs quantized graphs; XNNPACK the float CPU
    # kernels on ARM. Whatever neither takes falls to the CPU provider.
    onnxruntime_providers={"int8": ["QNNExecutionProvider", "CPUExecutionProvider"],
                           "fp16": ["XNNPACKExecutionProvider", "CPUExecutionProvider"],
                           "fp32": ["XNNPACKExecutionProvider", "CPUExecutionProvider"]},
    notes=["INT8 (uint8 activations, int8 weights) uses the CPU's dot-product instructions and "
           "the Hexagon DSP; FP16 suits the Adreno GPU"],
)

# The same SoC in a phone: Android's C library (bionic) and linking with the NDK.
SNAPDRAGON_865_ANDROID = dataclasses.replace(
    SNAPDRAGON_865,
    name="snapdragon-865-android",
    description="A Snapdragon 865 phone on Android (bionic libc): TVM stages as object-file "
                "archives linked into the app with the Android NDK",
    build_on={"onnxruntime": "host", "tvm": "host (objects), linked by the NDK"},
    power_sensor="Android BatteryManager / power_supply (voltage_now x current_now)",
    processors=(dataclasses.replace(
        SD865_CPU, tvm_target=dict(SD865_CPU_TARGET, mtriple="aarch64-linux-android"),
        artifact="object-archive", cross_compiler=None, cross_package=None,
        device_build="link with the NDK: $NDK/toolchains/llvm/prebuilt/*/bin/"
                     "aarch64-linux-android24-clang++ -shared -o stage.so *.o"),),
    os="android",
    glibc=None,
    # Android's onnxruntime also carries NNAPI, the fallback where QNN is not packaged.
    onnxruntime_providers=dict(SNAPDRAGON_865.onnxruntime_providers, int8=[
        "QNNExecutionProvider", "NnapiExecutionProvider", "CPUExecutionProvider"]),
    notes=SNAPDRAGON_865.notes + [
        "Android linking needs the NDK, which is not part of edgesdk: the archive holds the "
        "object files and the link line"],
)

X86_NVIDIA = Target(
    name="x86-nvidia",
    description="An x86-64 Linux host with a desktop or data-centre NVIDIA GPU (compute "
                "capability 7.5 or newer) and TensorRT 10.x",
    arch="x86_64",
    precisions=("fp32", "fp16", "int8"),
    build_on={"onnxruntime": "host", "tensorrt": "device"},
    power_sensor="NVML (nvidia-smi's power.draw)",
    default_precision="fp16",
    int8_activations="int8-symmetric",
    int8_no_bool=True,
    toolchains=("onnxruntime", "tensorrt"),
    tensorrt="10",
    onnxruntime_providers={p: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                               "CPUExecutionProvider"] for p in ("fp32", "fp16", "int8")},
    notes=["TensorRT engines are built on the machine with the GPU that runs them"],
)


def _zynq(name, description, arch, fabric, memory_mb, notes):
    """A Zynq board: ARM cores run the runtime and the exit decisions, the fabric runs the
    stages and heads built with hls4ml."""
    return Target(
        name=name, description=description, arch=arch,
        precisions=("fp32", "int8"),
        build_on={"onnxruntime": "host", "hls4ml": "host (C simulation here; synthesis with "
                                                  "Vitis HLS where it is installed)"},
        power_sensor="board PMBus regulators (not read by edgesdk yet)",
        default_precision="int8",
        toolchains=("onnxruntime", "hls4ml"),
        fabric=fabric,
        memory_mb=memory_mb,
        notes=notes)


# Resources: AMD's Zynq product tables (BRAM counted in 18 Kb halves). Clocks are the design
# clocks edgesdk estimates latency with (what hls4ml projects for these parts usually close).
ULTRA96_V2 = _zynq(
    "ultra96-v2", "Avnet Ultra96-V2: Zynq UltraScale+ ZU3EG (4x Cortex-A53 + programmable "
                  "logic), 2 GB LPDDR4, PYNQ image", "aarch64",
    Fabric(part="xczu3eg-sbva484-1-e", clock_mhz=200.0, dsp=360, bram_18k=432, lut=70560,
           ff=141120),
    2048,
    ["CoDeNet's board: 4-bit weights and 8-bit activations fit its 360 DSPs by putting small "
     "products in LUTs"])

ZCU104 = _zynq(
    "zcu104", "AMD ZCU104: Zynq UltraScale+ ZU7EV (4x Cortex-A53, Mali GPU, programmable logic "
              "with UltraRAM)", "aarch64",
    Fabric(part="xczu7ev-ffvc1156-2-e", clock_mhz=250.0, dsp=1728, bram_18k=624, lut=230400,
           ff=460800),
    2048,  # the processing system's 2 GB DDR4
    ["96 UltraRAM blocks are not counted in the BRAM budget"])

PYNQ_Z2 = _zynq(
    "pynq-z2", "TUL PYNQ-Z2: Zynq-7000 XC7Z020 (2x Cortex-A9 + programmable logic), 512 MB",
    "armv7l",
    Fabric(part="xc7z020clg400-1", clock_mhz=100.0, dsp=220, bram_18k=280, lut=53200,
           ff=106400),
    512,
    ["A 7-series part: Vitis HLS supports it; the ARM cores are 32-bit"])


# A current Snapdragon phone: 8 Gen 3 (SM8650), Android's C library, linked with the NDK.
SNAPDRAGON_8_GEN_3_ANDROID = dataclasses.replace(
    SNAPDRAGON_865_ANDROID,
    name="snapdragon-8-gen-3-android",
    description="A Snapdragon 8 Gen 3 (SM8650) phone on Android: Kryo CPU (1x Cortex-X4, 5x "
                "Cortex-A720, 2x Cortex-A520; Armv9 with dot-product and int8 matrix "
                "instructions), Adreno 750 GPU, Hexagon NPU; TVM stages as object archives "
                "for the NDK",
    processors=(Processor(
        name="cpu",
        description="Kryo: 1x Cortex-X4 + 5x Cortex-A720 + 2x A520; TVM code is tuned for "
                    "the A720 cores (dot-product and i8mm instructions)",
        tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "cortex-a720",
                    "mattr": ["+neon", "+dotprod", "+i8mm"], "num-cores": 6},
        arch="aarch64", artifact="object-archive",
        device_build="link with the NDK: $NDK/toolchains/llvm/prebuilt/*/bin/"
                     "aarch64-linux-android34-clang++ -shared -o stage.so *.o"),),
    memory_mb=12288,   # 8-24 GB LPDDR5X in phones; the runtime also reads the phone's own
    # The Hexagon NPU's HTP backend (QNN) takes INT8 and FP16 graphs; NNAPI and XNNPACK are
    # the fallbacks Android's onnxruntime packages.
    onnxruntime_providers={"int8": ["QNNExecutionProvider", "NnapiExecutionProvider",
                                    "CPUExecutionProvider"],
                           "fp16": ["QNNExecutionProvider", "XNNPACKExecutionProvider",
                                    "CPUExecutionProvider"],
                           "fp32": ["XNNPACKExecutionProvider", "CPUExecutionProvider"]},
    notes=["INT8 on the Hexagon NPU through onnxruntime-qnn (HTP); the CPU's i8mm and "
           "dot-product instructions run INT8 ONNX Runtime kernels",
           "Android linking needs the NDK, which is not part of edgesdk: the archive holds the "
           "object files and the link line"],
)
