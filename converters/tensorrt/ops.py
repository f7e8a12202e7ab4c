"""What TensorRT's ONNX parser reads, per TensorRT release: opset range, operators, the
restrictions edgesdk checks before a graph goes to a board, and the calibration cache header.

Transcribed from onnx-tensorrt's ``docs/operators.md``. The 8.2 table is the opset-13
matrix of the 8.x releases (the 8.4 listing, the nearest one on file; JetPack 4.6's 8.2.1
reads the same opset range). The 10.x table is the 8.5 matrix plus the operators the 10.0
notes add (opsets 9 to 20). An operator missing from a table is reported as not known to be
supported: check it with ``trtexec`` on the board before relying on it. Data only.
"""
from dataclasses import dataclass


def _ops(text):
    return frozenset(text.split())


_COMMON = _ops("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg
NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform
RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
TopK Transpose Unsqueeze Upsample Where Xor
""")

# Added by the 8.5 matrix (opset 17) and the 10.0 notes (opset 20).
_SINCE_8_5 = _ops("""
GridSample HardSwish MeanVarianceNormalization Mod NonZero OneHot RandomNormal RandomNormalLike
Reciprocal RoiAlign Shrink Trilu
""")
_SINCE_10 = _ops("""
LayerNormalization GroupNormalization IsInf Hardmax Col2Im BlackmanWindow HammingWindow HannWindow
""")


@dataclass(frozen=True)
class TensorRTOps:
    """One TensorRT release's ONNX parser, as edgesdk checks graphs against it.

    ``opsets``: the (lowest, highest) ONNX opset it parses; ``supported``: operator types of
    the default domain; ``constant_inputs``: op -> input positions that must be initializers
    or constants; ``resize_modes``: Resize ``mode`` values it takes; ``quantized``: element
    types a QuantizeLinear may produce (zero point always 0); ``cache_version``: the number
    its calibration caches carry in their header (``TRT-<n>-EntropyCalibration2``).
    """

    name: str
    version: str
    opsets: tuple
    supported: frozenset
    constant_inputs: dict
    resize_modes: tuple
    quantized: tuple
    cache_version: str
    apis: str
    source: str


TENSORRT_8_2 = TensorRTOps(
    name="8.2", version="8.2.1", opsets=(7, 13), supported=_COMMON,
    constant_inputs={"Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "TopK": (1,),
                     "CumSum": (1,)},
    resize_modes=("nearest", "linear"), quantized=("int8",), cache_version="8201",
    apis="bindings (num_bindings, execute_v2); Python 3.6 on JetPack 4.6",
    source="onnx-tensorrt docs/operators.md, 8.x opset-13 matrix")

# JetPack 5.1 (Xavier, Orin): the 8.5 operator matrix; shapes and resize modes kept as 8.2's
# where this table does not know better (a conservative check refuses, never lets through).
TENSORRT_8_5 = TensorRTOps(
    name="8.5", version="8.5.2", opsets=(7, 17), supported=_COMMON | _SINCE_8_5,
    constant_inputs=dict(TENSORRT_8_2.constant_inputs),
    resize_modes=("nearest", "linear"), quantized=("int8",), cache_version="8502",
    apis="named I/O tensors (num_io_tensors, set_tensor_address, execute_async_v3); "
         "Python 3.8 on JetPack 5.1",
    source="onnx-tensorrt docs/operators.md, 8.5 matrix")

TENSORRT_10 = TensorRTOps(
    name="10", version="10.x", opsets=(9, 20), supported=_COMMON | _SINCE_8_5 | _SINCE_10,
    constant_inputs={"CumSum": (1,)},
    resize_modes=("nearest", "linear", "cubic"), quantized=("int8", "float8e4m3fn"),
    cache_version="100300",
    apis="named I/O tensors (num_io_tensors, set_tensor_address, execute_async_v3)",
    source="onnx-tensorrt docs/operators.md, 8.5 matrix + TensorRT 10.0 additions")

TENSORRT_VERSIONS = {"8.2": TENSORRT_8_2, "8.5": TENSORRT_8_5, "10": TENSORRT_10}


def tensorrt_ops(name):
    """The :class:`TensorRTOps` for a release name (``8.2``, ``8.5``, ``10``)."""
    from edgesdk.errors import UnknownNameError
    if name not in TENSORRT_VERSIONS:
        raise UnknownNameError("no TensorRT operator table for '{}'; edgesdk has: {}".format(
            name, ", ".join(TENSORRT_VERSIONS)))
    return TENSORRT_VERSIONS[name]
