"""The hls4ml backend, host half: ONNX graphs prepared for hls4ml (``graph``), fixed-point
types (``fixed_point``), data-driven precision (``precision``), hls4ml driven per graph
(``driver``), bundle builds and bitstream registration (``build``) and resource and latency
estimates (``estimate``). The device half is ``edgesdk.runtime.executors.fpga_csim`` (the C
simulation) and ``edgesdk.runtime.executors.pynq`` (bitstreams on the board)."""
