"""Benchmark 2: the engine against the bare-torch floor of the matched LeNet work (bench/matched.py).

    python -m bench.floor ../shared/data/mnist-lenet [--rounds 5]

The floor is a bare loop of the same forward and backward passes (6 model states x 1,488 images, the
converted model the engine runs), at its best batch size, chosen once before the rounds. Rounds then
alternate one floor run and one engine run, so neither side is a best of several on a machine whose
speed drifts; prints each round, the median ratio, and writes bench/floor.json. Each engine run also
reports the seconds of its own passes (its maps): the ratio the engine would reach if its metrics,
summaries and archive cost nothing.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.matched import attribution_clock, best_floor, engine_audit, floor_seconds, machine, timed
from bench.tables import markdown_table

HERE = Path(__file__).parent
COLUMNS = [
    "round",
    "floor (s)",
    "best batch",
    "engine (s)",
    "engine / floor",
    "engine passes (s)",
    "passes / floor",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder with lenet_mnist.onnx and probes.npz")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp())
    engine_audit(args.data, out)  # warm-up
    _, batch = best_floor(args.data)
    rounds = []
    for _ in range(args.rounds):
        floor = floor_seconds(args.data, batch)
        with attribution_clock() as passes:
            engine = timed(lambda: engine_audit(args.data, out))
        rounds.append({"floor": floor, "floor_batch": batch, "engine": engine, "engine_passes": passes[0]})
    print(f"machine: {machine()}\n")
    rows = [
        [
            index,
            f"{r['floor']:.2f}",
            r["floor_batch"],
            f"{r['engine']:.2f}",
            f"{r['engine'] / r['floor']:.2f}x",
            f"{r['engine_passes']:.2f}",
            f"{r['engine_passes'] / r['floor']:.2f}x",
        ]
        for index, r in enumerate(rounds, start=1)
    ]
    print(markdown_table(COLUMNS, rows))
    median = statistics.median(r["engine"] / r["floor"] for r in rounds)
    passes_median = statistics.median(r["engine_passes"] / r["floor"] for r in rounds)
    print(f"\nmedian engine / floor: {median:.2f}x; the engine's passes alone: {passes_median:.2f}x")
    result = {
        "machine": machine(),
        "rounds": rounds,
        "median_ratio": median,
        "median_passes_ratio": passes_median,
    }
    (HERE / "floor.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
