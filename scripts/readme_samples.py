"""Run the README's commands as written and write what they printed into its output blocks.

    .venv/bin/python scripts/readme_samples.py

runs every block marked ``<!-- readme: run ... -->`` in a temporary folder (tests/readme.py says how) and
rewrites README.md's ``<!-- readme: output of NAME -->`` blocks; tests/test_readme.py checks them in CI.
Lines ``...`` in an output block are kept where the output still fits around them.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.readme import README, run_readme, with_outputs


def main() -> None:
    readme = README.read_text()
    with tempfile.TemporaryDirectory() as folder:
        printed = run_readme(Path(folder), readme)
    README.write_text(with_outputs(readme, printed))
    print(f"{README}: {len(printed)} outputs written")


if __name__ == "__main__":
    main()
