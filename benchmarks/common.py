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
