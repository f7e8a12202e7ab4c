"""The TVM backend, host half: ONNX import and builds for a board's processor (``build``),
MetaSchedule tuning (``tune``), aarch64 builds run under qemu-user (``emulation``) and the
checks a board's loader would make of a library (``elf_check``). The device half is
``edgesdk.runtime.executors.tvm`` with its C++ runner (``tvm_runner.cc``) for boards whose
Python is older than TVM's runtime needs."""
