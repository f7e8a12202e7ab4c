"""Board descriptors: what each target runs, which formats and precisions apply.

Descriptors are data (see :class:`Target`); the registry maps kebab-case names to them.
"""
from edgesdk.registry import Registry
from edgesdk.targets.descriptor import Fabric, Processor, Target  # noqa: F401

TARGETS = Registry("target", {
    "host": "edgesdk.targets.host:HOST",
    "jetson-tx2": "edgesdk.targets.boards:JETSON_TX2",
    "snapdragon-865": "edgesdk.targets.boards:SNAPDRAGON_865",
    "snapdragon-865-android": "edgesdk.targets.boards:SNAPDRAGON_865_ANDROID",
    "x86-nvidia": "edgesdk.targets.boards:X86_NVIDIA",
    "ultra96-v2": "edgesdk.targets.boards:ULTRA96_V2",
    "zcu104": "edgesdk.targets.boards:ZCU104",
    "pynq-z2": "edgesdk.targets.boards:PYNQ_Z2",
})


def get_target(name):
    """The :class:`Target` registered as ``name``."""
    return TARGETS.get(name)
