"""``python -m training.study``: learned codes vs float/LSH/PCA/ITQ on held-out groups.

For every mining mode and code length: train (``python -m training``), then score the held-out
groups with ``python -m retrieval evaluate --model``; prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retrieval import cli as retrieval_cli
from training.__main__ import build_parser as training_parser
from training.losses import MINING_MODES
from training.pipeline import run_training


def run_study(
    dataset: str, out: Path, bits: list[int], minings: list[str], extra: list[str]
) -> list[dict[str, Any]]:
    """Train and evaluate every (mining, bits); returns one row per pair."""
    rows = []
    for mining in minings:
        for k in bits:
            model_dir = out / f"{mining}_{k}"
            argv = ["--dataset", dataset, "--bits", str(k), "--mining", mining]
            summary = run_training(
                training_parser().parse_args([*argv, "--out", str(model_dir), "--quiet", *extra])
            )
            records_path = model_dir / "heldout_eval.json"
            methods = "float,lsh,pca,itq,learned"
            heldout = f"manifest:{model_dir / 'heldout.csv'}"
            evaluate = ["evaluate", "--model", str(model_dir), "--dataset", heldout]
            evaluate += ["--compare", methods, "--bits", str(k), "--json", str(records_path)]
            retrieval_cli.main([*evaluate, "--no-store"])
            records = json.loads(records_path.read_text())
            scores = {r["method"]: r["protocols"]["default"]["map"] for r in records}
            rows.append({"mining": mining, "bits": k, **scores, **_train_facts(summary)})
    return rows


def _train_facts(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_seconds", "epochs_run", "best_epoch", "val_map_learned")
    keys += ("val_map_itq_fit_heldout", "val_map_itq_fit_train")
    return {key: summary.get(key) for key in keys}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per (mining, bits), mAP % of each method, training time."""
    lines = [
        "| mining | bits | float | lsh | pca | itq | learned | train s | epochs (best) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{100 * r[m]:.2f}" for m in ("float", "lsh", "pca", "itq", "learned")]
        lines.append(
            f"| {r['mining']} | {r['bits']} | "
            + " | ".join(cells)
            + f" | {r['train_seconds']:.1f} | {r['epochs_run']} ({r['best_epoch'] + 1}) |"
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
