"""Loaders on tiny dataset trees written in the public formats, and an end-to-end mAP."""

from __future__ import annotations

import io
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.datasets import DATASET_SPEC_HELP, DatasetError, RetrievalDataset, load_dataset
from retrieval.datasets.files import list_image_files
from retrieval.datasets.folder import load_folder
from retrieval.datasets.holidays import load_holidays
from retrieval.datasets.manifest import load_manifest
from retrieval.datasets.oxford import load_oxford, load_paris6k
from retrieval.datasets.revisited import load_revisited
from retrieval.metrics import average_precisions, mean_average_precision


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg_bytes()


def write_images(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(JPEG)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def default_gt(dataset: RetrievalDataset) -> tuple[list[frozenset[int]], list[frozenset[int]]]:
    gts = [q.ground_truth["default"] for q in dataset.queries]
    return [g.positives for g in gts], [g.junk for g in gts]


# --- Holidays ------------------------------------------------------------------------------


@pytest.fixture
def holidays_root(tmp_path: Path) -> Path:
    root = tmp_path / "holidays"
    write_images(root / "jpg", [f"{n}.jpg" for n in (100000, 100001, 100002, 100100, 100101)])
    return root


def test_holidays_groups_queries_and_junk(holidays_root: Path) -> None:
    ds = load_holidays(holidays_root)
    assert len(ds) == 5
    assert ds.image_ids == ["100000", "100001", "100002", "100100", "100101"]
    assert ds.groups == [1000, 1000, 1000, 1001, 1001]
    assert [q.name for q in ds.queries] == ["100000", "100100"]
    first = ds.queries[0]
    assert first.database_index == 0
    assert first.ground_truth["default"].positives == {1, 2}
    assert first.ground_truth["default"].junk == {0}
    assert ds.queries[1].ground_truth["default"].positives == {4}


def test_holidays_images_directly_in_root(tmp_path: Path) -> None:
    write_images(tmp_path, ["200000.jpg", "200001.jpg"])
    assert len(load_holidays(tmp_path)) == 2


def test_holidays_end_to_end_map(holidays_root: Path) -> None:
    ds = load_holidays(holidays_root)
    positives, junk = default_gt(ds)
    rankings = np.array([[0, 1, 3, 2, 4], [3, 0, 4, 1, 2]])
    # Query 100000: junk-free ranking 1 3 2 4, positives at ranks 0 and 2:
    #   (1 + (1/2 + 2/3) / 2) / 2 = 0.791667 (the DESIGN.md Holidays example).
    # Query 100100: junk-free 0 4 1 2, positive at rank 1: ((0/1 + 1/2) / 2) / 1 = 0.25.
    # mAP = (0.791667 + 0.25) / 2 = 0.520833.
    aps = average_precisions(rankings, positives, junk)
    np.testing.assert_allclose(aps, [0.791667, 0.25], atol=1e-6)
    assert mean_average_precision(aps) == pytest.approx(0.520833, abs=1e-6)


def test_holidays_errors(tmp_path: Path) -> None:
    write_images(tmp_path / "a", ["100000.jpg", "100001.jpg", "photo.jpg"])
    with pytest.raises(DatasetError, match=r"photo\.jpg: not a Holidays image name"):
        load_holidays(tmp_path / "a")
    write_images(tmp_path / "b", ["100001.jpg", "100002.jpg"])
    with pytest.raises(DatasetError, match=r"group 1000 has no query image 100000\.jpg"):
        load_holidays(tmp_path / "b")
    write_images(tmp_path / "c", ["100000.jpg", "100100.jpg", "100101.jpg"])
    with pytest.raises(DatasetError, match=r"100000\.jpg: query has no other image"):
        load_holidays(tmp_path / "c")
    with pytest.raises(DatasetError, match="not found"):
        load_holidays(tmp_path / "missing")
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError, match="no Holidays images"):
        load_holidays(tmp_path / "d")


# --- Oxford / Paris ---------------------------------------------------------------------------

OXFORD_IMAGES = [
    "all_souls_000001",
    "all_souls_000002",
    "all_souls_000003",
    "radcliffe_000001",
    "radcliffe_000002",
    "random_000001",
]


