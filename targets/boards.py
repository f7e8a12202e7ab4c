"""Descriptors of the boards edgesdk deploys to (precision rules; toolchains come with their
builders). Data only."""
from edgesdk.targets.descriptor import Target

JETSON_TX2 = Target(
    name="jetson-tx2",
    description="NVIDIA Jetson TX2: 4x Cortex-A57 + 2x Denver2 CPU, 256-core Pascal GPU "
                "(sm_62), JetPack 4.6 (CUDA 10.2, TensorRT 8.2, Python 3.6)",
    arch="aarch64",
    formats=("onnx",),
    executors=("onnxruntime",),
    precisions=("fp32", "fp16", "int8"),
    build_on="device",
    power_sensor="INA3221 (iio on JetPack 4, hwmon on JetPack 5)",
    max_opset=13,
    default_precision="fp16",
    slow_precisions={"int8": "the TX2's Pascal GPU (sm_62) has no fast INT8 path: INT8 runs no "
                             "faster than FP16 there, with more accuracy lost"},
    int8_activations="int8-symmetric",
    int8_no_bool=True,
    notes=["TensorRT 8.2 reads ONNX opset <= 13 and needs Q/DQ zero points of 0",
           "TensorRT engines are built on the board itself"],
)

SNAPDRAGON_865 = Target(
    name="snapdragon-865",
    description="Qualcomm Snapdragon 865: Kryo 585 CPU (Cortex-A77/A55, dot-product "
                "instructions), Adreno 650 GPU, Hexagon 698 DSP",
    arch="aarch64",
    formats=("onnx",),
    executors=("onnxruntime",),
    precisions=("fp32", "fp16", "int8"),
    build_on="host",
    power_sensor="Linux power_supply (voltage_now x current_now)",
    default_precision="int8",
    notes=["INT8 (uint8 activations, int8 weights) uses the CPU's dot-product instructions and "
           "the Hexagon DSP; FP16 suits the Adreno GPU"],
)
