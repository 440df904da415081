"""Protocol scoring, evaluation records, the comparison table, the results store and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrieval.cli as cli
from retrieval.backbones import Backbone
from retrieval.datasets import load_dataset
from retrieval.datasets.base import GroundTruth, Query, RetrievalDataset
from retrieval.evaluation import (
    DatasetFeatures,
    comparison_table,
    dataset_features,
    evaluate_method,
    evaluate_methods,
    rank_with_method,
    score_rankings,
)
from retrieval.ranking import TIE_BREAK
from retrieval.results import append_record, read_records, write_json_atomic
from tests import builders

REPO_ROOT = Path(__file__).resolve().parent.parent

# Stands in for a real backbone where no image is read: records only use name and cache key.
NAMED_BACKBONE = Backbone("named", None, 0, 4, "avg", "none", "test")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_backbone() -> Backbone:
    """A small deterministic convolutional model standing in for a real backbone."""
    return builders.tiny_backbone()


@pytest.fixture
def isolated_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the data, cache and results locations at the test's own folder."""
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RETRIEVAL_RESULTS", str(tmp_path / "data" / "results.jsonl"))
    return tmp_path


def make_dataset(queries: list[Query], n_images: int, protocols=("default",)) -> RetrievalDataset:
    return RetrievalDataset(
        name="hand",
        root=Path("hand"),
        image_paths=[Path(f"img{i}.jpg") for i in range(n_images)],
        image_ids=[f"img{i}" for i in range(n_images)],
        queries=queries,
        protocols=protocols,
    )


def query(name: str, **truth: GroundTruth) -> Query:
    return Query(name=name, path=Path(f"{name}.jpg"), ground_truth=dict(truth))


def gt(positives: set[int], junk: set[int] = frozenset()) -> GroundTruth:  # type: ignore[assignment]
    return GroundTruth(frozenset(positives), frozenset(junk))


def revisited_truth(easy: set[int], hard: set[int], junk: set[int]) -> dict[str, GroundTruth]:
    """The revisited protocols, as DESIGN.md section 4 defines them."""
    return {
        "easy": gt(easy, junk | hard),
        "medium": gt(easy | hard, junk),
        "hard": gt(hard, junk | easy),
    }


