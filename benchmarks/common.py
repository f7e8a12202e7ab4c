"""What every benchmark shares: the sample's modules on the path and the common options."""
import argparse
import os
import platform
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
    """CPU model and the instruction-set flags that change kernels and float results."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "avx2": "avx2" in flags, "avx512_vnni": "avx512_vnni" in flags}
