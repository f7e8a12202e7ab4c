"""The device runtime: load a bundle, run it stage by stage with early exits.

Depends on numpy, the standard library and the executor backend of the bundle (onnxruntime);
never on the converters, targets or CLI. Python 3.6 / numpy 1.19 compatible, so it runs on a
Jetson TX2 as shipped (JetPack 4.6).
"""
from edgesdk.runtime.engine import EdgeModel, RunResult, SampleResult, load_bundle  # noqa: F401
from edgesdk.runtime.inputs import preprocess  # noqa: F401
from edgesdk.runtime.policies import POLICIES, get_policy, softmax  # noqa: F401
from edgesdk.runtime.profiler import profile_end_to_end, profile_graphs  # noqa: F401
from edgesdk.runtime.reference import check_reference  # noqa: F401
