"""Board descriptors: what each target runs, which formats and precisions apply.

Descriptors are data (see :class:`Target`); the registry maps kebab-case names to them, and
``get_target`` also reads a user's board file (:mod:`.from_file`).
"""
from edgesdk.registry import Registry
from edgesdk.targets.descriptor import Fabric, Processor, Target  # noqa: F401

TARGETS = Registry("target", {
    "host": "edgesdk.targets.host:HOST",
    "jetson-tx2": "edgesdk.targets.boards:JETSON_TX2",
    "snapdragon-865": "edgesdk.targets.boards:SNAPDRAGON_865",
    "snapdragon-865-android": "edgesdk.targets.boards:SNAPDRAGON_865_ANDROID",
    "snapdragon-8-gen-3-android": "edgesdk.targets.boards:SNAPDRAGON_8_GEN_3_ANDROID",
    "jetson-nano": "edgesdk.targets.jetson:JETSON_NANO",
    "jetson-xavier-nx": "edgesdk.targets.jetson:JETSON_XAVIER_NX",
    "jetson-orin-nano": "edgesdk.targets.jetson:JETSON_ORIN_NANO",
    "jetson-agx-orin": "edgesdk.targets.jetson:JETSON_AGX_ORIN",
    "x86-nvidia": "edgesdk.targets.boards:X86_NVIDIA",
    "ultra96-v2": "edgesdk.targets.boards:ULTRA96_V2",
    "zcu104": "edgesdk.targets.boards:ZCU104",
    "pynq-z2": "edgesdk.targets.boards:PYNQ_Z2",
})


def get_target(name):
    """The :class:`Target` registered as ``name``, described by the board file ``name``
    (``.toml`` or ``.json``), or a TVM-only board from a TVM target string or tag (see
    :mod:`.from_file`)."""
    from edgesdk.targets.from_file import (is_board_file, is_tvm_target, load_target,
                                           tvm_target_board)
    if is_board_file(name):
        return load_target(name)
    if is_tvm_target(name):
        return tvm_target_board(name)
    return TARGETS.get(name)
