"""The TensorRT backend, host half: the ONNX parser's operator tables per TensorRT release
(``ops``), graph checks and decompositions (``check``), the INT8 calibration cache (``calib``)
and the plan a board builds its engines from (``prepare``). The device half is
``edgesdk.runtime.executors.tensorrt`` and the engine builder beside it (``tensorrt_build``)."""
