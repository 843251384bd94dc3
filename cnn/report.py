"""Sweep report: a table of every job's overrides and final metrics, and plots.

    python -m cnn.report multirun/2026-11-22/12-00-00

Writes report.csv, report.md, objective_vs_<key>.png for each swept key and
learning_curves.png into the sweep directory. `SweepReport` is the Hydra
callback (conf/config.yaml) that does the same at the end of every multirun.
No TensorFlow here; Hydra only for the callback's base class.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

from cnn import history

OBJECTIVE = "test_accuracy"
METRICS = ("status", "test_accuracy", "test_loss", "epochs", "steps", "train_images_per_sec", "rss_mb", "error")


def _number(text: str):
    """The override's value as a number for plotting, or None."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def collect(sweep_dir: Path) -> list[dict]:
    """One dict per job directory: 'job', its overrides ({key: value}), metrics, and its curve rows."""
    jobs = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").exists()),
                          key=lambda p: (len(p.name), p.name)):
        try:
            overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
            pairs = dict(str(o).lstrip("+~").split("=", 1) for o in overrides if "=" in str(o))
        except (yaml.YAMLError, ValueError, TypeError):
            pairs = {}
        results = history.read_json(job_dir / "results.json") or {"status": "unfinished"}
        try:
            rows = history.read_rows(job_dir / "metrics.csv")
        except ValueError as e:
            rows, results = [], {**results, "error": str(e)}
        jobs.append({"job": job_dir.name, "overrides": pairs,  # {key: value as written}
                     "results": results, "rows": rows})
    return jobs


def swept_keys(jobs: list[dict]) -> list[str]:
    """Override keys whose values differ between jobs."""
    keys = sorted({k for job in jobs for k in job["overrides"]})
    return [k for k in keys if len({repr(job["overrides"].get(k)) for job in jobs}) > 1]


def _objective(job: dict) -> float:
    value = job["results"].get(OBJECTIVE)
    return value if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf


def table(jobs: list[dict]) -> tuple[list[str], list[list]]:
    """Header and rows, best objective first; failed and unfinished jobs last."""
    keys = swept_keys(jobs)
    header = ["job", *keys, *METRICS]
    rows = [[job["job"], *(job["overrides"].get(k) for k in keys), *(job["results"].get(m) for m in METRICS)]
            for job in sorted(jobs, key=_objective, reverse=True)]
    return header, rows


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def plot(jobs: list[dict], sweep_dir: Path) -> list[Path]:
    """objective_vs_<key>.png per swept key, and learning_curves.png."""
    from cnn.plots import figure

    written = []
    done = [job for job in jobs if _objective(job) > -math.inf]
    for key in swept_keys(jobs):
        fig = figure((5, 3.5))
        ax = fig.subplots()
        values = [_number(job["overrides"].get(key)) for job in done]
        numeric = all(v is not None for v in values)
        x = values if numeric else [str(job["overrides"].get(key)) for job in done]
        ax.scatter(x, [_objective(job) for job in done])
        if numeric and values and min(values) > 0 and max(values) / min(values) >= 100:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=OBJECTIVE, title=f"{OBJECTIVE} against {key}")
        ax.grid(alpha=0.3)
        path = sweep_dir / f"objective_vs_{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    fig = figure((10, 3.8))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for job in jobs:
        if job["rows"]:
            epochs = [r["epoch"] for r in job["rows"]]
            label = " ".join(f"{k}={job['overrides'].get(k)}" for k in swept_keys(jobs)) or job["job"]
            loss_ax.plot(epochs, [r["loss"] for r in job["rows"]], marker=".", label=label)
            acc_ax.plot(epochs, [r["test_accuracy"] for r in job["rows"]], marker=".", label=label)
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7)
    path = sweep_dir / "learning_curves.png"
    fig.savefig(path, dpi=100)
    return [*written, path]


def write_report(sweep_dir: str | Path) -> list[dict]:
    """Writes report.csv, report.md and the plots; returns the jobs."""
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    header, rows = table(jobs)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    history.atomic_write(sweep_dir / "report.csv", buf.getvalue())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    images = plot(jobs, sweep_dir)
    history.atomic_write(sweep_dir / "report.md", f"# Sweep {sweep_dir}\n\nSorted by {OBJECTIVE}.\n\n"
                         + "\n".join(lines) + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n")
    return jobs


class SweepReport(Callback):
    """Hydra callback: the report at the end of a multirun, and a failing exit if a job failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        import logging

        log = logging.getLogger("cnn.report")
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            jobs = write_report(sweep_dir)
        except Exception:  # noqa: BLE001  (the sweep's exit status must still tell of failed jobs)
            log.exception("could not write the sweep report")
            jobs = collect(sweep_dir)
        counts = {}
        for job in jobs:
            counts[job["results"].get("status")] = counts.get(job["results"].get("status"), 0) + 1
        log.info("sweep of %d jobs: %s; report in %s", len(jobs),
                 ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=str)), sweep_dir / "report.md")
        failed = [job["job"] for job in jobs if job["results"].get("status") in ("failed", "unfinished", None)]
        if failed:  # SystemExit: Hydra turns exceptions in callbacks into warnings
            log.error("%d of %d jobs failed (jobs %s); see %s", len(failed), len(jobs), ", ".join(failed),
                      sweep_dir / "report.md")
            sys.exit(1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Writes the report of a Hydra multirun directory.")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        sys.exit(f"error: {args.sweep_dir}: no such directory")
    if not collect(args.sweep_dir):
        sys.exit(f"error: {args.sweep_dir}: no job directories (with .hydra/overrides.yaml) in it")
    write_report(args.sweep_dir)
    print((args.sweep_dir / "report.md").read_text())


if __name__ == "__main__":
    main()