@pytest.fixture
def oxford_root(tmp_path: Path) -> Path:
    root = tmp_path / "oxford"
    write_images(root / "jpg", [f"{n}.jpg" for n in OXFORD_IMAGES])
    gt = root / "gt_files"
    write_text(gt / "all_souls_1_query.txt", "oxc1_all_souls_000001 10.5 20.0 30.25 40.0\n")
    write_text(gt / "all_souls_1_good.txt", "all_souls_000001\nall_souls_000002\n")
    write_text(gt / "all_souls_1_ok.txt", "all_souls_000002\nall_souls_000003\n\n")
    write_text(gt / "all_souls_1_junk.txt", "radcliffe_000001\n")
    write_text(gt / "radcliffe_1_query.txt", "oxc1_radcliffe_000001 0 0 5 5\n")
    write_text(gt / "radcliffe_1_good.txt", "radcliffe_000002\n")
    write_text(gt / "radcliffe_1_ok.txt", "")
    write_text(gt / "radcliffe_1_junk.txt", "")
    return root


def test_oxford_queries_boxes_and_ground_truth(oxford_root: Path) -> None:
    ds = load_oxford(oxford_root)
    assert ds.name == "oxford5k"
    assert len(ds) == 6
    assert ds.image_ids == OXFORD_IMAGES
    assert ds.notes["query_crop"] == "bbox"
    assert [q.name for q in ds.queries] == ["all_souls_1", "radcliffe_1"]
    souls = ds.queries[0]
    assert souls.bbox == (10.5, 20.0, 30.25, 40.0)
    assert souls.database_index == 0  # oxc1_ stripped; the query stays in the database
    assert souls.path == oxford_root / "jpg" / "all_souls_000001.jpg"
    # good ∪ ok as a set: all_souls_000002 is in both lists.
    assert souls.ground_truth["default"].positives == {0, 1, 2}
    assert souls.ground_truth["default"].junk == {3}
    assert ds.queries[1].ground_truth["default"].positives == {4}
    assert ds.queries[1].ground_truth["default"].junk == frozenset()


def test_oxford_end_to_end_map(oxford_root: Path) -> None:
    ds = load_oxford(oxford_root)
    positives, junk = default_gt(ds)
    rankings = np.array([[0, 3, 5, 1, 2, 4], [3, 4, 0, 1, 2, 5]])
    # all_souls_1: junk 3 removed -> 0 5 1 2 4, positives at ranks 0, 2, 3:
    #   (1 + (1/2 + 2/3)/2 + (2/3 + 3/4)/2) / 3 = (1 + 0.583333 + 0.708333) / 3 = 0.763889.
    # radcliffe_1: the query image (3) is a negative at rank 0, positive 4 at rank 1:
    #   ((0/1 + 1/2) / 2) / 1 = 0.25.   mAP = (0.763889 + 0.25) / 2 = 0.506944.
    aps = average_precisions(rankings, positives, junk)
    np.testing.assert_allclose(aps, [0.763889, 0.25], atol=1e-6)
    assert mean_average_precision(aps) == pytest.approx(0.506944, abs=1e-6)


