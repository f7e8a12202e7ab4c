"""The MNIST sample and the benchmark run end to end (1 training epoch, few samples)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "samples", "mnist_early_exit", "run.py"),
                           "--out", str(out), "--epochs", "1"],
                          capture_output=True, text=True, timeout=900)
    return out, proc


def test_sample_trains_converts_calibrates_runs_and_plots(sample_run):
    out, proc = sample_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in ("accuracy alone", "early exits off", "calibrated exits", "latency ratio",
                 "cost model: predicted"):
        assert text in proc.stdout
    png = out / "accuracy_vs_latency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
    from edgesdk.runtime import check_reference, load_bundle
    model = load_bundle(str(out / "mnist_resnet.edgebundle"))
    assert check_reference(model)["passed"]
    assert model.bundle.manifest["exits"][0]["chosen_from"]["method"] == "calibrate"
    from edgesdk.profiles import ProfileStore
    with ProfileStore(str(out / "profiles.sqlite"), create=False) as store:
        assert {r["graph"] for r in store.rows(metric="mean_ms")} >= {"stage0", "exit3", "runtime"}


def benchmark_summary(script, workdir, *args):
    """Run a benchmark on the sample's weights; returns its last line, parsed, and stderr."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script),
                           "--workdir", str(workdir), "--epochs", "1", "--samples", "64"] + list(args),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_benchmark_prints_the_json_summary_last(sample_run):
    summary, err = benchmark_summary("early_exit.py", sample_run[0], "--rounds", "1")
    for key in ("staged_vs_monolithic_b1", "staged_vs_monolithic_b64", "early_exit_vs_monolithic_b1",
                "early_exit_vs_monolithic_b64", "accuracy_monolithic", "accuracy_early_exit",
                "accuracy_drop_points"):
        assert isinstance(summary[key], (int, float)), key
    assert summary["samples"] == 64 and sum(summary["exit_counts"]) == 64
    assert "reusing trained weights" in err   # the sample's weights, not a retrain


def test_profiler_benchmark_prints_the_json_summary_last(sample_run):
    summary, _ = benchmark_summary("profiler.py", sample_run[0], "--repeats", "5", "--runs", "1",
                                   "--models", "mnist,digits", "--min-seconds", "0.2")
    for key in ("cost_model_error", "budget_met", "accuracy_at_budget", "profiler_overhead"):
        assert isinstance(summary[key], (int, float)), key
    assert summary["samples"] == 64 and summary["sensor"].startswith("none")


def test_soak_benchmark_two_threads_on_one_model_prints_the_json_summary_last(sample_run):
    summary, _ = benchmark_summary("soak.py", sample_run[0], "--inferences", "3000",
                                   "--threads", "2", "--warmup", "300")
    for key in ("inferences", "errors", "rss_start_mb", "rss_end_mb", "rss_growth_mb",
                "rss_slope_mb_per_10k", "p99_first_ms", "p99_last_ms", "p99_drift", "wall_s"):
        assert isinstance(summary[key], (int, float)), key
    assert summary["threads"] == 2 and summary["errors"] == 0
    assert summary["inferences"] >= 3000 and summary["warmup_inferences"] >= 300
    assert summary["calls"] > summary["batch1_calls"] > 0    # mixed batch sizes
    assert set(summary["goals_met"]) == {"errors", "rss_growth", "p99_drift"}


@pytest.mark.slow
def test_build_choice_benchmark_prints_the_json_summary_last(sample_run):
    summary, _ = benchmark_summary("build_choice.py", sample_run[0], "--repeats", "5", "--rounds", "1")
    for key in ("chosen_vs_fp32", "int8_vs_fp32", "accuracy_fp32", "accuracy_int8", "accuracy_chosen"):
        assert isinstance(summary[key], (int, float)), key
    assert summary["graphs"] == 8 and 0 <= summary["int8_graphs"] <= 8


@pytest.mark.slow
def test_compression_benchmark_prints_the_json_summary_last(sample_run):
    summary, _ = benchmark_summary("compression.py", sample_run[0], "--image-size", "64",
                                   "--timing-samples", "2", "--rounds", "1", "--fine-tune-epochs", "1")
    for key in ("int8_speedup", "prune50_speedup", "int8_size_ratio", "int8_accuracy_drop_points",
                "prune50_accuracy_drop_points", "exit_aware_minus_plain_points"):
        assert isinstance(summary[key], (int, float)), key
    assert 0.1 < summary["int8_size_ratio"] < 0.5     # int8 weights: about a quarter of fp32
    assert set(summary["early_exit"]) == {"fp32", "int8", "int8-ea", "pruned"}


