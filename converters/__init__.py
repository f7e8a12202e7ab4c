"""Host-side converters: a trained multi-exit PyTorch model -> a verified bundle.

    from edgesdk.converters import MultiExitModel, convert, calibrate
"""
from edgesdk.converters.calibrate import (  # noqa: F401
    CalibrationResult, ExitSimulator, OperatingPoint, calibrate, choose_thresholds, simulator_for)
from edgesdk.converters.convert import ConversionReport, ConvertOptions, convert  # noqa: F401
from edgesdk.converters.cost_model import CostTable, cost_table  # noqa: F401
from edgesdk.converters.model import MultiExitModel, takes_previous_logits  # noqa: F401
