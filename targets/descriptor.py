"""The board descriptor record."""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """What a board runs. ``formats``: graph formats its executors take; ``max_opset``: the
    highest ONNX opset its ONNX consumers read (None: no limit beyond the exporter's).

    Precision rules: ``precisions`` the board can run; ``default_precision`` what a
    conversion selects when none is asked for; ``slow_precisions`` those it runs but not fast
    (precision -> why; asking for one warns); ``int8_activations``: ``uint8`` (asymmetric,
    ONNX Runtime's fast x86/ARM path) or ``int8-symmetric`` (every Q/DQ zero point 0, as
    TensorRT requires); ``int8_no_bool``: INT8 graphs may hold no bool tensors (TensorRT).
    """

    name: str
    description: str
    arch: str
    formats: tuple
    executors: tuple
    precisions: tuple
    build_on: str = "host"
    power_sensor: str = "none"
    max_opset: int = None
    default_precision: str = "fp32"
    slow_precisions: dict = field(default_factory=dict)
    int8_activations: str = "uint8"
    int8_no_bool: bool = False
    notes: list = field(default_factory=list)

    def precision_rules(self):
        """The rules as a JSON-able dict (what the manifest records)."""
        return {"target": self.name, "precisions": list(self.precisions),
                "default": self.default_precision, "slow": dict(self.slow_precisions),
                "int8_activations": self.int8_activations, "int8_no_bool": self.int8_no_bool}
