"""The per-epoch record of a run: `metrics.csv` rows and `results.json`."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path
from typing import Iterator

from cnn.errors import WriteError, errno_of

# Each epoch is evaluated on the validation set (val_*), or with none on the test set (test_*).
# seconds: the epoch's training steps; wall_seconds: from the previous epoch's line to this one's, of
# which the training, evaluation (with batch-norm statistics), checkpoint and reporting are the parts.
COLUMNS = ("epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
           "lr", "seconds", "images_per_sec", "evaluation_seconds", "checkpoint_seconds", "reporting_seconds",
           "wall_seconds")
TIMING_COLUMNS = ("seconds", "images_per_sec", "evaluation_seconds", "checkpoint_seconds", "reporting_seconds",
                  "wall_seconds")  # vary from run to run; the rest is exact


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write, then renames it over `path`: a crash leaves
    the old or the new file, never half of one. A write that fails (a full disk, no permission)
    removes the temporary file, keeps the old one and raises WriteError (from an OSError, or a
    TensorFlow writer's error naming the errno)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(e, (OSError, WriteError)) and errno_of(e) is None:
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else "no half-written file is left"
        raise WriteError.of(path, e, kept) from None


def atomic_write(path: Path, text: str) -> None:
    """Writes `text` to `path` through `replacing`: the old file or the new one, never half of one."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def read_json(path: Path):
    """The parsed JSON object, or None if the file is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_rows(path: Path) -> list[dict]:
    """Rows of a metrics.csv, values as floats (epoch and step as ints); [] if absent."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return [{k: (int(v) if k in ("epoch", "step") else float(v)) for k, v in r.items()
                 if k in COLUMNS and v not in ("", None)} for r in rows]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed ({e})") from None


def write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    present = {k for row in rows for k in row}
    writer = csv.DictWriter(buf, fieldnames=[c for c in COLUMNS if c in present or not rows],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buf.getvalue())


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")