def write_noise_images(folder: Path, names: list[str], seed: int, tint: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        pixels = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
        pixels[..., tint % 3] = 255  # groups differ in colour
        Image.fromarray(pixels).save(folder / name)
        paths.append(folder / name)
    return paths


# --- score_rankings on hand-computed numbers ---------------------------------------------------


def test_score_rankings_hand_computed_ap_and_precision() -> None:
    # Database ids 0..9. Query "oxford": positives a=0 b=3 c=6 d=8, junk j=2, ranked
    # a x1 j b x2 x3 c x4 d x5 -> AP 0.624405 (DESIGN.md section 4).
    # Query "holidays": itself (0) is junk, positives {1, 3}, ranked 0 1 9 3 ... -> 0.791667.
    dataset = make_dataset(
        [
            query("oxford", default=gt({0, 3, 6, 8}, {2})),
            query("no_positives", default=gt(set())),
            query("holidays", default=gt({1, 3}, {0})),
            query("other_protocol_only", hard=gt({1})),
        ],
        10,
    )
    rankings = np.array(
        [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
            [0, 1, 9, 3, 2, 4, 5, 6, 7, 8],
            [1, 0, 2, 3, 4, 5, 6, 7, 8, 9],
        ]
    )
    scores = score_rankings(dataset, rankings, np.arange(4))
    assert set(scores) == {"default"}
    default = scores["default"]
    assert default["n_queries"] == 2  # queries without positives are skipped
    assert set(default["per_query_ap"]) == {"oxford", "holidays"}
    assert default["per_query_ap"]["oxford"] == pytest.approx(0.624405, abs=1e-6)
    assert default["per_query_ap"]["holidays"] == pytest.approx(0.791667, abs=1e-6)
    assert default["map"] == pytest.approx((0.624405 + 0.791667) / 2, abs=1e-6)
    # Junk-free lists: oxford a x1 b x2 x3 c x4 d x5 (9 long), holidays 1 9 3 2 4 5 6 7 8.
    # P@1 = (1 + 1) / 2; P@5 = (2/5 + 2/5) / 2; P@10 = (4/10 + 2/10) / 2 (always over k).
    assert default["precision_at_k"] == pytest.approx({"1": 1.0, "5": 0.4, "10": 0.3})
    json.dumps(scores)  # plain Python numbers only


def test_score_rankings_uses_query_indices_for_rows() -> None:
    dataset = make_dataset(
        [query("q0", default=gt({1})), query("q1", default=gt({2})), query("q2", default=gt({3}))],
        4,
    )
    # Query q0 could not be read: rows hold q2 then q1 (any order the features came in).
    rankings = np.array([[3, 0, 1, 2], [0, 1, 2, 3]])
    scores = score_rankings(dataset, rankings, np.array([2, 1]))["default"]
    assert scores["per_query_ap"] == pytest.approx({"q2": 1.0, "q1": (0 + 1 / 3) / 2})
    assert scores["n_queries"] == 2


def test_score_rankings_revisited_protocols() -> None:
    dataset = make_dataset(
        [
            query("q0", **revisited_truth(easy={0, 1}, hard={2, 3}, junk={4})),
            query("q1", **revisited_truth(easy={5}, hard=set(), junk=set())),
        ],
        8,
        protocols=("easy", "medium", "hard"),
    )
    rankings = np.array([[2, 5, 0, 4, 1, 6, 3, 7], [5, 0, 1, 2, 3, 4, 6, 7]])
    scores = score_rankings(dataset, rankings, np.arange(2))
    assert list(scores) == ["easy", "medium", "hard"]
    # q0 easy: junk {4, 2, 3} removed -> 5 0 1 6 7; positives at ranks 1, 2:
    #   ((0/1 + 1/2)/2 + (1/2 + 2/3)/2) / 2 = 0.416667
    # q0 medium: junk {4} -> 2 5 0 1 6 3 7; positives at ranks 0, 2, 3, 5:
    #   (1 + 0.583333 + 0.708333 + (3/5 + 4/6)/2) / 4 = 0.73125
    # q0 hard: junk {4, 0, 1} -> 2 5 6 3 7; positives at ranks 0, 3: (1 + (1/3 + 2/4)/2) / 2
    # q1: AP 1 in easy and medium, no hard positives so skipped there.
    assert scores["easy"]["per_query_ap"] == pytest.approx({"q0": 0.416667, "q1": 1.0}, abs=1e-6)
    assert scores["medium"]["per_query_ap"] == pytest.approx({"q0": 0.73125, "q1": 1.0})
    assert scores["hard"]["per_query_ap"] == pytest.approx({"q0": 0.708333}, abs=1e-6)
    assert [scores[p]["n_queries"] for p in ("easy", "medium", "hard")] == [2, 2, 1]
    assert scores["medium"]["map"] == pytest.approx((0.73125 + 1) / 2)
    # P@1: easy q0 ranks 5 first (miss); P@5 easy q0 5 0 1 6 7 -> 2/5, q1 -> 1/5.
    assert scores["easy"]["precision_at_k"]["1"] == pytest.approx(0.5)
    assert scores["easy"]["precision_at_k"]["5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert scores["medium"]["precision_at_k"]["5"] == pytest.approx((3 / 5 + 1 / 5) / 2)
    assert scores["hard"]["precision_at_k"] == pytest.approx({"1": 1.0, "5": 0.4, "10": 0.2})


def test_score_rankings_protocol_without_any_scorable_query_is_left_out() -> None:
    dataset = make_dataset(
        [query("q0", **revisited_truth(easy={1}, hard=set(), junk=set()))],
        3,
        protocols=("easy", "medium", "hard"),
    )
    scores = score_rankings(dataset, np.array([[0, 1, 2]]), np.arange(1))
    assert list(scores) == ["easy", "medium"]


# --- rank_with_method / evaluate_method records ----------------------------------------------


def grouped_features(
    skip_database: tuple[int, ...] = (),
) -> tuple[RetrievalDataset, DatasetFeatures]:
    """6 groups x 4 points in 32-d; the first point of each group is its query (own entry junk)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 4)
    points = rng.standard_normal((6, 32))[labels] + 0.2 * rng.standard_normal((24, 32))
    points = points.astype(np.float32)
    queries = [
        Query(
            f"group{g}",
            Path(f"{4 * g}.jpg"),
            {"default": gt(set(range(4 * g + 1, 4 * g + 4)), {4 * g})},
            database_index=4 * g,
        )
        for g in range(6)
    ]
    dataset = make_dataset(queries, 24)
    kept = np.array([i for i in range(24) if i not in skip_database])
    features = DatasetFeatures(
        database=points[kept],
        database_indices=kept,
        queries=points[::4],
        query_indices=np.arange(6),
        query_crop="no query boxes in this dataset",
        skipped=[(f"img{i}.jpg", "cannot decode") for i in skip_database],
        seconds=1.23456,
    )
    return dataset, features


@pytest.mark.parametrize("method,bits", [("float", None), ("lsh", 8), ("pca", 8), ("itq", 8)])
def test_rank_with_method_returns_full_rankings_of_dataset_indices(
    method: str, bits: int | None
) -> None:
    _, features = grouped_features(skip_database=(5, 10))
    rankings, timing = rank_with_method(method, bits, features)
    assert rankings.shape == (6, 22)
    for row in rankings:  # every readable image exactly once, the unreadable never
        assert sorted(row.tolist()) == features.database_indices.tolist()
    assert set(timing) == ({"rank_s"} if method == "float" else {"encode_s", "rank_s"})
    assert all(v >= 0 for v in timing.values())


def test_rank_with_method_errors() -> None:
    _, features = grouped_features()
    with pytest.raises(ValueError, match="needs a number of bits"):
        rank_with_method("itq", None, features)
    with pytest.raises(ValueError, match="unknown method"):
        rank_with_method("sdh", 16, features)


def test_evaluate_method_record_fields() -> None:
    dataset, features = grouped_features()
    record = evaluate_method(
        dataset, features, NAMED_BACKBONE, "float", 16, dataset_spec="folder:/x", seed=5
    )
    assert record["dataset"] == "folder:/x" and record["dataset_name"] == "hand"
    assert record["method"] == "float" and record["bits"] is None  # float has no bits
    assert record["seed"] is None and record["fit"] is None
    assert record["backbone"] == "named" and record["feature_key"] == NAMED_BACKBONE.cache_key
    assert record["tie_break"] == TIE_BREAK
    assert record["query_crop"] == "no query boxes in this dataset"
    assert record["n_database"] == 24 and record["n_queries"] == 6
    assert set(record["protocols"]["default"]["per_query_ap"]) == {f"group{g}" for g in range(6)}
    assert record["protocols"]["default"]["map"] == pytest.approx(1.0)
    assert record["timing"]["features_s"] == 1.235 and "rank_s" in record["timing"]
    assert record["skipped"] == []
    assert datetime.fromisoformat(record["created"]).tzinfo is not None
    assert json.loads(json.dumps(record)) == record  # storable as a JSON line as is

    itq = evaluate_method(dataset, features, NAMED_BACKBONE, "itq", 8, dataset_spec="x", seed=5)
    assert itq["bits"] == 8 and itq["seed"] == 5 and itq["fit"]
    assert {"encode_s", "rank_s", "features_s"} <= set(itq["timing"])
    pca = evaluate_method(dataset, features, NAMED_BACKBONE, "pca", 8, dataset_spec="x", seed=5)
    assert pca["seed"] is None  # PCA uses no randomness


def test_evaluate_methods_float_once_and_each_baseline_per_length() -> None:
    dataset, features = grouped_features()
    records = evaluate_methods(
        dataset, features, NAMED_BACKBONE, ["float", "lsh", "itq"], [8, 16], dataset_spec="x"
    )
    assert [(r["method"], r["bits"]) for r in records] == [
        ("float", None),
        ("lsh", 8),
        ("lsh", 16),
        ("itq", 8),
        ("itq", 16),
    ]
    assert records[0]["protocols"]["default"]["map"] == pytest.approx(1.0)
    assert all(r["protocols"]["default"]["map"] > 0.8 for r in records)  # chance: about 0.15


def test_unreadable_database_images_are_skipped_and_listed(
    isolated_data: Path, tiny_backbone: Backbone
) -> None:
    root = isolated_data / "shop"
    write_noise_images(root / "a", ["a0.png", "a1.png", "a2.png"], seed=1, tint=0)
    write_noise_images(root / "b", ["b0.png", "b1.png"], seed=2, tint=1)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "b" / "empty.jpg").write_bytes(b"")
    dataset = load_dataset(f"folder:{root}")
    bad = {dataset.image_paths.index(root / "b" / n) for n in ("broken.png", "empty.jpg")}

    features = dataset_features(dataset, tiny_backbone, progress=False)
    assert sorted(features.database_indices.tolist()) == sorted(set(range(len(dataset))) - bad)
    assert features.query_crop == "no query boxes in this dataset"
    for method, bits in (("float", None), ("lsh", 8)):
        rankings, _ = rank_with_method(method, bits, features)
        assert not bad & set(rankings.ravel().tolist())
        record = evaluate_method(
            dataset, features, tiny_backbone, method, bits, dataset_spec=f"folder:{root}"
        )
        assert record["n_database"] == len(dataset) - 2
        assert sorted(s.split(": ")[0] for s in record["skipped"]) == sorted(
            str(root / "b" / n) for n in ("broken.png", "empty.jpg")
        )
        assert record["protocols"]["default"]["n_queries"] == 2


def test_an_unreadable_query_image_is_listed_once(
    isolated_data: Path, tiny_backbone: Backbone
) -> None:
    root = isolated_data / "shop"
    write_noise_images(root / "a", ["a0.png", "a1.png"], seed=1)
    write_noise_images(root / "b", ["b1.png"], seed=2)
    (root / "b" / "b0.png").write_bytes(b"garbage")  # the query of group b
    features = dataset_features(load_dataset(f"folder:{root}"), tiny_backbone, progress=False)
    assert features.query_indices.tolist() == [0]
    assert [path for path, _ in features.skipped] == [str(root / "b" / "b0.png")]


def write_oxford_tree(root: Path, make_image) -> None:
    """A tiny Oxford5k tree: query q_000000 cropped to its right half; 3 good, 1 junk."""
    jpg, gt_dir = root / "jpg", root / "gt_files"
    jpg.mkdir(parents=True)
    gt_dir.mkdir()
    for name, image in make_image().items():
        image.save(jpg / f"{name}.jpg", quality=90)
    width, height = Image.open(jpg / "q_000000.jpg").size
    box = f"{width / 2:.1f} 0 {width} {height}"
    (gt_dir / "target_1_query.txt").write_text(f"oxc1_q_000000 {box}\n")
    (gt_dir / "target_1_good.txt").write_text("target_000001\ntarget_000002\n")
    (gt_dir / "target_1_ok.txt").write_text("target_000003\n")
    (gt_dir / "target_1_junk.txt").write_text("other_000003\n")


def noise_oxford_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    images = {}
    for kind, tint in (("target", 0), ("other", 1), ("third", 2)):
        for i in range(1, 4):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            pixels[..., tint] = 255
            images[f"{kind}_{i:06d}"] = Image.fromarray(pixels)
    left = np.asarray(images["other_000001"])
    right = np.asarray(images["target_000001"])
    images["q_000000"] = Image.fromarray(np.concatenate([left, right], axis=1))
    return images


def test_query_boxes_crop_the_query_unless_full_queries(
    isolated_data: Path, tiny_backbone: Backbone
) -> None:
    root = isolated_data / "oxford"
    write_oxford_tree(root, noise_oxford_images)
    dataset = load_dataset(f"oxford5k:{root}")
    query_row = dataset.queries[0].database_index
    cropped = dataset_features(dataset, tiny_backbone, progress=False)
    full = dataset_features(dataset, tiny_backbone, crop_queries=False, progress=False)
    assert cropped.query_crop == "queries cropped to their box"
    assert full.query_crop == "full query images"
    # The full query is the database image itself; the cropped one is a different view.
    np.testing.assert_allclose(full.queries[0], full.database[query_row], rtol=1e-5, atol=1e-6)
    assert not np.allclose(cropped.queries[0], cropped.database[query_row], rtol=1e-3)
    np.testing.assert_array_equal(cropped.database, full.database)
    record = evaluate_method(dataset, cropped, tiny_backbone, "float", None, dataset_spec="ox")
    assert record["query_crop"] == "queries cropped to their box"


# --- comparison table -------------------------------------------------------------------------


def fake_record(method: str, bits: int | None, maps: dict[str, float]) -> dict:
    return {
        "method": method,
        "bits": bits,
        "backbone": "resnet50",
        "protocols": {p: {"map": m} for p, m in maps.items()},
    }


def test_comparison_table_layout() -> None:
    records = [
        fake_record("float", None, {"default": 0.9}),
        fake_record("lsh", 32, {"default": 0.6}),
        fake_record("lsh", 16, {"default": 0.5}),
        fake_record("itq", 16, {"default": 0.71234}),
        fake_record("itq", 32, {"other": 0.1}),
    ]
    assert comparison_table(records, "default").splitlines() == [
        "| method | 16 bits | 32 bits |",
        "|---|---:|---:|",
        "| float (cosine, resnet50) | 90.00 | 90.00 |",
        "| lsh | 50.00 | 60.00 |",
        "| itq | 71.23 | - |",
    ]
    assert comparison_table(records, "other").splitlines()[2:] == [
        "| float (cosine, resnet50) | - | - |",
        "| lsh | - | - |",
        "| itq | - | 10.00 |",
    ]


def test_comparison_table_of_float_alone_shows_its_map() -> None:
    table = comparison_table([fake_record("float", None, {"default": 0.9})], "default")
    assert "90.00" in table


# --- results store ----------------------------------------------------------------------------


def assert_all_records(path: Path, writers: int, per_writer: int) -> None:
    records, problems = read_records(path)
    assert problems == []
    assert len(path.read_text().splitlines()) == writers * per_writer
    assert sorted((r["writer"], r["n"]) for r in records) == [
        (w, n) for w in range(writers) for n in range(per_writer)
    ]
    assert all(r["pad"] == "x" * 3000 for r in records)


def test_append_from_many_threads_loses_no_line(tmp_path: Path) -> None:
    path = tmp_path / "store" / "results.jsonl"  # the folder is created on first append

    def write(writer: int) -> None:
        for n in range(40):
            append_record({"writer": writer, "n": n, "pad": "x" * 3000}, path)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert_all_records(path, 8, 40)


def test_append_from_many_processes_loses_no_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    script = (
        "import sys; from pathlib import Path; from retrieval.results import append_record\n"
        "w = int(sys.argv[1])\n"
        "for n in range(40):\n"
        "    append_record({'writer': w, 'n': n, 'pad': 'x' * 3000}, Path(sys.argv[2]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(w), str(path)], env=env)
        for w in range(4)
    ]
    assert [p.wait(timeout=60) for p in workers] == [0] * 4
    assert_all_records(path, 4, 40)


def test_read_records_reports_corrupt_lines_and_reads_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"n": 1}\n{"n": 2, "trunc\n[1, 2]\n\n{"n": 3}\n')
    records, problems = read_records(path)
    assert records == [{"n": 1}, {"n": 3}]
    assert len(problems) == 2
    assert f"{path}:2: not a JSON record" in problems[0]
    assert problems[1] == f"{path}:3: not a JSON object"
    assert read_records(tmp_path / "missing.jsonl") == ([], [])


def test_append_after_a_truncated_line_keeps_the_new_record(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"n": 1}\n{"n": 2, "tru')
    append_record({"n": 3}, path)
    records, problems = read_records(path)
    assert {"n": 3} in records and len(problems) == 1


def test_append_uses_the_results_location_by_default(isolated_data: Path) -> None:
    written = append_record({"n": 1})
    assert written == isolated_data / "data" / "results.jsonl"
    assert read_records() == ([{"n": 1}], [])


def test_write_json_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out" / "records.json"
    write_json_atomic(path, [{"a": 1}])
    write_json_atomic(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"c": object()})  # fails half way through serialising
    assert json.loads(path.read_text()) == {"b": [1, 2]}  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["records.json"]


# --- the evaluate command (stand-in backbone) -------------------------------------------------


@pytest.fixture
def tiny_cli(monkeypatch: pytest.MonkeyPatch, isolated_data: Path, tiny_backbone: Backbone):
    monkeypatch.setattr(cli, "_load_backbone_from_args", lambda args: tiny_backbone)
    return isolated_data


def colour_folder(root: Path) -> Path:
    for g in range(3):
        write_noise_images(root / f"group{g}", [f"{i}.png" for i in range(4)], seed=g, tint=g)
    return root


def test_cli_evaluate_compare_table_json_and_store(tiny_cli: Path, capsys) -> None:
    root = colour_folder(tiny_cli / "shop")
    out, store = tiny_cli / "out.json", tiny_cli / "res.jsonl"
    argv = ["evaluate", "--dataset", f"folder:{root}", "--compare", "float,lsh"]
    argv += ["--bits", "8,16", "--json", str(out), "--results", str(store)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"mAP (%) on folder:{root}: no query boxes in this dataset; ties: {TIE_BREAK}" in printed
    assert "| method | 8 bits | 16 bits |" in printed
    assert "| float (cosine, tiny) |" in printed and "| lsh |" in printed
    records = json.loads(out.read_text())
    assert [(r["method"], r["bits"]) for r in records] == [("float", None), ("lsh", 8), ("lsh", 16)]
    assert all(r["n_queries"] == 3 and r["n_database"] == 12 for r in records)
    assert read_records(store) == (records, [])
    float_map = records[0]["protocols"]["default"]["map"]
    assert f"| float (cosine, tiny) | {100 * float_map:.2f} |" in printed

    # One method: the JSON file holds that record alone; --no-store leaves the store as it was.
    argv = ["evaluate", "--dataset", f"folder:{root}", "--baseline", "itq", "--bits", "8"]
    assert cli.main([*argv, "--json", str(out), "--results", str(store), "--no-store"]) == 0
    single = json.loads(out.read_text())
    assert single["method"] == "itq" and single["bits"] == 8
    assert len(read_records(store)[0]) == 3


def test_cli_evaluate_reports_unreadable_images(tiny_cli: Path, capsys) -> None:
    root = colour_folder(tiny_cli / "shop")
    (root / "group1" / "9.png").write_bytes(b"not an image")
    argv = ["evaluate", "--dataset", f"folder:{root}", "--no-store", "--compare", "float,lsh"]
    assert cli.main([*argv, "--bits", "8"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image(s):" in printed
    assert str(root / "group1" / "9.png") in printed


def test_cli_evaluate_bad_dataset_is_a_clean_error(tiny_cli: Path) -> None:
    with pytest.raises(SystemExit, match=r"error: .*dataset folder not found"):
        cli.main(["evaluate", "--dataset", f"folder:{tiny_cli / 'nowhere'}", "--no-store"])
    with pytest.raises(SystemExit):  # argparse: unknown method
        cli.main(["evaluate", "--dataset", "demo", "--compare", "float,sdh"])


@pytest.mark.parametrize("methods,bits", [("float,pca", "16"), ("float,lsh", "12")])
def test_cli_evaluate_unusable_bits_is_a_clean_error(
    tiny_cli: Path, methods: str, bits: str, capsys
) -> None:
    root = colour_folder(tiny_cli / "shop")
    argv = ["evaluate", "--dataset", f"folder:{root}", "--compare", methods, "--bits", bits]
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--no-store"])
    # Too many PCA bits is known only after extraction; a length that is not a multiple of 8
    # is refused by the argument parser before any work. Both name the bits, no traceback.
    assert "bits" in str(caught.value) or "multiples of 8" in capsys.readouterr().err


# --- end to end with the real offline backbone ------------------------------------------------


def _photos() -> dict[str, Image.Image]:
    from skimage import data

    def rgb(array: np.ndarray, size: int = 256) -> Image.Image:
        image = Image.fromarray(array)
        return image.convert("RGB").resize((size, size * image.height // image.width))

    return {
        "chelsea": rgb(data.chelsea()),
        "coffee": rgb(data.coffee()),
        "astronaut": rgb(data.astronaut()),
        "rocket": rgb(data.rocket()),
    }


def _views(image: Image.Image) -> list[Image.Image]:
    """The photo, a crop and a mirrored crop of it."""
    w, h = image.size
    crop = image.crop((w // 10, h // 12, w - w // 8, h - h // 10))
    return [image, crop, image.crop((0, 0, 9 * w // 10, 9 * h // 10)).transpose(0)]


@pytest.mark.slow
def test_cli_evaluate_end_to_end_real_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from skimage import data

    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    photos = _photos()

    # folder: 4 groups of 3 views, and 6 distractors at the top level (18 images, rank 17).
    root = tmp_path / "photos"
    for name, photo in photos.items():
        (root / name).mkdir(parents=True)
        for i, view in enumerate(_views(photo)):
            view.save(root / name / f"{i}.jpg", quality=90)
    for name in ("camera", "coins", "moon", "clock", "hubble_deep_field", "page"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(root / f"{name}.jpg")
    out, store = tmp_path / "out.json", tmp_path / "res.jsonl"
    argv = ["evaluate", "--dataset", f"folder:{root}", "--compare", "float,itq", "--bits", "16"]
    argv += ["--backbone", "efficientnet_lite0", "--json", str(out), "--results", str(store)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method | 16 bits |" in printed
    assert "| float (cosine, efficientnet_lite0) |" in printed and "| itq |" in printed
    records = json.loads(out.read_text())
    assert [(r["method"], r["bits"]) for r in records] == [("float", None), ("itq", 16)]
    assert records[0]["n_database"] == 18 and records[0]["n_queries"] == 4
    assert records[0]["protocols"]["default"]["map"] > 0.8
    assert records[1]["protocols"]["default"]["map"] > 0.6  # chance is about 0.15
    stored, problems = read_records(store)
    assert problems == [] and len(stored) == 2

    # Oxford: the query photo is astronaut | coffee side by side, its box the coffee half.
    def oxford_images() -> dict[str, Image.Image]:
        images = {}
        for kind, photo_name in (("target", "coffee"), ("other", "astronaut"), ("third", "rocket")):
            for i, view in enumerate(_views(photos[photo_name]), start=1):
                images[f"{kind}_{i:06d}"] = view
        left = photos["astronaut"].resize((256, 256))
        right = photos["coffee"].resize((256, 256))
        pair = Image.new("RGB", (512, 256))
        pair.paste(left, (0, 0))
        pair.paste(right, (256, 0))
        images["q_000000"] = pair
        return images

    oxford = tmp_path / "oxford"
    write_oxford_tree(oxford, oxford_images)
    maps = {}
    for extra in ([], ["--full-queries"]):
        argv = ["evaluate", "--dataset", f"oxford5k:{oxford}", "--compare", "float,pca"]
        argv += ["--bits", "8", "--backbone", "efficientnet_lite0", "--json", str(out)]
        assert cli.main([*argv, "--results", str(store), *extra]) == 0
        crop = "full query images" if extra else "queries cropped to their box"
        assert f"mAP (%) on oxford5k:{oxford}: {crop};" in capsys.readouterr().out
        records = json.loads(out.read_text())
        assert all(r["query_crop"] == crop for r in records)
        maps[crop] = records[0]["protocols"]["default"]["map"]
    # Cropped to the coffee half, the query finds the coffee views first.
    assert maps["queries cropped to their box"] > 0.9
    assert maps["queries cropped to their box"] > maps["full query images"]
    assert len(read_records(store)[0]) == 6
