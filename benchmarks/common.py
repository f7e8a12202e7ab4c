"""What every benchmark shares: the sample's modules on the path and the common options."""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "samples", "mnist_early_exit")
sys.path.insert(0, SAMPLE)


def sample_parser(doc):
    """An argument parser with the options every benchmark on the sample model takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(SAMPLE, "out"),
                        help="sample output folder (trained weights are reused from there)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--samples", type=int, default=1000, help="test images to time on")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs if no weights exist")
    return parser


def cpu():
    """CPU model and the instruction-set features that change kernels and float results:
    ``{"cpu", "avx2", "avx512_vnni", "features": [...]}`` (see
    :data:`edgesdk.runtime.cpu_features.KERNEL_FEATURES`)."""
    from edgesdk.runtime.cpu_features import cpu_flags, cpu_model, kernel_features
    flags = cpu_flags()
    return {"cpu": cpu_model(), "avx2": "avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "features": kernel_features()}


def print_cpu():
    """One line naming the CPU and its vector/dot-product features (every benchmark prints
    it first: results depend on them)."""
    info = cpu()
    print("CPU: {} (avx2 {}, avx512_vnni {}; features: {})".format(
        info["cpu"], info["avx2"], info["avx512_vnni"], " ".join(info["features"]) or "none"))
    return info