def test_paris_images_in_landmark_folders_and_gt_in_root(tmp_path: Path) -> None:
    names = ["paris_defense_000000", "paris_defense_000001", "paris_eiffel_000000"]
    write_images(tmp_path / "paris", [f"{n.split('_')[1]}/{n}.jpg" for n in names])
    write_text(tmp_path / "defense_1_query.txt", "paris_defense_000000 1 2 3 4\n")
    write_text(tmp_path / "defense_1_good.txt", "paris_defense_000001\n")
    write_text(tmp_path / "defense_1_ok.txt", "paris_defense_000000\n")
    write_text(tmp_path / "defense_1_junk.txt", "paris_eiffel_000000\n")
    ds = load_paris6k(tmp_path)
    assert ds.name == "paris6k"
    assert ds.image_ids == names
    assert ds.image_paths[2] == tmp_path / "paris/eiffel/paris_eiffel_000000.jpg"
    assert ds.queries[0].ground_truth["default"].positives == {0, 1}
    assert ds.queries[0].bbox == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("all_souls_1_query.txt", "oxc1_all_souls_000001 1 2 3\n", r"all_souls_1_query\.txt:1: "),
        ("all_souls_1_query.txt", "\noxc1_all_souls_000001 1 2 x 4\n", r"query\.txt:2: box coord"),
        ("all_souls_1_query.txt", "oxc1_all_souls_000001 5 2 3 4\n", r"query\.txt:1: box needs"),
        ("all_souls_1_query.txt", "oxc1_nowhere_000001 1 2 3 4\n", r"query\.txt:1: unknown image"),
        ("all_souls_1_query.txt", "a 1 2 3 4\nb 1 2 3 4\n", r"query\.txt:2: expected exactly"),
        ("all_souls_1_good.txt", "all_souls_000001\nnowhere_000009\n", r"good\.txt:2: unknown"),
        ("all_souls_1_ok.txt", "all_souls_000002 extra\n", r"ok\.txt:1: expected one image"),
    ],
)
def test_oxford_malformed_files_name_file_and_line(
    oxford_root: Path, file: str, text: str, message: str
) -> None:
    write_text(oxford_root / "gt_files" / file, text)
    with pytest.raises(DatasetError, match=message):
        load_oxford(oxford_root)


def test_oxford_missing_files(oxford_root: Path) -> None:
    (oxford_root / "gt_files" / "radcliffe_1_junk.txt").unlink()
    with pytest.raises(DatasetError, match=r"radcliffe_1_junk\.txt: ground-truth file not found"):
        load_oxford(oxford_root)
    write_text(oxford_root / "gt_files" / "radcliffe_1_junk.txt", "")
    write_text(oxford_root / "gt_files" / "radcliffe_1_good.txt", "")
    with pytest.raises(DatasetError, match=r"radcliffe_1_good\.txt: query has no good or ok"):
        load_oxford(oxford_root)
    for path in (oxford_root / "gt_files").glob("*_query.txt"):
        path.unlink()
    with pytest.raises(DatasetError, match=r"no \*_query\.txt"):
        load_oxford(oxford_root)


def test_oxford_duplicate_image_names_are_ambiguous(oxford_root: Path) -> None:
    write_images(oxford_root / "jpg" / "copy", ["random_000001.jpg"])
    with pytest.raises(DatasetError, match="random_000001"):
        load_oxford(oxford_root)


# --- Revisited Oxford -----------------------------------------------------------------------


def write_revisited(root: Path, gnd: list[dict], name: str = "roxford5k") -> Path:
    write_images(root / "jpg", [f"{n}.jpg" for n in ("a0", "a1", "a2", "a3", "q0", "q1")])
    data = {"imlist": ["a0", "a1", "a2", "a3"], "qimlist": ["q0", "q1"], "gnd": gnd}
    path = root / f"gnd_{name}.pkl"
    path.write_bytes(pickle.dumps(data))
    return path


REVISITED_GND = [
    {"easy": [0], "hard": [1], "junk": [2], "bbx": [1.0, 2.0, 30.0, 40.0]},
    # numpy arrays as some copies of the files hold; no easy positive.
    {"easy": np.array([], dtype=np.int64), "hard": np.array([3]), "junk": [], "bbx": [0, 0, 9, 9]},
]


def test_revisited_protocols(tmp_path: Path) -> None:
    write_revisited(tmp_path, REVISITED_GND)
    ds = load_revisited(tmp_path, "roxford5k")
    assert ds.protocols == ("easy", "medium", "hard")
    assert len(ds) == 4 and ds.image_ids == ["a0", "a1", "a2", "a3"]
    assert [q.name for q in ds.queries] == ["q0", "q1"]
    q0, q1 = ds.queries
    assert q0.database_index is None and q0.path == tmp_path / "jpg" / "q0.jpg"
    assert q0.bbox == (1.0, 2.0, 30.0, 40.0)
    assert q0.ground_truth["easy"].positives == {0} and q0.ground_truth["easy"].junk == {1, 2}
    assert q0.ground_truth["medium"].positives == {0, 1} and q0.ground_truth["medium"].junk == {2}
    assert q0.ground_truth["hard"].positives == {1} and q0.ground_truth["hard"].junk == {0, 2}
    # q1 has no easy positives: skipped for "easy" only.
    assert set(q1.ground_truth) == {"medium", "hard"}
    assert q1.ground_truth["hard"].positives == {3}


