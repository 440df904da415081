"""Images/s of each backbone alone vs the whole extraction pipeline from JPEG files, same run.

The pipeline rate divided by the model-alone rate shows whether decoding is the bottleneck
(goal: >= 0.8). Run: ``python benchmarks/extract_throughput.py [--images 192] [--side 1024]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.backbones import Backbone, WeightsNotFoundError, load_backbone
from retrieval.datasets.demo import demo_sources
from retrieval.features import extract_features, inference_for


def write_jpegs(folder: Path, count: int, side: int) -> list[Path]:
    """``count`` real-photo JPEGs (quality 90) with the long side ``side`` px, like Oxford's."""
    sources = [pixels for _, pixels in demo_sources()]
    paths = []
    for i in range(count):
        image = Image.fromarray(sources[i % len(sources)])
        scale = side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        path = folder / f"{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def resnet50_for_speed() -> tuple[Backbone, str]:
    """ResNet50 with its ImageNet weights where present, else random weights (same speed)."""
    try:
        return load_backbone("resnet50"), "imagenet"
    except WeightsNotFoundError:
        import keras

        from retrieval.backbones.layers import CaffePreprocess, global_pooling

        inputs = keras.Input((224, 224, 3))
        base = keras.applications.ResNet50(
            include_top=False, weights=None, input_tensor=CaffePreprocess()(inputs)
        )
        model = keras.Model(inputs, global_pooling("avg")(base.output))
        return Backbone("resnet50", model, 224, 2048, "avg", "center-crop", "random"), "random"


def model_alone_rate(backbone: Backbone, batch: int, seconds: float) -> float:
    """Images/s of the compiled forward pass on in-memory uint8 tensors."""
    forward = inference_for(backbone)
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    forward(images)  # trace and warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        forward(images)
        done += batch
    return done / (time.perf_counter() - start)


def pipeline_rate(backbone: Backbone, paths: list[Path], batch: int) -> float:
    """Images/s of extract_features from JPEG files on disk, no cache."""
    extract_features(paths[:batch], backbone, batch_size=batch, cache=False, progress=False)
    start = time.perf_counter()
    result = extract_features(paths, backbone, batch_size=batch, cache=False, progress=False)
    assert len(result.paths) == len(paths), result.skipped
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=192, help="JPEG files in the pipeline run")
    parser.add_argument("--side", type=int, default=1024, help="long side of the JPEGs, px")
    parser.add_argument("--seconds", type=float, default=6.0, help="model-alone timing window")
    args = parser.parse_args()

    backbones = [(load_backbone("efficientnet_lite0"), "imagenet"), resnet50_for_speed()]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), args.images, args.side)
        for backbone, weights in backbones:
            for batch in (1, 32):
                # Model alone timed before and after the pipeline; the faster of the two
                # is the baseline, so machine noise can only make the ratio look worse.
                before = model_alone_rate(backbone, batch, args.seconds)
                piped = pipeline_rate(backbone, paths, batch)
                alone = max(before, model_alone_rate(backbone, batch, args.seconds))
                rows.append((backbone.name, weights, batch, alone, piped, piped / alone))
                print(f"{backbone.name} batch {batch}: {alone:.1f} / {piped:.1f} img/s", flush=True)

    print(f"\n{args.images} JPEGs, long side {args.side} px, images/s:\n")
    print("| backbone | weights | batch | model alone | pipeline from JPEG | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for name, weights, batch, alone, piped, ratio in rows:
        print(f"| {name} | {weights} | {batch} | {alone:.1f} | {piped:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
