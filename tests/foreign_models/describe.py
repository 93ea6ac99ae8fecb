"""Print the nodes of the corpus's ONNX files: op type, node name, output shapes (onnx shape inference).

Usage (any python with onnx, e.g. a venv of make.sh or the project's own):
    python tests/foreign_models/describe.py [name ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent


def dims(value_info) -> str:
    shape = value_info.type.tensor_type.shape
    return (
        "["
        + ",".join(
            d.dim_param or str(d.dim_value) if (d.dim_param or d.HasField("dim_value")) else "?"
            for d in shape.dim
        )
        + "]"
    )


def describe(path: Path) -> None:
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: dims(v)
        for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    }
    inits = {t.name for t in model.graph.initializer}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import)
    print(
        f"== {path.name} ({path.stat().st_size} bytes; producer {model.producer_name} "
        f"{model.producer_version}; opset {opsets})"
    )
    for i in model.graph.input:
        if i.name not in inits:
            print(f"  input  {i.name} {dims(i)}")
    for o in model.graph.output:
        print(f"  output {o.name} {dims(o)}")
    for n in model.graph.node:
        outs = " ".join(f"{o}{shapes.get(o, '')}" for o in n.output)
        extra = ""
        if n.op_type == "Transpose":
            perm = [list(a.ints) for a in n.attribute if a.name == "perm"]
            extra = f" perm={perm[0] if perm else None}"
        print(f"  {n.op_type:<20} {n.name:<60} -> {outs}{extra}")


def main(names: list[str]) -> None:
    paths = [HERE / f"{n}.onnx" for n in names] if names else sorted(HERE.glob("*.onnx"))
    for p in paths:
        describe(p)


if __name__ == "__main__":
    main(sys.argv[1:])
