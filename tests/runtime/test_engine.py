"""The staged engine: early exits, batch compaction, per-sample results, input validation."""
import numpy as np
import pytest
import torch

from edgesdk.errors import InputError, ResourceLimitError
from edgesdk.runtime import load_bundle
from margins import decisive, exit_thresholds


@pytest.fixture(scope="module")
def model(bundle_master):
    return load_bundle(bundle_master)


@pytest.fixture(scope="module")
def digits(mnist_split):
    _, (x, y) = mnist_split
    return x[:200], y[:200]


class Recorder(object):
    """Wraps a graph and records the batch size of every call."""

    def __init__(self, graph):
        self.graph, self.sizes = graph, []

    def run(self, tensors):
        self.sizes.append(tensors[0].shape[0])
        return self.graph.run(tensors)


def test_no_early_exit_matches_pytorch_final_exit(model, trained_tiny, digits):
    x, _ = digits
    out = model.run(x, early_exit=False)
    with torch.no_grad():
        want = torch.softmax(trained_tiny(torch.from_numpy(x))[-1], 1).numpy()
    assert (out.exit_index == 2).all()
    np.testing.assert_allclose(out.probabilities, want, atol=1e-5)
    assert decisive(want).all()   # no near-tie whose argmax float error could flip
    assert (out.labels == want.argmax(1)).all()


def test_early_exit_follows_the_policy_per_sample(model, digits):
    x, _ = digits
    # In gaps between the samples' scores: run() computes exit 1 on a compacted batch, whose
    # last bits may differ from the full batch's below.
    thr = exit_thresholds(model, x, 0.5)
    out = model.run(x, thresholds=thr)
    probs = model.exit_probabilities(x)
    for i in range(len(x)):
        if probs[0][i].max() >= thr[0]:
            expect = 0
        elif probs[1][i].max() >= thr[1]:
            expect = 1
        else:
            expect = 2
        assert out.exit_index[i] == expect
        np.testing.assert_allclose(out.probabilities[i], probs[expect][i], atol=1e-5)
        assert out.labels[i] == probs[expect][i].argmax()
    assert 0 < out.exit_counts()[0] < len(x)  # a real mix of exits


def test_batches_are_compacted(bundle_master, digits):
    model = load_bundle(bundle_master)
    x, _ = digits
    model.stages = [Recorder(s) for s in model.stages]
    model.heads = [Recorder(h) for h in model.heads]
    out = model.run(x, thresholds=[0.9, None, None])
    counts = out.exit_counts()
    assert [s.sizes for s in model.stages] == [[200], [200 - counts[0]], [200 - counts[0]]]
    # exit 1 is disabled: its head never runs
    assert [h.sizes for h in model.heads] == [[200], [], [200 - counts[0]]]
    reached = ~np.isnan(out.stage_ms)
    assert (reached[:, 0]).all() and (reached[:, 2] == (out.exit_index == 2)).all()


def test_single_sample_and_batched_calls_agree(model, digits):
    x, _ = digits
    thr = exit_thresholds(model, x[:20], 0.5)   # batch 1 and 20 use other kernels
    batched = model.run(x[:20], thresholds=thr)
    for i in range(20):
        one = model.run_one(x[i], thresholds=thr)
        assert one.label == batched.labels[i] and one.exit_index == batched.exit_index[i]
        np.testing.assert_allclose(one.probabilities, batched.probabilities[i], atol=1e-5)
        assert one.stage_ms.shape == (3,)


def test_manifest_thresholds_are_used_by_default(bundle, digits):
    from edgesdk.bundle import update_manifest
    update_manifest(bundle, lambda m: m["exits"][0].update(threshold=0.0))
    out = load_bundle(bundle).run(digits[0][:10])
    assert (out.exit_index == 0).all()


def test_empty_batch_gives_empty_result(model):
    out = model.run(np.zeros((0, 1, 28, 28), np.float32))
    assert len(out) == 0 and out.probabilities.shape == (0, 10)


