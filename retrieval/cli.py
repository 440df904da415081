"""Command-line interface: ``python -m retrieval COMMAND`` (extract, expand, evaluate)."""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np

from retrieval.backbones import AUTO, BACKBONE_NAMES, DEFAULT_RESIZE_MODE
from retrieval.backbones.layers import POOLINGS
from retrieval.images import RESIZE_MODES


def collect_image_paths(pattern: str) -> list[Path]:
    """Image files named by a directory (searched recursively), a glob pattern or one file."""
    from retrieval.datasets.files import list_image_files

    path = Path(pattern).expanduser()
    if path.is_dir():
        return list_image_files(path, recursive=True)
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise SystemExit(f"error: no files match {pattern!r}")
    return files


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz next to its destination, then rename, so readers never see half a file."""
    from retrieval.storage import atomic_write

    with atomic_write(path) as stream:
        np.savez(stream, **arrays)


def _add_backbone_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        default=AUTO,
        choices=(AUTO, *BACKBONE_NAMES),
        help="feature backbone; auto = resnet50 where its weights are present, "
        "else efficientnet_lite0",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help="ImageNet weights file for the backbone (resnet50: also $RETRIEVAL_RESNET50_WEIGHTS)",
    )
    parser.add_argument("--pooling", default="avg", choices=POOLINGS)
    parser.add_argument("--resize-mode", default=DEFAULT_RESIZE_MODE, choices=RESIZE_MODES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _load_backbone_from_args(args: argparse.Namespace):
    from retrieval.backbones import WeightsNotFoundError, load_backbone

    try:
        return load_backbone(
            args.backbone, weights=args.weights, pooling=args.pooling, resize_mode=args.resize_mode
        )
    except WeightsNotFoundError as error:
        raise SystemExit(f"error: {error}") from None


def command_extract(args: argparse.Namespace) -> int:
    """Extract float features of a folder or glob into an .npz file."""
    from retrieval.features import extract_features

    paths = collect_image_paths(args.images)
    backbone = _load_backbone_from_args(args)
    print(f"{len(paths)} files, backbone {backbone.name} ({backbone.cache_key})", file=sys.stderr)
    start = time.perf_counter()
    result = extract_features(paths, backbone, batch_size=args.batch_size, cache=not args.no_cache)
    elapsed = time.perf_counter() - start
    save_npz_atomic(
        args.out,
        features=result.features,
        paths=np.asarray(result.paths, dtype=str),
        skipped=np.asarray([f"{p}: {reason}" for p, reason in result.skipped], dtype=str),
        backbone=np.asarray(backbone.name),
        feature_key=np.asarray(backbone.cache_key),
    )
    print(
        f"wrote {args.out}: {len(result.paths)} features of dimension {backbone.feature_dim} "
        f"({result.computed} computed, {len(result.paths) - result.computed} from cache) "
        f"in {elapsed:.1f} s"
    )
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable file(s):")
        for path, reason in result.skipped:
            print(f"  {path}: {reason}")
    return 0


def command_expand(args: argparse.Namespace) -> int:
    """Write augmented views of every image of a dataset, and a manifest grouping them."""
    from retrieval.datasets.augment import expand_cli

    manifest = expand_cli(args.dataset, args.per_image, args.out, args.seed)
    print(f"wrote {manifest}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _bits_list(text: str) -> list[int]:
    bits = _int_list(text)
    bad = [b for b in bits if b <= 0 or b % 8]
    if bad or not bits:
        raise argparse.ArgumentTypeError(
            f"code lengths must be positive multiples of 8 (packed bytes), got {text!r}"
        )
    return bits


def _method_list(text: str) -> list[str]:
    from retrieval.evaluation import ALL_METHODS

    methods = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}"
        )
    return methods


def _load_backbone_for_model(args: argparse.Namespace, model):
    """The backbone a model was trained on (see ``search.backbone_for_model``), with notes on
    the command-line choices it overrides."""
    from retrieval.backbones import WeightsNotFoundError
    from retrieval.search import backbone_for_model

    needed = model.config.get("backbone")
    if args.backbone not in (AUTO, needed):
        note = f"note: --backbone {args.backbone} ignored; the model needs {needed}"
        print(note, file=sys.stderr)
    finetuned = model.backbone_weights()  # HashModelError if named but missing
    if finetuned is not None and args.weights:
        print(
            f"note: --weights ignored; the model brings its fine-tuned {finetuned}", file=sys.stderr
        )
    try:
        return backbone_for_model(model, args.weights)
    except (WeightsNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


def _learned_model(args: argparse.Namespace, dataset):
    """Load ``--model`` with the backbone it needs; refuse its own training data unless allowed."""
    from retrieval.hashing import (
        HashModelError,
        load_hash_model,
        training_overlap,
    )

    try:
        model = load_hash_model(args.model)
        backbone = _load_backbone_for_model(args, model)
        model.check_backbone(backbone.name, backbone.cache_key, backbone.feature_dim)  # any source
    except HashModelError as error:
        raise SystemExit(f"error: {error}") from None
    model.config["path"] = str(args.model)
    reason = training_overlap(model.config, args.dataset, dataset.image_paths)
    if reason and not args.allow_train_eval:
        raise SystemExit(
            f"error: refusing to evaluate {args.model} on its training data ({reason}); "
            "evaluate on held-out groups (heldout.csv in the model directory) or pass "
            "--allow-train-eval (the record then says so)"
        )
    if reason:
        print(f"warning: scoring on training data: {reason}", file=sys.stderr)
    return model, backbone, reason is not None


def command_evaluate(args: argparse.Namespace) -> int:
    """Score methods on a dataset under its public protocol; print a table, store records."""
    from retrieval.datasets import DatasetError, load_dataset
    from retrieval.evaluation import LEARNED, comparison_table, dataset_features, evaluate_methods
    from retrieval.results import append_record, write_json_atomic

    methods = args.compare or [args.baseline or (LEARNED if args.model else "float")]
    if LEARNED in methods and args.model is None:
        raise SystemExit("error: method 'learned' needs a trained model: --model DIR")
    try:
        dataset = load_dataset(args.dataset)
    except (DatasetError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    model, train_eval = None, False
    if args.model is not None:
        model, backbone, train_eval = _learned_model(args, dataset)
    else:
        backbone = _load_backbone_from_args(args)
    bits = args.bits or ([model.bits] if model is not None else [64])
    print(
        f"{dataset.name}: {len(dataset)} images, {len(dataset.queries)} queries; "
        f"backbone {backbone.name}",
        file=sys.stderr,
    )
    features = dataset_features(
        dataset, backbone, crop_queries=not args.full_queries, batch_size=args.batch_size
    )
    try:
        records = evaluate_methods(
            dataset,
            features,
            backbone,
            methods,
            bits,
            dataset_spec=args.dataset,
            seed=args.seed,
            model=model,
            train_eval=train_eval,
        )
    except ValueError as error:  # e.g. more PCA bits than the features allow
        raise SystemExit(f"error: {error}") from None
    for record in records:
        if not args.no_store:
            append_record(record, args.results)
    if args.json:
        write_json_atomic(args.json, records if len(records) > 1 else records[0])

    print(f"\nmAP (%) on {args.dataset}: {features.query_crop}; ties: {records[0]['tie_break']}")
    for protocol in dataset.protocols:
        if len(dataset.protocols) > 1:
            print(f"\nprotocol {protocol}:")
        print(comparison_table(records, protocol))
    if features.skipped:
        print(f"\nskipped {len(features.skipped)} unreadable image(s):")
        for path, reason in features.skipped:
            print(f"  {path}: {reason}")
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


def command_demo(args: argparse.Namespace) -> int:
    """Build the demo collection, model and index when missing (what ``make run`` calls)."""
    from retrieval.quickstart import ensure_demo

    artifacts = ensure_demo(force=args.force)
    print(f"demo collection: {artifacts.manifest.parent}")
    print(f"demo model:      {artifacts.model_dir}")
    print(f"demo index:      {artifacts.index_dir}")
    return 0


def _print_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):")
        for path, reason in skipped:
            print(f"  {path}: {reason}")


def command_index(args: argparse.Namespace) -> int:
    """Encode a dataset's images with a hash model into an index bundle."""
    from retrieval.bundle import BundleError
    from retrieval.datasets import DatasetError, load_dataset
    from retrieval.hashing import HashModelError
    from retrieval.search import build_index

    try:
        dataset = load_dataset(args.dataset)
        report = build_index(
            args.model,
            dataset.image_paths,
            args.out,
            groups=dataset.groups,
            store_features=not args.no_features,
            weights=args.weights,
            batch_size=args.batch_size,
        )
    except (DatasetError, HashModelError, BundleError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(
        f"wrote {args.out}: {report.added} images, {report.bundle.bits}-bit codes "
        f"({report.computed} features computed, {report.added - report.computed} from cache) "
        f"in {report.seconds:.1f} s"
    )
    _print_skipped(report.skipped)
    return 0


def command_search(args: argparse.Namespace) -> int:
    """Rank an index's images for one query image; print paths and Hamming distances."""
    from retrieval.bundle import BundleError
    from retrieval.hashing import HashModelError
    from retrieval.images import ImageLoadError
    from retrieval.search import Searcher, response_as_json

    try:
        searcher = Searcher(args.index, kind=args.kind, weights=args.weights)
        response = searcher.search(args.image, args.top_k, rerank=args.rerank)
    except (BundleError, HashModelError, ImageLoadError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.json:
        print(response_as_json(response))
        return 0
    for hit in response.hits:
        print(f"{hit.rank:>4}  {hit.distance:>4}  {hit.path}")
    timings = ", ".join(f"{key} {value:.1f} ms" for key, value in response.timings_ms.items())
    print(f"{len(searcher)} images searched; {timings}; ties: {response.tie_break}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m retrieval``."""
    parser = argparse.ArgumentParser(
        prog="python -m retrieval",
        description="Image retrieval with learned binary codes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    extract = commands.add_parser(
        "extract", help="extract backbone features of images into an .npz file"
    )
    extract.add_argument("--images", required=True, help="a folder, a glob pattern or one file")
    extract.add_argument("--out", required=True, type=Path, help="output .npz file")
    _add_backbone_options(extract)
    extract.set_defaults(handler=command_extract)

    expand = commands.add_parser(
        "expand", help="write augmented views of a dataset's images and a manifest CSV"
    )
    expand.add_argument("--dataset", required=True, help="dataset spec, e.g. folder:PATH")
    expand.add_argument("--per-image", type=int, default=8, help="views per source image")
    expand.add_argument("--out", required=True, type=Path, help="output folder")
    expand.add_argument("--seed", type=int, default=0)
    expand.set_defaults(handler=command_expand)

    demo = commands.add_parser(
        "demo", help="build the demo collection, model and index under data/ when missing"
    )
    demo.add_argument("--force", action="store_true", help="rebuild all three")
    demo.set_defaults(handler=command_demo)

    index = commands.add_parser("index", help="encode a dataset into an index bundle")
    index.add_argument("--model", required=True, type=Path, help="hash model directory")
    index.add_argument("--dataset", required=True, help="dataset spec, e.g. folder:PATH")
    index.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    index.add_argument(
        "--no-features", action="store_true", help="store no float features (no --rerank)"
    )
    index.add_argument("--weights", type=Path, help="backbone ImageNet weights file")
    index.add_argument("--batch-size", type=int, default=32)
    index.set_defaults(handler=command_index)

    search = commands.add_parser("search", help="top-k of a query image in an index bundle")
    search.add_argument("--index", required=True, type=Path, help="bundle directory")
    search.add_argument("--image", required=True, type=Path, help="query image file")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument(
        "--rerank", type=int, default=0, help="re-rank the top R by cosine on float features"
    )
    search.add_argument("--kind", default="flat", choices=("flat", "hnsw", "ivf"))
    search.add_argument("--weights", type=Path, help="backbone ImageNet weights file")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(handler=command_search)

    from retrieval.datasets import DATASET_SPEC_HELP

    evaluate = commands.add_parser(
        "evaluate",
        help="mAP of float features and binary baselines under a dataset's public protocol",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DATASET_SPEC_HELP,
    )
    evaluate.add_argument("--dataset", required=True, help="dataset spec (see below)")
    methods = evaluate.add_mutually_exclusive_group()
    methods.add_argument(
        "--baseline",
        default=None,
        choices=("float", "lsh", "pca", "itq", "learned"),
        help="one method (default float, or learned with --model)",
    )
    methods.add_argument(
        "--compare",
        type=_method_list,
        help="comma-separated methods, e.g. float,lsh,pca,itq,learned",
    )
    evaluate.add_argument(
        "--bits",
        type=_bits_list,
        default=None,
        help="code lengths, e.g. 16,32,64,128 (default 64, or the model's with --model)",
    )
    evaluate.add_argument(
        "--model", type=Path, help="a trained hash model directory (python -m training)"
    )
    evaluate.add_argument(
        "--allow-train-eval",
        action="store_true",
        help="allow scoring a model on its own training data (recorded as such)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of LSH and ITQ")
    evaluate.add_argument(
        "--full-queries", action="store_true", help="do not crop queries to their box"
    )
    evaluate.add_argument("--json", type=Path, help="also write the record(s) to this file")
    evaluate.add_argument(
        "--results", type=Path, help="results store (JSON lines) to append to; default data/"
    )
    evaluate.add_argument("--no-store", action="store_true", help="do not append to the store")
    _add_backbone_options(evaluate)
    evaluate.set_defaults(handler=command_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)