def test_revisited_spec_and_paris_name(tmp_path: Path) -> None:
    write_revisited(tmp_path, REVISITED_GND, name="rparis6k")
    assert load_dataset(f"rparis6k:{tmp_path}").name == "rparis6k"
    with pytest.raises(DatasetError, match=r"gnd_roxford5k\.pkl: ground-truth pickle not found"):
        load_dataset(f"roxford5k:{tmp_path}")


def test_revisited_errors(tmp_path: Path) -> None:
    bad_index = [REVISITED_GND[0], {"easy": [7], "hard": [], "junk": [], "bbx": [0, 0, 1, 1]}]
    write_revisited(tmp_path, bad_index)
    with pytest.raises(DatasetError, match=r"gnd\[1\] \(q1\): 7 is not a database index"):
        load_revisited(tmp_path)
    bad_box = [REVISITED_GND[0], {"easy": [1], "hard": [], "junk": [], "bbx": [0, 0, 1]}]
    write_revisited(tmp_path, bad_box)
    with pytest.raises(DatasetError, match=r"gnd\[1\] \(q1\): bbx must be four numbers"):
        load_revisited(tmp_path)
    write_revisited(tmp_path, REVISITED_GND)
    (tmp_path / "jpg" / "a2.jpg").unlink()
    with pytest.raises(DatasetError, match=r"imlist\[2\]: image a2\.jpg not found"):
        load_revisited(tmp_path)


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("unpickled code ran",))


