"""The Jetson boards users buy now: Nano, Xavier NX, Orin Nano and AGX Orin, with the JetPack
each runs. Facts from NVIDIA's module data sheets and JetPack release notes: CPU cores, GPU
architecture and CUDA compute capability, deep-learning accelerators (DLA), memory, and the
Ubuntu / CUDA / TensorRT / Python of the JetPack named. Data only."""
from edgesdk.targets.boards import AARCH64_GNU, AARCH64_PACKAGE, JETPACK_PROVIDERS
from edgesdk.targets.descriptor import Processor, Target


def _cpu(description, mcpu, cores, mattr=("+neon",)):
    return Processor(
        name="cpu", description=description,
        tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu,
                    "mattr": list(mattr), "num-cores": cores},
        arch="aarch64", cross_compiler=AARCH64_GNU, cross_package=AARCH64_PACKAGE)


def _gpu(description, tag, mcpu, mattr, sm, jetpack_cuda):
    return Processor(
        name="gpu", description=description,
        tvm_target={"tag": tag, "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                         "mcpu": mcpu, "mattr": list(mattr)}},
        arch="aarch64", kernels="cuda", cross_compiler=AARCH64_GNU,
        cross_package=AARCH64_PACKAGE,
        device_build="nvcc -ptx -arch={} (CUDA {} from the board's JetPack)".format(
            sm, jetpack_cuda))


def _jetson(name, description, cpu, gpu, memory_mb, jetpack, tensorrt, max_opset, glibc,
            notes, slow=None):
    return Target(
        name=name, description=description, arch="aarch64",
        precisions=("fp32", "fp16", "int8"),
        build_on={"onnxruntime": "host", "tvm": "host (CUDA kernels: PTX made on the board)",
                  "tensorrt": "device"},
        tensorrt=tensorrt, max_opset=max_opset,
        power_sensor="INA3221 ({})".format("iio" if jetpack.startswith("4") else "hwmon"),
        default_precision="fp16", slow_precisions=slow or {},
        int8_activations="int8-symmetric", int8_no_bool=True,
        toolchains=("onnxruntime", "tvm", "tensorrt"), processors=(cpu, gpu), os="linux",
        glibc=glibc, memory_mb=memory_mb, onnxruntime_providers=JETPACK_PROVIDERS,
        notes=["JetPack {}".format(jetpack), "TensorRT engines are built on the board itself"]
        + notes)


JETSON_NANO = _jetson(
    "jetson-nano",
    "NVIDIA Jetson Nano (4 GB): 4x Cortex-A57, 128-core Maxwell GPU (sm_53), JetPack 4.6 "
    "(Ubuntu 18.04, CUDA 10.2, TensorRT 8.2, Python 3.6)",
    _cpu("4x Cortex-A57 (NEON)", "cortex-a57", 4),
    _gpu("128-core Maxwell GPU (CUDA compute capability 5.3), TVM tag nvidia/jetson-nano",
         "nvidia/jetson-nano", "cortex-a57", ("+neon",), "sm_53", "10.2"),
    4096, "4.6", "8.2", 13, "2.27",
    ["the last JetPack for the Nano is 4.6: TensorRT 8.2 reads ONNX opset <= 13",
     "no DLA; Maxwell has no INT8 dot-product instructions (DP4A came with sm_61)"],
    slow={"int8": "the Nano's Maxwell GPU (sm_53) has no INT8 kernels in TensorRT: INT8 runs "
                  "only on the CPU's ONNX Runtime, no faster than FP16 on the GPU"})

JETSON_XAVIER_NX = _jetson(
    "jetson-xavier-nx",
    "NVIDIA Jetson Xavier NX (8 GB): 6-core Carmel (ARMv8.2), 384-core Volta GPU with 48 "
    "Tensor Cores (sm_72), 2 DLA, JetPack 5.1 (Ubuntu 20.04, CUDA 11.4, TensorRT 8.5, "
    "Python 3.8)",
    _cpu("6-core NVIDIA Carmel (ARMv8.2, dot-product instructions)", "carmel", 6,
         ("+neon", "+dotprod")),
    _gpu("384-core Volta GPU with 48 Tensor Cores (CUDA compute capability 7.2); TVM tag "
         "nvidia/jetson-agx-xavier (the same GPU architecture)", "nvidia/jetson-agx-xavier",
         "carmel", ("+neon", "+dotprod"), "sm_72", "11.4"),
    8192, "5.1", "8.5", 17, "2.31",
    ["2 NVDLA v1 engines run INT8/FP16 layers beside the GPU (trtexec --useDLACore); "
     "edgesdk's engines use the GPU",
     "no 2:4 structured sparsity (Volta has no sparse Tensor Cores)"])

JETSON_ORIN_NANO = _jetson(
    "jetson-orin-nano",
    "NVIDIA Jetson Orin Nano (8 GB): 6x Cortex-A78AE, 1024-core Ampere GPU with 32 Tensor "
    "Cores (sm_87), JetPack 6.1 (Ubuntu 22.04, CUDA 12.6, TensorRT 10.3, Python 3.10)",
    _cpu("6x Cortex-A78AE (ARMv8.2, dot-product instructions)", "cortex-a78ae", 6,
         ("+neon", "+dotprod")),
    _gpu("1024-core Ampere GPU with 32 Tensor Cores (CUDA compute capability 8.7); TVM tag "
         "nvidia/jetson-orin-nano with the A78AE host", "nvidia/jetson-orin-nano",
         "cortex-a78ae", ("+neon", "+dotprod"), "sm_87", "12.6"),
    8192, "6.1", "10", 20, "2.35",
    ["no DLA on the Orin Nano",
     "Ampere's sparse Tensor Cores run 2:4 structured sparsity (trtexec --sparsity=enable)"])

JETSON_AGX_ORIN = _jetson(
    "jetson-agx-orin",
    "NVIDIA Jetson AGX Orin (64 GB): 12x Cortex-A78AE, 2048-core Ampere GPU with 64 Tensor "
    "Cores (sm_87), 2 DLA, JetPack 6.1 (Ubuntu 22.04, CUDA 12.6, TensorRT 10.3, Python 3.10)",
    _cpu("12x Cortex-A78AE (ARMv8.2, dot-product instructions)", "cortex-a78ae", 12,
         ("+neon", "+dotprod")),
    _gpu("2048-core Ampere GPU with 64 Tensor Cores (CUDA compute capability 8.7); TVM tag "
         "nvidia/jetson-agx-orin-64gb with the A78AE host", "nvidia/jetson-agx-orin-64gb",
         "cortex-a78ae", ("+neon", "+dotprod"), "sm_87", "12.6"),
    65536, "6.1", "10", 20, "2.35",
    ["2 NVDLA v2 engines run INT8/FP16 layers beside the GPU (trtexec --useDLACore); "
     "edgesdk's engines use the GPU",
     "Ampere's sparse Tensor Cores run 2:4 structured sparsity (trtexec --sparsity=enable)",
     "the 32 GB module has 8 cores and a 1792-core GPU: describe it in a board file"])
