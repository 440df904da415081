"""The results store: evaluation records appended as JSON lines, read back by the dashboard."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from retrieval.config import results_path
from retrieval.storage import atomic_write


def append_record(record: dict[str, Any], path: Path | None = None) -> Path:
    """Append one record as a JSON line, under an exclusive lock (safe with concurrent writers)."""
    path = path or results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a+b") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            # A line left without its newline (a killed writer) must not swallow this record.
            if stream.seek(0, os.SEEK_END) > 0:
                stream.seek(-1, os.SEEK_END)
                if stream.read(1) != b"\n":
                    line = "\n" + line
            stream.write(line.encode("utf-8"))
            stream.flush()
            os.fsync(stream.fileno())
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)
    return path


def read_records(path: Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """All readable records, and a message for each line that is not valid JSON (never fatal)."""
    path = path or results_path()
    if not path.exists():
        return [], []
    records, problems = [], []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"{path}:{number}: not a JSON record ({error.msg})")
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                problems.append(f"{path}:{number}: not a JSON object")
    return records, problems


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it over."""
    with atomic_write(path, "w", encoding="utf-8") as stream:
        json.dump(payload, stream, indent=2, sort_keys=True)
        stream.write("\n")
