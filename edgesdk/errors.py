"""The user-facing error hierarchy.

Every error a user can cause derives from :class:`EdgeSDKError`; the CLI maps it to exit code
4 (or 5 for a missing dependency). Anything else escaping is an internal bug. Runs on the
device too, so it stays Python 3.6 compatible.
"""


class EdgeSDKError(Exception):
    """Root of all errors caused by user input, files or environment. ``detail``: longer
    output behind the one-line message (what a tool printed), shown with ``--verbose``."""

    exit_code = 4
    detail = None


class MissingDependencyError(EdgeSDKError):
    """An optional package (an 'extra') is needed for this operation but not installed."""

    exit_code = 5


class UnknownNameError(EdgeSDKError):
    """A registry name (target, policy, executor) that does not exist."""


class BundleError(EdgeSDKError):
    """A bundle cannot be read, written or trusted."""


class BundleBusyError(BundleError):
    """Another process holds the bundle's writer lock."""


class ManifestError(BundleError):
    """manifest.json is malformed; the message names the JSON path."""


class SchemaVersionError(BundleError):
    """The bundle was written with a newer schema than this SDK reads."""


class IntegrityError(BundleError):
    """A file is missing, changed, truncated or outside the bundle directory."""


class InputError(EdgeSDKError):
    """Runtime input (tensor, data file, thresholds) does not fit the bundle."""


class ResourceLimitError(EdgeSDKError):
    """A bundle or a batch needs more memory than the device has; the message has the figures."""


class ModelStructureError(EdgeSDKError):
    """A model does not have the multi-exit structure the converter needs."""


class ConversionError(EdgeSDKError):
    """Export, checking or numerical verification of a converted graph failed."""


class CalibrationError(EdgeSDKError):
    """Threshold calibration cannot meet the request (the message says what can)."""


class BuildError(EdgeSDKError):
    """A toolchain (TVM, a cross compiler) could not build a graph, or its output is unfit for
    the board (wrong machine, too new a C library)."""


class UnsupportedOpError(ConversionError):
    """Graphs hold operators a toolchain cannot take; the message lists every one."""


class Uncertifiable(CalibrationError):
    """Too few samples to certify the target whatever they show (the message says how many
    would do)."""


class ProfileStoreError(EdgeSDKError):
    """The profile database is corrupt, foreign, newer than this SDK, or cannot be written."""


class SensorError(EdgeSDKError):
    """A power sensor exists but cannot be read as expected."""


class SensorLost(SensorError):
    """A sensor that was readable stopped answering (unplugged, driver unloaded, permissions)."""


class CudaError(EdgeSDKError):
    """A CUDA call failed (out of memory, a bad pointer, no device)."""


class RemoteError(EdgeSDKError):
    """The TVM RPC tracker, a board or the remote profiler failed."""


class InternalError(Exception):
    """A defect in edgesdk itself, not caused by the user's input: deliberately not an
    :class:`EdgeSDKError`. The CLI reports it (and any other unexpected exception) as an
    internal error with exit code 70, the traceback only with ``--verbose``."""

    exit_code = 70


class InputRangeWarning(UserWarning):
    """Inputs far outside the range the model was converted with (likely preprocessing)."""