@pytest.mark.slow
def test_tvm_benchmark_prints_the_json_summary_last(sample_run):
    pytest.importorskip("tvm")
    # --trials 0: no tuning here; the committed database is used when it was tuned for this CPU.
    summary, err = benchmark_summary("tvm.py", sample_run[0], "--trials", "0", "--rounds", "1",
                                     "--repeats", "5")
    assert summary["tvm_untuned_vs_ort"] > 0
    assert summary["aarch64_emulated_max_abs_error"] < 1e-4
    if summary["tvm_tuned_vs_ort"] is None:   # the database is for another CPU than this one
        assert "no tuned build" in err or summary["tuning_minutes"] is None
    else:
        assert summary["tvm_tuned_vs_ort"] > 0 and summary["tuning_minutes"] > 0
    assert all(v >= 0.99 for v in summary["top1_agreement_with_ort"].values())


@pytest.mark.slow
def test_fpga_benchmark_builds_w8a8_and_prints_the_json_summary_last(sample_run):
    pytest.importorskip("hls4ml")
    # W8A8 here (W4A8 is built by tests/converters/hls4ml_backend/test_fpga_build.py); every
    # graph is compiled.
    summary, _ = benchmark_summary("fpga.py", sample_run[0], "--weight-bits", "8",
                                   "--qat-epochs", "1")
    assert summary["quantization"] == "W8A8" and summary["samples"] == 64
    assert summary["csim_argmax_agreement"] >= 0.95   # bit-accurate: disagreements are ties
    assert len(summary["csim_accuracy_drop_points_per_exit"]) == 3
    assert summary["estimated_fps"] > 0 and isinstance(summary["fits_board"], bool)
    assert sum(summary["exit_counts"]) == 64


@pytest.mark.slow
def test_adaptive_benchmark_prints_the_json_summary_last(sample_run):
    pytest.importorskip("cv2")
    summary, _ = benchmark_summary("adaptive.py", sample_run[0], "--rounds", "1",
                                   "--adversarial", "20")
    for key in ("cascade_vs_full_latency", "cascade_accuracy_drop_points", "deadline_p99_ratio",
                "unbounded_p99_ratio", "layer_skip_vs_full_latency"):
        assert isinstance(summary[key], (int, float)), key
    assert sum(summary["cascade_exit_counts"]) == 64
    assert sum(summary["hard_exit_counts_deadline"]) == 40   # noise + perturbed, 20 each
    assert len(summary["blocks_skipped_fraction"]) == 3


@pytest.mark.slow
def test_calibration_benchmark_smoke_prints_the_json_summary_last():
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "calibration.py"),
                           "--splits", "2", "--datasets", "digits,lfw", "--sizes", "50,100",
                           "--targets", "1,5", "--train-scale", "0.2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPU: " in proc.stdout and "avx512_vnni" in proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["confidence"] == 0.9 and summary["splits"] == 2
    assert summary["datasets"]["lfw"]["sizes"] == [50]       # 120 in the pool: 70 left to test
    cells = {(c["dataset"], c["n"], c["target"]): c for c in summary["cells"]}
    assert set(cells) == {("digits", 50, 1.0), ("digits", 50, 5.0), ("digits", 100, 1.0),
                          ("digits", 100, 5.0), ("lfw", 50, 1.0), ("lfw", 50, 5.0)}
    # 1 point at 90% needs 230 samples: refused at n <= 100; 5 points needs 45: not refused.
    assert all(cells[k]["exact"]["refused_rate"] == 1.0 for k in cells if k[2] == 1.0)
    assert all(cells[k]["exact"]["refused_rate"] == 0.0 for k in cells if k[2] == 5.0)
    for c in summary["cells"]:
        for m in ("exact", "split", "old"):
            assert 0 <= c[m]["violation_rate"] <= 1 and 0 < c[m]["mean_cost_fraction"] <= 1
    assert isinstance(summary["goals_met"], bool)


@pytest.mark.slow
def test_gating_benchmark_prints_the_json_summary_last(sample_run):
    summary, _ = benchmark_summary("gating.py", sample_run[0], "--epochs", "1", "--samples", "20",
                                   "--rounds", "1")
    assert [(c["size"], c["width"]) for c in summary["configs"]] == [(56, 32), (28, 8)]
    for config in summary["configs"]:
        names = [s["setting"] for s in config["settings"]]
        assert names == ["calibrated", "skip 25%", "skip 50%", "skip 75%"]
        for s in config["settings"]:
            assert all(0 <= k <= 1 for ks in s["keep"].values() for k in ks)
            assert s["gated_vs_ungated"] > 0 and s["profile_predicted"] > 0
            assert set(s["profile_kept_gates"]) <= {"stage0/0", "stage0/1", "stage1/0",
                                                    "stage1/1"}
            assert s["chosen_vs_ungated"] > 0


@pytest.mark.slow
def test_spatial_benchmark_prints_the_json_summary_last(sample_run):
    summary, _ = benchmark_summary("spatial.py", sample_run[0], "--epochs", "1", "--samples", "20",
                                   "--rounds", "1")
    assert [r["setting"] for r in summary["rows"]] == ["25%", "50%", "75%"]
    calibrated = summary["calibrated"]
    assert calibrated["budget_ms"] > 0
    assert "refused" in calibrated or (calibrated["predicted_ms"] <= calibrated["budget_ms"] and
                                       0 < calibrated["threshold"] < 1)
