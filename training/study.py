"""``python -m training.study``: learned codes vs float/LSH/PCA/ITQ on held-out groups.

For every mining mode and code length: train (``python -m training``), then score the held-out
groups with ``python -m retrieval evaluate --model`` (float, and LSH / PCA / ITQ fitted on the
held-out database itself, as ``evaluate`` always does: transductive). Next to them, the same
baselines fitted on the *training* images only (what the learned head saw), scored with the
same protocol, and the leave-one-out held-out mAP (every held-out image a query) of the learned
head and of ITQ fitted either way. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import cli as retrieval_cli
from retrieval.baselines import BASELINES, BinaryEncoder
from retrieval.datasets.manifest import load_manifest
from retrieval.evaluation import dataset_features, score_rankings
from retrieval.ranking import pack_bits, rank_by_hamming
from training.__main__ import build_parser as training_parser
from training.losses import MINING_MODES
from training.pipeline import prepare_data, run_training


def train_fitted_baselines(
    train_features: np.ndarray, heldout_manifest: Path, backbone: Any, bits: int, seed: int = 0
) -> dict[str, float | None]:
    """mAP of LSH / PCA / ITQ fitted on ``train_features``, on the held-out manifest's protocol
    (the queries, database and tie order ``evaluate`` uses); None where a fit is impossible."""
    dataset = load_manifest(heldout_manifest)
    features = dataset_features(dataset, backbone, progress=False)
    scores: dict[str, float | None] = {}
    for method in BASELINES:
        try:
            encoder = BinaryEncoder(method, bits, seed=seed).fit(train_features)
        except ValueError:
            scores[f"{method}_train"] = None
            continue
        ranking = rank_by_hamming(
            pack_bits(encoder.encode(features.queries)),
            pack_bits(encoder.encode(features.database)),
        )
        protocols = score_rankings(
            dataset, features.database_indices[ranking], features.query_indices
        )
        scores[f"{method}_train"] = protocols["default"]["map"]
    return scores


def run_study(
    dataset: str, out: Path, bits: list[int], minings: list[str], extra: list[str]
) -> list[dict[str, Any]]:
    """Train and evaluate every (mining, bits); returns one row per pair."""
    rows = []
    prepared = None
    for mining in minings:
        for k in bits:
            model_dir = out / f"{mining}_{k}"
            argv = ["--dataset", dataset, "--bits", str(k), "--mining", mining]
            args = training_parser().parse_args([*argv, "--out", str(model_dir), "--quiet", *extra])
            summary = run_training(args)
            records_path = model_dir / "heldout_eval.json"
            methods = "float,lsh,pca,itq,learned"
            heldout = f"manifest:{model_dir / 'heldout.csv'}"
            evaluate = ["evaluate", "--model", str(model_dir), "--dataset", heldout]
            evaluate += ["--compare", methods, "--bits", str(k), "--json", str(records_path)]
            retrieval_cli.main([*evaluate, "--no-store"])
            records = json.loads(records_path.read_text())
            scores = {r["method"]: r["protocols"]["default"]["map"] for r in records}
            if prepared is None:  # features are cached: the split does not depend on the run
                prepared = prepare_data(args)
            _, backbone, data = prepared
            fitted = train_fitted_baselines(
                data.features[data.train_mask], model_dir / "heldout.csv", backbone, k, args.seed
            )
            rows.append({"mining": mining, "bits": k, **scores, **fitted, **_train_facts(summary)})
    return rows


def _train_facts(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_seconds", "epochs_run", "best_epoch", "val_map_learned")
    keys += ("val_map_itq_fit_heldout", "val_map_itq_fit_train")
    return {key: summary.get(key) for key in keys}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


COLUMNS = ("float", "lsh", "pca", "itq", "lsh_train", "pca_train", "itq_train", "learned")
LOO_COLUMNS = ("val_map_itq_fit_heldout", "val_map_itq_fit_train", "val_map_learned")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per (mining, bits), mAP % of each method, training time."""
    lines = [
        "| mining | bits | float | LSH | PCA | ITQ | LSH train | PCA train | ITQ train | learned "
        "| LOO ITQ | LOO ITQ train | LOO learned | train s |",
        "|---|---:|" + "---:|" * 12,
    ]
    for r in rows:
        cells = [_pct(r.get(m)) for m in (*COLUMNS, *LOO_COLUMNS)]
        lines.append(
            f"| {r['mining']} | {r['bits']} | "
            + " | ".join(cells)
            + f" | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the study; extra arguments after ``--`` go to ``python -m training``."""
    parser = argparse.ArgumentParser(prog="python -m training.study")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bits", default="16,32,64,128")
    parser.add_argument("--mining", default=",".join(MINING_MODES))
    parser.add_argument("extra", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    rows = run_study(
        args.dataset,
        args.out,
        [int(b) for b in args.bits.split(",")],
        args.mining.split(","),
        extra,
    )
    (args.out / "study.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
