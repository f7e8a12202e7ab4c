"""The board descriptor record."""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """What a board runs. ``formats``: graph formats its executors take; ``max_opset``: the
    highest ONNX opset its ONNX consumers read (None: no limit beyond the exporter's)."""

    name: str
    description: str
    arch: str
    formats: tuple
    executors: tuple
    precisions: tuple
    build_on: str = "host"
    power_sensor: str = "none"
    max_opset: int = None
    notes: list = field(default_factory=list)