def test_float64_is_cast(model, digits):
    x, _ = digits
    a = model.run(x[:5].astype(np.float64))
    b = model.run(x[:5])
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("x, message", [
    (np.zeros((2, 3, 28, 28), np.float32), r"dimension 1 is 3, expected 1"),
    (np.zeros((2, 28, 28), np.float32), "rank 3"),
    (np.zeros((2, 1, 28, 28), np.uint8), "dtype uint8.*preprocess"),
    (np.array([["a"]]), "dtype <U1"),
])
def test_bad_input_shape_or_dtype(model, x, message):
    with pytest.raises(InputError, match=message):
        model.run(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(model, digits, bad):
    x = digits[0][:5].copy()
    x[3, 0, 5, 5] = bad
    with pytest.raises(InputError, match=r"NaN or infinite values in 1 sample\(s\) \(indices \[3\]"):
        model.run(x)


def test_bad_thresholds(model, digits):
    with pytest.raises(InputError, match="expected 3 thresholds"):
        model.run(digits[0][:2], thresholds=[0.9])
    with pytest.raises(InputError, match="threshold of exit 1"):
        model.run(digits[0][:2], thresholds=[0.9, 7, None])
    with pytest.raises(InputError, match="run_one"):
        model.run_one(digits[0][:2])


def test_reference_check_passes_and_detects_a_different_executor(model):
    from edgesdk.runtime import check_reference
    res = check_reference(model)
    assert res["passed"] and len(res["max_abs_error"]) == 3 and max(res["max_abs_error"]) < 1e-4

    class Off(object):
        def __init__(self, g):
            self.g = g

        def run(self, t):
            return [o + 0.01 for o in self.g.run(t)]
    heads = model.heads
    model.heads = [heads[0], Off(heads[1]), heads[2]]
    try:
        res = check_reference(model)
    finally:
        model.heads = heads
    assert not res["passed"] and res["max_abs_error"][1] >= 0.01 - 1e-6


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(input=np.array(["a"] * len(d["input"]))), "input 'x' has dtype <U1"),
    (lambda d: d.update(input=np.float32(1)), r"shape \[\] \(rank 0\)"),
    (lambda d: d.update(exit_1=d["exit_1"][:2]), "exit_1 has dtype float32 and shape \\[2, 10\\]"),
    (lambda d: d.update(exit_2=np.array(["x"])), "exit_2 has dtype <U1"),
    (lambda d: d.pop("exit_0"), "cannot be read: 'exit_0'"),
])
def test_a_reference_file_that_does_not_fit_the_bundle_is_an_integrity_error(
        bundle, change, message):
    """Every reader of the reference file (validate, profile, TVM emulation, FPGA
    calibration) goes through one check: a bad file is the bundle's error, never a crash."""
    from edgesdk import bundle as bundle_io
    from edgesdk.errors import IntegrityError
    from edgesdk.runtime.profiler import example_batch
    from edgesdk.runtime.reference import check_reference
    path = bundle_io.read_bundle(bundle).path("reference/reference.npz")
    with np.load(path) as z:
        arrays = dict(z)
    change(arrays)
    np.savez(path, **arrays)
    m = bundle_io.read_bundle(bundle, verify=False).manifest
    m["files"].update(bundle_io.hash_files(bundle, ["reference/reference.npz"]))
    bundle_io.write_manifest(bundle, m)
    model = load_bundle(bundle)
    with pytest.raises(IntegrityError, match="reference file 'reference/reference.npz'.*" + message):
        check_reference(model)
    if "exit" not in message:
        with pytest.raises(IntegrityError, match=message):
            example_batch(model, 4)


def test_a_huge_broadcast_input_is_refused_before_it_is_copied(bundle):
    import tracemalloc
    model = load_bundle(bundle, memory_limit_mb=200)
    sample = np.zeros((1, 1, 28, 28), np.float32)
    huge = np.broadcast_to(sample, (3000000, 1, 28, 28))   # 9.4 GB if copied
    tracemalloc.start()
    with pytest.raises(ResourceLimitError):
        model.run(huge)
    assert tracemalloc.get_traced_memory()[1] < 100 << 20
    tracemalloc.stop()
    out = model.exit_logits(np.broadcast_to(sample, (600, 1, 28, 28)), batch_size=256)
    assert out[0].shape == (600, 10)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        model.exit_logits(sample, batch_size=-3)


def test_non_finite_samples_are_named_by_their_index_in_the_whole_batch(bundle):
    x = np.zeros((300, 1, 28, 28), np.float32)
    x[290, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"indices \[290\]"):
        load_bundle(bundle).exit_logits(x, batch_size=256)


def test_a_manifest_whose_shapes_do_not_describe_the_graphs_is_refused_at_load(bundle):
    from edgesdk.bundle import update_manifest
    from edgesdk.errors import BundleError

    def seven_classes(m):   # consistent in itself, wrong for the graphs
        m.update(num_classes=7, class_names=None)
        for e in m["exits"]:
            e["output_shapes"] = [[None, 7]]
    update_manifest(bundle, seven_classes)
    with pytest.raises(BundleError, match=r"has shape \[None, 10\], the manifest says \[None, 7\]"):
        load_bundle(bundle)


def test_inputs_that_overflow_the_network_are_refused_not_answered_with_nan(bundle_master):
    import numpy as np
    import pytest
    from edgesdk.errors import InputError
    from edgesdk.runtime import load_bundle
    model = load_bundle(bundle_master)
    x = np.zeros((3, 1, 28, 28), np.float32)
    # Finite, as hypothesis found (1.2e38 everywhere): rows of +-3.4e38 make the first
    # convolution's sums overflow to inf of both signs, then NaN, on any kernel.
    x[1, :, ::2], x[1, :, 1::2] = 3.4e38, -3.4e38
    with pytest.warns(Warning):
        with pytest.raises(InputError, match=r"not finite for sample\(s\) 1: their inputs reach"):
            model.run(x)
    assert np.isfinite(model.run(x[[0, 2]]).probabilities).all()
