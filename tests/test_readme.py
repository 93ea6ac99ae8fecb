"""The README runs as written: every command block CI can run, in order, on the demo's files, against the
embedded service it starts; and what it shows a command printing is what the command prints."""

from pathlib import Path

import pytest

from tests.readme import COMMAND_LANGUAGES, README, blocks, cpu_model, mismatch, run_readme, samples_cpu


def test_every_command_block_says_how_the_readme_check_treats_it() -> None:
    readme = README.read_text()
    for block in blocks(readme):
        if block.language in COMMAND_LANGUAGES:
            assert block.action in {"run", "background", "not run"}, f"README.md line {block.first_line}"
        if block.action == "not run":
            assert block.argument, f"README.md line {block.first_line}: say why it is not run"
    names = {b.argument for b in blocks(readme) if b.action == "run"}
    for block in blocks(readme):
        if block.action == "output of":
            assert block.argument in names, f"README.md line {block.first_line}: no block runs as it"


def test_an_output_differs_from_its_documentation_when_a_line_changes() -> None:
    documented = "header 1.000\n  ... (lines left out)\noutcome PASS 12.5 s\n"
    assert mismatch(documented, "header 1.000\nanything\noutcome PASS 3.1 s\n") is None
    assert mismatch(documented, "header 1.000\noutcome FAIL 3.1 s\n") is not None
    assert mismatch(documented, "header 0.999\noutcome PASS 3.1 s\n") is not None
    assert mismatch(documented, "header 0.999\noutcome PASS 3.1 s\n", exact_numbers=False) is None
    assert mismatch(documented, "header 0.999\noutcome FAIL 3.1 s\n", exact_numbers=False) is not None


def test_the_readme_runs_as_written_and_prints_what_it_shows(tmp_path: Path) -> None:
    readme = README.read_text()
    printed = run_readme(tmp_path, readme)
    same_cpu = samples_cpu() == cpu_model()
    assert {"demo-out", "audit-out"} <= {p.name for p in tmp_path.iterdir() if (p / "report.html").exists()}
    stale = {
        block.argument: difference
        for block in blocks(readme)
        if block.action == "output of"
        and (difference := mismatch(block.text, printed[block.argument], exact_numbers=same_cpu))
    }
    if stale:
        pytest.fail(
            "README.md shows outputs its commands no longer print (run scripts/readme_samples.py)"
            + ("" if same_cpu else f" on this CPU ({cpu_model()}; numbers not compared)")
            + ":\n"
            + "\n".join(f"{name}:\n{difference}" for name, difference in stale.items())
        )
