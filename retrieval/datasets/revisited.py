"""Revisited Oxford / Paris (roxford5k, rparis6k) from ``gnd_<name>.pkl`` in ``ROOT``.

The pickle holds ``imlist`` (database names, no ``.jpg``), ``qimlist`` (query names) and
``gnd`` (per query ``easy``, ``hard``, ``junk`` database indices and ``bbx``). Images are
found by name anywhere under ``ROOT/jpg`` or ``ROOT``. Queries are cropped to ``bbx`` and are
not in the database. Protocols: easy (positives easy, junk junk ∪ hard), medium (easy ∪ hard,
junk junk), hard (hard, junk junk ∪ easy). A query with no positives under a protocol has no
``ground_truth`` entry for it, so it is skipped for that protocol only.
"""

from __future__ import annotations

import math
import pickle
from numbers import Integral
from pathlib import Path
from typing import Any

from retrieval.datasets.base import BBox, DatasetError, GroundTruth, Query, RetrievalDataset
from retrieval.datasets.files import image_folder, index_by_stem

PROTOCOLS = ("easy", "medium", "hard")

# Only what plain lists/dicts and numpy arrays need: never unpickle arbitrary callables.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth pickle not found")
    try:
        with path.open("rb") as f:
            data = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read ground truth: {exc}") from exc
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= data.keys():
        raise DatasetError(f"{path}: expected a dict with 'imlist', 'qimlist' and 'gnd'")
    if len(data["gnd"]) != len(data["qimlist"]):
        raise DatasetError(
            f"{path}: {len(data['qimlist'])} query names but {len(data['gnd'])} gnd entries"
        )
    return data


def _indices(values: Any, n_db: int, where: str) -> frozenset[int]:
    result = set()
    try:
        items = list(values)
    except TypeError:
        raise DatasetError(f"{where}: expected a list of indices, got {values!r}") from None
    for v in items:
        if isinstance(v, bool) or not isinstance(v, Integral) or not 0 <= int(v) < n_db:
            raise DatasetError(f"{where}: {v!r} is not a database index in [0, {n_db})")
        result.add(int(v))
    return frozenset(result)


def _bbox(values: Any, where: str) -> BBox:
    try:
        x1, y1, x2, y2 = (float(v) for v in list(values))
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: bbx must be four numbers, got {values!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{where}: bbx needs x1 < x2 and y1 < y2, got {values!r}")
    return (x1, y1, x2, y2)


def _find(name: Any, by_stem: dict[str, Path], where: str) -> Path:
    stem = str(name).removesuffix(".jpg")
    if stem not in by_stem:
        raise DatasetError(f"{where}: image {stem}.jpg not found")
    return by_stem[stem]


def _protocols(
    easy: frozenset[int], hard: frozenset[int], junk: frozenset[int]
) -> dict[str, GroundTruth]:
    candidates = {
        "easy": GroundTruth(easy, junk | hard),
        "medium": GroundTruth(easy | hard, junk),
        "hard": GroundTruth(hard, junk | easy),
    }
    return {name: gt for name, gt in candidates.items() if gt.positives}


def load_revisited(root: Path, name: str = "roxford5k") -> RetrievalDataset:
    """Load ``roxford5k`` or ``rparis6k`` with its easy / medium / hard protocols."""
    if name not in ("roxford5k", "rparis6k"):
        raise ValueError(f"unknown revisited dataset {name!r}; use 'roxford5k' or 'rparis6k'")
    root = Path(root)
    gnd_path = root / f"gnd_{name}.pkl"
    data = _read_pickle(gnd_path)
    by_stem = index_by_stem(image_folder(root))

    image_ids = [str(n).removesuffix(".jpg") for n in data["imlist"]]
    if len(set(image_ids)) != len(image_ids):
        raise DatasetError(f"{gnd_path}: imlist names an image more than once")
    paths = [_find(n, by_stem, f"{gnd_path}: imlist[{i}]") for i, n in enumerate(image_ids)]

    queries: list[Query] = []
    for q, (qname, entry) in enumerate(zip(data["qimlist"], data["gnd"], strict=True)):
        where = f"{gnd_path}: gnd[{q}] ({qname})"
        if not isinstance(entry, dict) or not {"easy", "hard", "junk", "bbx"} <= entry.keys():
            raise DatasetError(f"{where}: expected keys 'easy', 'hard', 'junk' and 'bbx'")
        easy, hard, junk = (_indices(entry[k], len(paths), where) for k in ("easy", "hard", "junk"))
        queries.append(
            Query(
                name=str(qname).removesuffix(".jpg"),
                path=_find(qname, by_stem, f"{gnd_path}: qimlist[{q}]"),
                ground_truth=_protocols(easy, hard, junk),
                bbox=_bbox(entry["bbx"], where),
            )
        )

    return RetrievalDataset(
        name=name,
        root=root,
        image_paths=paths,
        image_ids=image_ids,
        queries=queries,
        protocols=PROTOCOLS,
        notes={"query_crop": "bbox"},
    )
