"""The per-epoch record of a run: `metrics.csv` rows and `results.json`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cnn.checkpoint import atomic_write

COLUMNS = ("epoch", "step", "loss", "accuracy", "test_loss", "test_accuracy", "lr",
           "seconds", "images_per_sec")
TIMING_COLUMNS = ("seconds", "images_per_sec")  # vary from run to run; the rest is exact


def read_rows(path: Path) -> list[dict]:
    """Rows of a metrics.csv, values as floats (epoch and step as ints); [] if absent."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k in ("epoch", "step") else float(v)) for k, v in r.items()} for r in rows]


def write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buf.getvalue())


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")
