"""Sweep report: a table of every job's overrides and final metrics, and plots.

Writes report.csv, report.md, objective_vs_<key>.png for each swept key (with two jobs or
more) and learning_curves.png into the sweep directory. cnn/sweeps/report_callback.py calls it
at the end of every multirun, `python -m cnn.tools.report <sweep dir>` (cnn/tools/report.py)
on request. No TensorFlow and no Hydra here: it reads the job directories' files only.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Sequence

import yaml

from cnn.reporting import history
from cnn.reporting.plots import epoch_axis, epoch_marker, figure

# Jobs rank by their `objective`: the validation `monitor` of their selected checkpoint (the test
# metrics stand beside it and never rank); jobs without a validation set rank by test accuracy.
METRICS = ("status", "objective", "val_accuracy", "val_loss", "test_accuracy", "test_loss", "selected_epoch",
           "epochs", "steps", "train_images_per_sec", "rss_mb", "error")


def _number(text: str):
    """The override's value as a number for plotting, or None."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def collect(sweep_dir: Path) -> list[dict]:
    """One dict per job directory: 'job', its overrides ({key: value}), metrics, and its curve rows."""
    jobs = []
    if not sweep_dir.is_dir():
        return jobs
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
    """Override keys whose values differ between jobs; a sweep of one job: all of its overrides
    (nothing differs, but they are what the sweep set)."""
    keys = sorted({k for job in jobs for k in job["overrides"]})
    if len(jobs) == 1:
        return keys
    return [k for k in keys if len({repr(job["overrides"].get(k)) for job in jobs}) > 1]


def job_label(job: dict, keys: list[str]) -> str:
    """A job's name in a legend: its values of the swept `keys` (a line each when they are long),
    or without any its job number."""
    values = [f"{k}={job['overrides'].get(k)}" for k in keys]
    return (" " if sum(map(len, values)) <= 40 else "\n").join(values) or f"job {job['job']}"


def objective_name(jobs: list[dict]) -> str:
    """What the jobs' objective is: their monitor (e.g. val_accuracy), or "objective" when they differ."""
    names = {job["results"].get("monitor", "test_accuracy") for job in jobs
             if job["results"].get("status") not in ("failed", "unfinished")}
    return names.pop() if len(names) == 1 else "objective"


def _value(job: dict) -> float:
    """The job's objective as written (results from before the validation split: test accuracy)."""
    value = job["results"].get("objective", job["results"].get("test_accuracy"))
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else math.nan


def _objective(job: dict) -> float:
    """The job's objective as a score to maximize (a loss counts negated); -inf without one."""
    value = _value(job)
    if math.isnan(value):
        return -math.inf
    return -value if str(job["results"].get("monitor", "")).endswith("loss") else value


def table(jobs: list[dict]) -> tuple[list[str], list[list]]:
    """Header and rows, best objective first; failed and unfinished jobs last."""
    keys = swept_keys(jobs)
    # An override named as a metric (epochs: those asked for; the metric: those trained) is told apart.
    header = ["job", *(f"{k} (override)" if k in METRICS else k for k in keys), *METRICS]
    def cell(job, metric):
        return _value(job) if metric == "objective" and not math.isnan(_value(job)) else job["results"].get(metric)
    rows = [[job["job"], *(job["overrides"].get(k) for k in keys), *(cell(job, m) for m in METRICS)]
            for job in sorted(jobs, key=_objective, reverse=True)]
    return header, rows


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _swept_axis(ax, texts: list[str]) -> list[float]:
    """Puts a key's swept values (as written in the overrides) on the x axis; returns each one's x.

    Numbers go on a numeric axis, log-scaled when all are positive and spread over 10x or more;
    a grid's values get a tick each, labelled as written (matplotlib's own ticks run into one
    another, or miss the values); a search's drawn values (0.0012520653814999472) get
    matplotlib's ticks. Anything else is a category, in order of first appearance.
    """
    numbers = [_number(t) for t in texts]
    if texts and None not in numbers:
        values = sorted(set(numbers))
        if min(values) > 0 and max(values) / min(values) > 9.99:  # 0.3 / 0.03 = 9.999999999999998
            ax.set_xscale("log")  # before the ticks: setting a scale resets them
        if max(len(t) for t in texts) > 10:  # a search's draws: one tick each would be a smear of digits
            return numbers
        labels = dict(sorted(zip(numbers, texts)))  # {value: text}: "1e-3" and "0.001" are one tick
        ticks, x = list(labels), numbers
    else:
        categories = list(dict.fromkeys(texts))
        labels = dict(enumerate(categories))
        ticks, x = list(labels), [categories.index(t) for t in texts]
        ax.set_xlim(-0.5, max(len(ticks), 1) - 0.5)
    crowded = None in numbers or sum(len(t) for t in labels.values()) > 30
    ax.set_xticks(ticks, list(labels.values()), **({"rotation": 30, "ha": "right", "fontsize": 8} if crowded else {}))
    ax.set_xticks([], minor=True)  # a log axis labels its minor ticks when it spans few decades
    return x