def test_revisited_pickle_refuses_arbitrary_callables(tmp_path: Path) -> None:
    write_images(tmp_path, ["a0.jpg"])
    (tmp_path / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": _Evil()}))
    with pytest.raises(DatasetError, match=r"refusing to load builtins\.print"):
        load_revisited(tmp_path)


# --- manifest ---------------------------------------------------------------------------------

MANIFEST_IMAGES = ["a/1.jpg", "a/2.jpg", "a/3.jpg", "b/1.jpg", "b/2.jpg", "d.jpg", "e.jpg"]
MANIFEST = """path,group,is_query
a/1.jpg,g1,1
a/2.jpg,g1,0
a/3.jpg,g1,YES
b/1.jpg,g2,true
b/2.jpg,g2,false
d.jpg,,0
e.jpg,,no
"""


def test_manifest_groups_queries_and_distractors(tmp_path: Path) -> None:
    write_images(tmp_path, MANIFEST_IMAGES)
    ds = load_manifest(write_text(tmp_path / "set.csv", MANIFEST))
    assert len(ds) == 7
    assert ds.image_paths[0] == tmp_path / "a/1.jpg"
    assert ds.groups == [0, 0, 0, 1, 1, 2, 3]
    assert [q.name for q in ds.queries] == ["a/1.jpg", "a/3.jpg", "b/1.jpg"]
    gts = [q.ground_truth["default"] for q in ds.queries]
    assert [g.positives for g in gts] == [{1, 2}, {0, 1}, {4}]
    assert [g.junk for g in gts] == [{0}, {2}, {3}]
    assert [q.database_index for q in ds.queries] == [0, 2, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,group\na/1.jpg,g1\n", r"set\.csv:1: header must name"),
        ("path,group,is_query\na/1.jpg,g1,1\nzz.jpg,g1,0\n", r"set\.csv:3: image 'zz\.jpg' not f"),
        ("path,group,is_query\na/1.jpg,g1,1\na/2.jpg,g1,maybe\n", r"set\.csv:3: is_query must"),
        ("path,group,is_query\na/1.jpg,,1\n", r"set\.csv:2: a query needs a group"),
        ("path,group,is_query\na/1.jpg,g1,1\n", r"set\.csv:2: query's group has no other"),
        ("path,group,is_query\na/1.jpg,g,1\na/2.jpg,g,0\na/1.jpg,g,0\n", r"csv:4: .* on line 2"),
        ("path,group,is_query\na/1.jpg,g1,1\na/2.jpg,g1\n", r"set\.csv:3: expected the fields"),
        ("path,group,is_query\na/1.jpg,g1,0\na/2.jpg,g1,0\n", "no row has is_query set"),
        ("path,group,is_query\nnotes.txt,g1,0\n", r"set\.csv:2: 'notes\.txt' does not have"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    write_images(tmp_path, MANIFEST_IMAGES)
    with pytest.raises(DatasetError, match=message):
        load_manifest(write_text(tmp_path / "set.csv", text))


# --- folder -----------------------------------------------------------------------------------


def test_folder_groups_and_first_image_query(tmp_path: Path) -> None:
    write_images(tmp_path, ["cats/a.jpg", "cats/b.png", "cats/deep/c.JPG", "dogs/x.jpg"])
    write_images(tmp_path, ["top.jpg", "cats/._a.jpg", ".thumbs/t.jpg"])
    write_text(tmp_path / "cats" / "notes.txt", "not an image")
    ds = load_folder(tmp_path)
    assert ds.image_ids == ["top.jpg", "cats/a.jpg", "cats/b.png", "cats/deep/c.JPG", "dogs/x.jpg"]
    assert ds.groups == [0, 1, 1, 1, 2]
    assert [q.name for q in ds.queries] == ["cats/a.jpg"]  # "dogs" has one image: no query
    assert ds.queries[0].ground_truth["default"].positives == {2, 3}
    assert ds.queries[0].ground_truth["default"].junk == {1}


def test_folder_errors(tmp_path: Path) -> None:
    write_images(tmp_path, ["cats/a.jpg", "cats/b.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: group folder holds no images"):
        load_folder(tmp_path)
    write_images(tmp_path / "solo", ["x/a.jpg", "y/b.jpg"])
    with pytest.raises(DatasetError, match="no sub-folder holds two or more images"):
        load_folder(tmp_path / "solo")


def test_list_image_files_extensions(tmp_path: Path) -> None:
    names = ["a.JPEG", "b.webp", "c.bmp", "d.TIF", "e.tiff", "f.gif", "g.png", "h.txt", "i.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    write_images(tmp_path, ["sub/j.jpg"])
    found = [p.name for p in list_image_files(tmp_path)]
    assert found == ["a.JPEG", "b.webp", "c.bmp", "d.TIF", "e.tiff", "f.gif", "g.png", "i.jpg"]
    assert list_image_files(tmp_path, recursive=True)[-1] == tmp_path / "sub" / "j.jpg"


# --- specs ------------------------------------------------------------------------------------


def test_load_dataset_specs(holidays_root: Path, oxford_root: Path, tmp_path: Path) -> None:
    assert load_dataset(f"holidays:{holidays_root}").name == "holidays"
    assert load_dataset(f"oxford5k:{oxford_root}").name == "oxford5k"
    write_images(tmp_path / "m", MANIFEST_IMAGES)
    csv_path = write_text(tmp_path / "m" / "set.csv", MANIFEST)
    assert len(load_dataset(f"manifest:{csv_path}").queries) == 3
    write_images(tmp_path / "f", ["g/a.jpg", "g/b.jpg"])
    assert len(load_dataset(f"folder:{tmp_path / 'f'}").queries) == 1


def test_load_dataset_demo_is_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = object()
    fake = types.ModuleType("retrieval.datasets.demo")
    fake.load_demo_dataset = lambda: sentinel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "retrieval.datasets.demo", fake)
    assert load_dataset("demo") is sentinel


@pytest.mark.parametrize("spec", ["imagenet:/x", "holidays", "holidays:", "/data/holidays"])
def test_load_dataset_unknown_spec_lists_forms(spec: str) -> None:
    with pytest.raises(DatasetError, match="unrecognised dataset spec") as info:
        load_dataset(spec)
    assert "manifest:FILE.csv" in str(info.value)
    assert "manifest:FILE.csv" in DATASET_SPEC_HELP
