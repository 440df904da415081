"""``python -m training``: train a hash head (``--fine-tune``: with its backbone) and save it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retrieval.backbones import AUTO, BACKBONE_NAMES, DEFAULT_RESIZE_MODE
from retrieval.backbones.layers import POOLINGS
from retrieval.hashing import BIT_CHOICES
from retrieval.images import RESIZE_MODES
from training.losses import MINING_MODES


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m training``."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the hashing head with mined triplets on a dataset's groups "
        "(split by group for validation) and save it as a model directory.",
    )
    parser.add_argument("--dataset", required=True, help="dataset spec, e.g. demo or folder:PATH")
    parser.add_argument("--backbone", default=AUTO, choices=(AUTO, *BACKBONE_NAMES))
    parser.add_argument("--weights", type=Path, help="ImageNet weights file for the backbone")
    parser.add_argument("--pooling", default="avg", choices=POOLINGS)
    parser.add_argument("--resize-mode", default=DEFAULT_RESIZE_MODE, choices=RESIZE_MODES)
    parser.add_argument("--bits", type=int, default=64, choices=BIT_CHOICES)
    parser.add_argument("--out", required=True, type=Path, help="model directory to write")
    parser.add_argument("--mining", default="batch-hard", choices=MINING_MODES)
    parser.add_argument("--margin-bits", type=float, default=2.0, help="margin in Hamming bits")
    parser.add_argument("--quantization-weight", type=float, default=0.1)
    parser.add_argument("--balance-weight", type=float, default=0.1)
    parser.add_argument("--triplet-weight", type=float, default=1.0)
    parser.add_argument(
        "--similarity-weight",
        type=float,
        default=None,
        help="code inner products / K vs the centred cosine of the float features, all pairs "
        "(default 0.1; needs features, so 0 with --fine-tune)",
    )
    parser.add_argument(
        "--anchor-weight",
        type=float,
        default=0.0,
        help="pull of the hash layer back to its initial (ITQ) weights",
    )
    parser.add_argument(
        "--positives",
        default="group",
        choices=("group", "source"),
        help="positives: the same group, or the views of the same source image",
    )
    parser.add_argument(
        "--projection-dim",
        type=int,
        default=0,
        help="hidden Dense+ReLU (0: none; needs --init random)",
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batches-per-epoch", type=int, default=None)
    parser.add_argument("--groups-per-batch", type=int, default=8, help="P")
    parser.add_argument("--images-per-group", type=int, default=4, help="K")
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="default 1e-3; 1e-4 with --fine-tune"
    )
    parser.add_argument("--patience", type=int, default=5, help="early stopping on val mAP")
    parser.add_argument(
        "--no-center-bits",
        action="store_true",
        help="keep the trained bias (default: shift it so each bit splits the training set 50/50)",
    )
    parser.add_argument(
        "--keep-last",
        action="store_true",
        help="no early stopping and keep the last epoch (held-out groups stay unseen by selection)",
    )
    parser.add_argument(
        "--init",
        default="itq",
        choices=("random", "itq"),
        help="hash layer start: ITQ fitted on the training features (default) or random",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="groups held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--expand-views",
        type=int,
        default=0,
        help="first write N augmented views per image (positives for collections without groups)",
    )
    parser.add_argument("--expand-dir", type=Path, help="where to write the expanded collection")
    parser.add_argument("--batch-size", type=int, default=32, help="feature extraction batch")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--freeze-backbone",
        dest="fine_tune",
        action="store_false",
        help="train the head on cached features (default)",
    )
    mode.add_argument(
        "--fine-tune",
        dest="fine_tune",
        action="store_true",
        help="train end to end: the backbone unfrozen, images in (for a GPU; see README)",
    )
    parser.set_defaults(fine_tune=False)
    parser.add_argument(
        "--max-train-images",
        type=int,
        default=0,
        help="--fine-tune: decode at most N training (and N held-out) images into memory "
        "(spread evenly over the groups; 0: all)",
    )
    parser.add_argument(
        "--train-batchnorm",
        action="store_true",
        help="--fine-tune: let batch norm update its statistics (default: frozen, inference mode)",
    )
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train and save; prints the validation mAP next to ITQ's at the same code length."""
    args = build_parser().parse_args(argv)
    from training.pipeline import run_training

    summary = run_training(args)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
