"""The ONNX Runtime backend, host half: INT8 (static QDQ quantization) and FP16 builds of a
bundle's ONNX graphs (``quantize``); the graphs themselves are written by ``convert``. The
device half is ``edgesdk.runtime.executors.ort``."""