def objective_figure(jobs: list[dict], key: str):
    """The objective of every finished job against its value of the swept `key` (a Figure)."""
    done = [job for job in jobs if _objective(job) > -math.inf]
    fig = figure((5, 3.5))
    ax = fig.subplots()
    x = _swept_axis(ax, [str(job["overrides"].get(key)) for job in done])
    ax.scatter(x, [_value(job) for job in done])
    name = objective_name(jobs)
    ax.set(xlabel=key, ylabel=name, title=f"{name} against {key}")
    ax.grid(alpha=0.3)
    return fig


def curves_figure(jobs: list[dict]):
    """Every job's training loss (log scale: one diverged job must not flatten the rest) and
    validation accuracy (without a validation set, test accuracy) per epoch (a Figure)."""
    fig = figure((10, 3.8))
    loss_ax, acc_ax = fig.subplots(1, 2)
    keys = swept_keys(jobs)
    splits, every_epoch = set(), []
    for job in jobs:
        if job["rows"]:
            epochs = [r["epoch"] for r in job["rows"]]
            split = "val" if "val_accuracy" in job["rows"][0] else "test"
            splits.add(split)
            every_epoch += epochs
            style = {"marker": epoch_marker(epochs), "label": job_label(job, keys)}
            loss_ax.plot(epochs, [r["loss"] for r in job["rows"]], **style)
            acc_ax.plot(epochs, [r[f"{split}_accuracy"] for r in job["rows"]], **style)
    loss_ax.set_yscale("log")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    words = " or ".join({"val": "validation", "test": "test"}[s] for s in sorted(splits, reverse=True)) or "validation"
    acc_ax.set(xlabel="epoch", ylabel=f"{words} accuracy", title=f"{words} accuracy")
    for ax in (loss_ax, acc_ax):
        epoch_axis(ax, every_epoch)
        ax.grid(alpha=0.3)
    if acc_ax.lines:
        acc_ax.legend(fontsize=7)
    return fig


def objective_keys(jobs: list[dict]) -> list[str]:
    """The keys with an objective plot: the swept ones, with two jobs or more (one job's single
    point against a key says nothing)."""
    return swept_keys(jobs) if len(jobs) > 1 else []


def plot(jobs: list[dict], sweep_dir: Path) -> list[Path]:
    """Writes objective_vs_<key>.png per `objective_keys` key, and learning_curves.png; returns their paths."""
    figures = {f"objective_vs_{key.replace('/', '_')}.png": objective_figure(jobs, key) for key in objective_keys(jobs)}
    figures["learning_curves.png"] = curves_figure(jobs)
    for name, fig in figures.items():
        fig.savefig(sweep_dir / name, dpi=100)
    return [sweep_dir / name for name in figures]


def ranking_note(jobs: list[dict]) -> str:
    """The report's first line: what ranks the jobs, and what does not."""
    name = objective_name(jobs)
    if name.startswith("val_"):
        return (f"Ranked by {name} of each job's selected checkpoint (the validation set); the test "
                "metrics are of that checkpoint, measured once, and rank nothing.")
    if name == "test_accuracy":
        return ("Ranked by test accuracy: these jobs ran without a validation set (dataset.validation_split=0), "
                "so picking the best of them selects on the test set.")
    return "Ranked by each job's objective (the jobs monitor different metrics)."


def write_report(sweep_dir: str | Path, sections: Sequence[str] = ()) -> list[dict]:
    """Writes report.csv, report.md (with `sections` of markdown at its end) and the plots;
    returns the jobs."""
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    header, rows = table(jobs)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    history.atomic_write(sweep_dir / "report.csv", buf.getvalue())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    images = plot(jobs, sweep_dir)
    history.atomic_write(sweep_dir / "report.md", f"# Sweep {sweep_dir}\n\n{ranking_note(jobs)}\n\n"
                         + "\n".join(lines) + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n"
                         + "".join("\n" + section for section in sections))
    return jobs


def report_files(sweep_dir: Path) -> list[Path]:
    """What `write_report` wrote into `sweep_dir`, as its report.md says: report.md, report.csv
    and the images it shows (the sections' too)."""
    images = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", (sweep_dir / "report.md").read_text(), re.MULTILINE)
    return [sweep_dir / name for name in ("report.md", "report.csv", *images)]
