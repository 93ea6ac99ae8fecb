"""The newcomer's first command, timed: ``saliency-audit demo`` as the README gives it, several runs.

    python -m bench.demo_time [--runs 3] [--env OMP_WAIT_POLICY=PASSIVE ...]

Each run is a fresh process in a fresh folder (the CNN trained, exported and audited with every test);
prints a markdown row per run: wall time, the audit's own seconds, twins and controls trained, and how many
outcomes of each kind, then the median. Run it on an idle machine; results go into bench/RESULTS.md.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.tables import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the demo's process")
    args = parser.parse_args()
    environment = os.environ | dict(item.split("=", 1) for item in args.env)
    command = [str(Path(sys.executable).with_name("saliency-audit")), "demo", "--quiet"]
    rows, walls = [], []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            subprocess.run([*command, "--out", folder], env=environment, check=True, capture_output=True)
            wall = time.perf_counter() - started
            report = json.loads((Path(folder) / "report.json").read_text())
        trained = len(report["data_randomization"]["training"])
        tests = [test for method in report["methods"] for test in method["tests"]]
        outcomes = Counter(test["verdict"]["outcome"] for test in tests if test["verdict"])
        walls.append(wall)
        counted = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        rows.append([run, f"{wall:.1f}", f"{report['seconds']:.1f}", trained, counted])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {' '.join(args.env)}")
    print(markdown_table(["run", "wall s", "audit s", "models trained", "outcomes"], rows))
    print(f"\nmedian wall: {statistics.median(walls):.1f} s")


if __name__ == "__main__":
    main()
