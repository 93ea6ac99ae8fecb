#!/usr/bin/env bash
# Regenerates the foreign-framework ONNX corpus of this folder (see README.md).
#
#   tests/foreign_models/make.sh                 # keras, flax and paddle
#   tests/foreign_models/make.sh keras           # one framework (or several: make.sh flax paddle)
#
# Each framework gets its own virtual environment, /work/main/.foreign-venvs/<framework> by default
# (<repo>/.foreign-venvs/<framework>; FOREIGN_VENVS overrides the folder), created with `python3 -m venv`
# and filled from requirements-<framework>.txt (pip freeze of a working environment; the top-level pins
# are listed below). None of these frameworks is a dependency of the project itself.
#
#   keras:  tensorflow-cpu==2.21.0 keras==3.15.1 tf2onnx==1.17.0 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6
#   flax:   jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 jax2onnx==0.17.1 onnx==1.23.2 onnxruntime==1.32.0
#   paddle: paddlepaddle==3.3.1 paddle2onnx==2.1.0 onnx==1.17.0 onnxruntime==1.32.0
#           + onnx_graphsurgeon, sympy (Polygraphy's constant folding, which paddle2onnx runs)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENVS="${FOREIGN_VENVS:-$REPO/.foreign-venvs}"
PYTHON="${PYTHON:-python3}"

frameworks=("$@")
if [ ${#frameworks[@]} -eq 0 ]; then
    frameworks=(keras flax paddle)
fi

for fw in "${frameworks[@]}"; do
    case "$fw" in
        keras|flax|paddle) ;;
        *) echo "make.sh: unknown framework '$fw' (keras, flax or paddle)" >&2; exit 2 ;;
    esac
done

for fw in "${frameworks[@]}"; do
    venv="$VENVS/$fw"
    echo "=== $fw ($venv)"
    if [ ! -x "$venv/bin/python" ]; then
        mkdir -p "$VENVS"
        "$PYTHON" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements-$fw.txt"
    (cd "$HERE" && PYTHONHASHSEED=0 "$venv/bin/python" "$HERE/make_$fw.py")
done
echo "=== manifest: $HERE/manifest.json"
