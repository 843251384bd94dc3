"""The sweep report, again or for a sweep directory of your own: `python -m cnn.tools.report <sweep dir>`.

Writes report.md, report.csv and the plots into the sweep directory (as the end of a multirun
does, with the Optuna study's section when the sweep was a search), prints report.md and
then the files it wrote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnn.reporting.sweep_report import collect, report_files, write_report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Writes the report of a Hydra multirun directory.")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        sys.exit(f"error: {args.sweep_dir}: no such directory")
    if not collect(args.sweep_dir):
        sys.exit(f"error: {args.sweep_dir}: no job directories (with .hydra/overrides.yaml) in it")
    sections = []
    if (args.sweep_dir / "study.json").exists():  # a search: Hydra and Optuna, only then
        from cnn.sweeps.report_callback import study_sections

        sections = study_sections(args.sweep_dir)
    write_report(args.sweep_dir, sections)
    print((args.sweep_dir / "report.md").read_text())
    report, *others = report_files(args.sweep_dir)
    print(f"report: {report} (beside it: {', '.join(p.name for p in others)})")


if __name__ == "__main__":
    main()
