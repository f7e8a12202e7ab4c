"""edgesdk: deploy dynamic neural networks (early exits, input-adaptive paths) to embedded boards.

``import edgesdk`` is cheap on purpose: heavy toolchains (torch, onnx, onnxruntime, TVM, ...)
are imported inside the functions that use them. The package layout:

- ``edgesdk.converters`` (host): model -> stages -> bundle, threshold calibration
- ``edgesdk.targets`` (host): board descriptors
- ``edgesdk.runtime`` (device, Python 3.6 + numpy): bundle loader, executors, exit policies
"""
__version__ = "0.1.0"

from edgesdk.errors import EdgeSDKError  # noqa: F401  (the one user-facing error root)
