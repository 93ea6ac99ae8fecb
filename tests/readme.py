"""The README's code blocks, each with what its marker says to do with it.

A block of commands is preceded by an HTML comment (invisible on the rendered page):

- ``<!-- readme: run -->``, or ``<!-- readme: run as NAME -->`` to keep its stdout under NAME;
- ``<!-- readme: background -->``: started, and left running until every block has run (a server);
- ``<!-- readme: output of NAME -->``: the stdout of the block run as NAME, as scripts/readme_samples.py
  last wrote it;
- ``<!-- readme: not run: REASON -->``.

Blocks run in order, in one folder, as written. Outputs are compared with what the commands print there,
except for what differs between runs of the same code: durations, ids, hashes and timestamps.
"""

import os
import platform
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.services import listening, process

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(
    r"^<!-- readme: (?P<action>run|background|output of|not run)(?::| as)? ?(?P<arg>.*?) ?-->$"
)
FENCE = re.compile(r"^```(?P<language>\w*)$")
COMMAND_LANGUAGES = {"bash", "python", "yaml"}
ELISION = "..."
# what differs between two runs of the same code, each replaced by a placeholder before comparing
VARYING = [
    (re.compile(r"\b\d+(\.\d+)? ?s\b"), "<seconds>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<sha256>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<id>"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)?"), "<timestamp>"),
    (re.compile(r"sha256 [0-9a-f]{12}\b"), "sha256 <hash>"),
    (re.compile(r"\b\d\.\d+e[+-]\d+\b"), "<float>"),  # onnxruntime's threads may round differently
]
# another kind of CPU trains the demo's CNN to other weights (vector widths change the float sums), so
# there every number is a placeholder and the words, verdicts and layout are what is compared
NUMBER = (re.compile(r"\b\d[\d,]*(\.\d+)?\b"), "<number>")
SAMPLES_CPU = README.parent / "tests" / "readme_cpu.txt"  # the CPU that printed the README's outputs


def cpu_model() -> str:
    """The processor's model name as Linux reports it (or the platform's word for it elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def samples_cpu() -> str | None:
    return SAMPLES_CPU.read_text().strip() if SAMPLES_CPU.exists() else None


@dataclass(frozen=True)
class Block:
    action: str  # run, background, output of, not run; "" for a block without a marker
    argument: str  # the name of a run's or an output's stdout, or why a block is not run
    language: str
    text: str
    first_line: int  # 1-based line of the block's first line in README.md (after the fence)


def blocks(readme: str) -> Iterator[Block]:
    lines = readme.splitlines()
    marker: re.Match[str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if fence is None:
            if line.strip():
                marker = MARKER.match(line.strip())
            index += 1
            continue
        end = lines.index("```", index + 1)
        yield Block(
            action=marker["action"] if marker else "",
            argument=marker["arg"] if marker else "",
            language=fence["language"],
            text="\n".join(lines[index + 1 : end]) + "\n",
            first_line=index + 2,
        )
        marker = None
        index = end + 1


def normalized(output: str, exact_numbers: bool = True) -> list[str]:
    """Lines as they compare: trailing spaces and carriage returns dropped, varying values replaced."""
    result = []
    for line in output.splitlines():
        for pattern, placeholder in VARYING if exact_numbers else [*VARYING, NUMBER]:
            line = pattern.sub(placeholder, line)
        result.append(line.rstrip())
    return result


def _elided(line: str) -> bool:
    """``...``, alone or followed by a comment on what was left out."""
    return line.strip() == ELISION or line.strip().startswith(ELISION + " ")


def mismatch(documented: str, printed: str, exact_numbers: bool = True) -> str | None:
    """The first documented line the printed output lacks, in order; an ``...`` line skips any lines.
    ``exact_numbers``: false where the output comes from another kind of CPU than the documented one."""
    expected, actual = normalized(documented, exact_numbers), normalized(printed, exact_numbers)
    position = 0
    skipping = False
    for line in expected:
        if _elided(line):
            skipping = True
            continue
        if skipping:
            found = next((k for k in range(position, len(actual)) if actual[k] == line), None)
        else:
            found = position if position < len(actual) and actual[position] == line else None
        if found is None:
            near = actual[position] if position < len(actual) else "(end of output)"
            return f"documented: {line!r}\nprinted:    {near!r}"
        position, skipping = found + 1, False
    return None


def run_block(block: Block, folder: Path, environment: dict[str, str], timeout_s: float) -> str:
    """Run one block as written in ``folder``; its stdout, or an AssertionError with its stderr."""
    command = ["bash", "-euo", "pipefail", "-c", block.text]
    if block.language == "python":
        command = [str(folder / ".venv" / "bin" / "python"), "-c", block.text]
    done = subprocess.run(
        command, cwd=folder, env=environment, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise AssertionError(
            f"README.md line {block.first_line} exited with {done.returncode}:\n{block.text}\n"
            f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        )
    return done.stdout


def readme_environment() -> dict[str, str]:
    """A user's shell: no SALIENCY_* settings of this machine, and one torch thread.

    One thread makes the numbers the same on every run of the same code, so outputs compare exactly.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SALIENCY_")}
    return environment | {"OMP_NUM_THREADS": "1"}


@contextmanager
def background(block: Block, folder: Path, environment: dict[str, str]) -> Iterator[None]:
    """A server block, running until the blocks after it are done; ready once its port answers."""
    port = int(re.search(r"--port (\d+)", block.text)[1])  # type: ignore[index]
    if listening(port):
        raise AssertionError(f"README.md line {block.first_line}: port {port} is already in use here")
    log = folder / "background.log"
    with process(
        ["bash", "-c", "exec " + block.text.strip()], environment, log, folder, inherit=False
    ) as child:
        deadline = time.monotonic() + 120
        while not listening(port):
            if child.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"README.md line {block.first_line} did not serve:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield


def run_readme(folder: Path, readme: str, timeout_s: float = 900) -> dict[str, str]:
    """Run every run and background block of ``readme`` in ``folder`` as written; their named stdouts.

    ``folder`` gets a link to this checkout's .venv, as a fresh clone has after its install command.
    """
    (folder / ".venv").symlink_to(README.parent / ".venv")
    environment = readme_environment()
    printed: dict[str, str] = {}
    with ExitStack() as servers:
        for block in blocks(readme):
            if block.action == "background":
                servers.enter_context(background(block, folder, environment))
            elif block.action == "run":
                printed[block.argument] = run_block(block, folder, environment, timeout_s)
    return printed


def refreshed(documented: str, printed: str) -> str:
    """The printed output in place of a documented one, keeping its ``...`` elisions where they still fit."""
    elided = [_elided(line) for line in documented.splitlines()]
    if not any(elided) or all(elided) or mismatch(documented, printed) is not None:
        return printed
    expected, actual, raw = normalized(documented), normalized(printed), printed.splitlines()
    kept: list[str] = []
    position, skipping = 0, False
    for original, line in zip(documented.splitlines(), expected, strict=True):
        if _elided(line):
            kept.append(original)
            skipping = True
            continue
        found = actual.index(line, position) if skipping else position
        kept.append(raw[found])
        position, skipping = found + 1, False
    return "\n".join(kept) + "\n"


def with_outputs(readme: str, printed: dict[str, str]) -> str:
    """``readme`` with each output block replaced by what its command printed."""
    lines = readme.splitlines(keepends=True)
    for block in sorted(blocks(readme), key=lambda b: -b.first_line):
        if block.action == "output of":
            end = block.first_line - 1 + len(block.text.splitlines())
            lines[block.first_line - 1 : end] = [refreshed(block.text, printed[block.argument])]
    return "".join(lines)
