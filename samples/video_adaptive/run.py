"""Adaptive inference on a camera or a video, frame by frame: live FPS, the exit each frame
left at, per-frame latency, and a plot at the end.

    python samples/video_adaptive/run.py --source 0                 # the first camera
    python samples/video_adaptive/run.py --source digits.avi        # a video file
    python samples/video_adaptive/make_video.py digits.avi          # a video of real digits

The model is a bundle (default: the MNIST sample's, from `make demo`) or a resolution cascade
(`convert_cascade`); each frame is converted to grey, resized to the model's input with OpenCV
and normalized with the bundle's preprocessing. ``--deadline-ms`` bounds each frame's time
with the profile store given by ``--profile``.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BUNDLE = os.path.join(HERE, "..", "mnist_early_exit", "out", "mnist_resnet.edgebundle")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_model(path, threads):
    """``(run(grey frame, **bounds) -> RunResult, description, loaded model)`` for a bundle
    or a resolution cascade."""
    from edgesdk.runtime import load_bundle, preprocess
    from edgesdk.runtime.cascade import load_cascade, resize_images
    model = load_bundle(path, threads=threads)
    if model.bundle.manifest.get("cascade"):
        cascade = load_cascade(path, threads=threads)
        return (lambda grey, **bounds: cascade.run(grey[None])), "cascade {}".format(
            " -> ".join("{}x{}".format(*r) for r in cascade.resolutions)), cascade
    size = tuple(model.input_spec["shape"][2:])

    def run(grey, **bounds):
        x = preprocess(resize_images(grey[None], size), model.input_spec)
        return model.run(x, **bounds)
    return run, "{} exits at {}x{}".format(model.num_exits, *size), model


def plot(latency, exits, path, title):
    """Per-frame latency coloured by exit, and the exit histogram."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.6, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    frames = np.arange(len(latency))
    scatter = ax.scatter(frames, latency, c=exits, cmap="viridis", s=10)
    ax.set_xlabel("frame")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.colorbar(scatter, ax=ax, label="exit")
    counts = np.bincount(exits, minlength=int(exits.max()) + 1 if len(exits) else 1)
    bx.bar(np.arange(len(counts)), counts, color="tab:blue")
    bx.set_xlabel("exit")
    bx.set_ylabel("frames")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="0", help="camera index or video file")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--deadline-ms", type=float, default=None)
    parser.add_argument("--profile", default=None, help="profile store for --deadline-ms")
    parser.add_argument("--every", type=int, default=30, help="print FPS every N frames")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    args = parser.parse_args(argv)
    import cv2
    from edgesdk.errors import EdgeSDKError
    from edgesdk.runtime.video import open_video
    if not os.path.isdir(args.bundle):
        log("no bundle at {}: run `make demo` first, or pass --bundle".format(args.bundle))
        return 4
    try:
        run, description, model = load_model(args.bundle, args.threads)
        bounds = {}
        if args.deadline_ms is not None:
            if not args.profile or not hasattr(model, "use_profile"):
                log("--deadline-ms needs --profile (a profile store of this bundle on this "
                    "device; `edgesdk profile BUNDLE --db FILE`) and a plain bundle")
                return 4
            model.use_profile(args.profile)
            bounds["deadline_ms"] = args.deadline_ms
        latency, exits, labels = [], [], []
        with open_video(args.source) as video:
            log("reading {} ({}; model: {})".format(args.source, "{} frames".format(
                video.announced) if video.announced else "live", description))
            window = time.perf_counter()
            for frame in video:
                grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                t0 = time.perf_counter()
                result = run(grey, **bounds)
                latency.append((time.perf_counter() - t0) * 1000.0)
                exits.append(int(result.exit_index[0]))
                labels.append(int(result.labels[0]))
                if len(latency) % args.every == 0:
                    now = time.perf_counter()
                    log("frame {}: {:.0f} FPS over the last {} frames, exits so far {}".format(
                        len(latency), args.every / (now - window), args.every,
                        np.bincount(exits).tolist()))
                    window = now
                if args.max_frames and len(latency) >= args.max_frames:
                    break
            frames, ended_early, announced = video.frames, video.ended_early, video.announced
    except EdgeSDKError as exc:
        log("error: {}".format(exc))
        return 4
    if ended_early:
        log("the stream ended after {} of {} announced frames; the capture was closed".format(
            frames, announced))
    if not latency:
        log("no frames were read")
        return 4
    latency, exits = np.asarray(latency), np.asarray(exits)
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "video_latency.png")
    plot(latency, exits, png, "{}: {} frames, {}".format(os.path.basename(str(args.source)),
                                                         len(latency), description))
    print("frames: {}".format(len(latency)))
    print("exits: {}".format(np.bincount(exits).tolist()))
    print("latency ms: mean {:.3f}, p50 {:.3f}, p99 {:.3f}, max {:.3f}".format(
        latency.mean(), np.percentile(latency, 50), np.percentile(latency, 99), latency.max()))
    print("predicted labels (first 20): {}".format(labels[:20]))
    print("plot: {}".format(png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
