"""Benchmark 2: the engine against the bare-torch floor of the matched LeNet work (bench/matched.py).

    python -m bench.floor ../shared/data/mnist-lenet [--rounds 3]

The floor is a bare loop of the same forward and backward passes (6 model states x 1,488 images, the
converted model the engine runs), at its best batch size. Rounds alternate floor and engine; prints the
table and engine / floor, writes bench/floor.json.
"""

import argparse
import json
import tempfile
from pathlib import Path

from bench.matched import best_floor, engine_audit, machine, timed
from bench.tables import markdown_table

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder with lenet_mnist.onnx and probes.npz")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp())
    engine_audit(args.data, out)  # warm-up
    rounds = []
    for _ in range(args.rounds):
        floor, batch = best_floor(args.data)
        engine = timed(lambda: engine_audit(args.data, out))
        rounds.append({"floor": floor, "floor_batch": batch, "engine": engine})
    print(f"machine: {machine()}\n")
    rows = [
        [
            index,
            f"{r['floor']:.2f}",
            r["floor_batch"],
            f"{r['engine']:.2f}",
            f"{r['engine'] / r['floor']:.2f}x",
        ]
        for index, r in enumerate(rounds, start=1)
    ]
    print(markdown_table(["round", "floor (s)", "best batch", "engine (s)", "engine / floor"], rows))
    (HERE / "floor.json").write_text(json.dumps({"machine": machine(), "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
