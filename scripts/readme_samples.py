"""Run the README's commands as written and write what they printed into its output blocks.

    .venv/bin/python scripts/readme_samples.py

runs every block marked ``<!-- readme: run ... -->`` in a temporary folder (tests/readme.py says how) and
rewrites README.md's ``<!-- readme: output of NAME -->`` blocks; tests/test_readme.py checks them in CI.
Lines ``...`` in an output block are kept where the output still fits around them. tests/readme_cpu.txt
records the CPU they came from: on another kind the check compares everything but the numbers.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.readme import README, SAMPLES_CPU, cpu_model, run_readme, with_outputs


def main() -> None:
    readme = README.read_text()
    with tempfile.TemporaryDirectory() as folder:
        printed = run_readme(Path(folder), readme)
    README.write_text(with_outputs(readme, printed))
    SAMPLES_CPU.write_text(cpu_model() + "\n")
    print(f"{README}: {len(printed)} outputs written")


if __name__ == "__main__":
    main()
