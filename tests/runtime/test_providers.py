"""ONNX Runtime execution providers: asked for per model or recorded per board, checked
against the installed onnxruntime, and what really ran is reported and keyed in profiles.
CUDA, TensorRT, QNN and XNNPACK are not in this machine's onnxruntime: a stand-in session
class plays one, as the TensorRT executor's tests do for TensorRT."""
import numpy as np
import pytest

from edgesdk.errors import InputError
from edgesdk.runtime import load_bundle
from edgesdk.runtime.executors import ort

FAKE = "XNNPACKExecutionProvider"


@pytest.fixture
def xnnpack(monkeypatch):
    """This onnxruntime as if it carried XNNPACK: sessions asked for it report it (and run on
    the CPU underneath)."""
    real = ort._ort()

    class Session(real.InferenceSession):
        def __init__(self, model, opts=None, providers=None):
            self.asked = list(providers or [])
            super().__init__(model, opts, providers=[p for p in self.asked if p != FAKE])

        def get_providers(self):
            return self.asked

    class Stand_in(object):
        def __getattr__(self, name):
            return getattr(real, name)
        InferenceSession = Session

        @staticmethod
        def get_available_providers():
            return [FAKE] + real.get_available_providers()
    monkeypatch.setattr(ort, "_ort", lambda: Stand_in())
    return Stand_in


def test_providers_this_onnxruntime_lacks_are_refused_before_loading(bundle):
    with pytest.raises(InputError, match=r"has no CUDAExecutionProvider \(it has .*CPUExecutionProvider\)"):
        load_bundle(bundle, providers=["CUDAExecutionProvider"])


def test_the_default_is_the_cpu_and_every_graph_says_so(bundle):
    model = load_bundle(bundle)
    assert {tuple(r["providers"]) for r in model.ran.values()} == {("CPUExecutionProvider",)}


def test_asked_providers_run_and_are_reported(bundle, xnnpack, capsys):
    model = load_bundle(bundle, providers=[FAKE])
    assert {tuple(r["providers"]) for r in model.ran.values()} == {(FAKE, "CPUExecutionProvider")}
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert model.run(x).builds["stage0"]["providers"][0] == FAKE
    from edgesdk.runtime.build_select import build_name
    assert build_name(model.ran["stage0"]) == "onnx fp32 (cpu) via {}, CPUExecutionProvider".format(
        FAKE)


def test_a_boards_recorded_providers_are_used_where_present(tmp_path, trained_tiny, mnist_split,
                                                            xnnpack):
    from conftest import PREPROCESSING
    from edgesdk.converters import convert
    x = mnist_split[1][0][:8]
    path = str(tmp_path / "sd.edgebundle")
    convert(trained_tiny, x, path, target="snapdragon-865", quantize="fp32",
            stages_attr="blocks", heads_attr="exits", preprocessing=PREPROCESSING,
            progress=False)
    m = load_bundle(path).bundle.manifest
    assert m["stages"][0]["providers"] == [FAKE, "CPUExecutionProvider"]   # the board's, recorded
    model = load_bundle(path)
    assert model.ran["stage0"]["providers"] == [FAKE, "CPUExecutionProvider"]


def test_profiles_key_the_providers_that_ran(bundle, xnnpack, tmp_path):
    from edgesdk.profiles import ProfileStore
    from edgesdk.runtime import conditions
    from edgesdk.runtime.profiler import profile_bundle
    db = str(tmp_path / "p.sqlite")
    profile_bundle(bundle, warmup=1, repeats=2, db=db, providers=[FAKE], progress=False,
                   no_sensor=True, warmup_s=0, min_seconds=0)
    with ProfileStore(db) as s:
        got = {conditions.parse(r["conditions"])["providers"] for r in s.rows()}
    assert got == {FAKE + ",CPUExecutionProvider"}
