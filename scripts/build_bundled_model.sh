#!/usr/bin/env bash
# Rebuild the model that ships inside the package (runtime/models/): the default `rowrnn train`
# (seed 0) on real MNIST, then `rowrnn export --quantize int8 --step` checked on the MNIST test set
# (the step model serves the page's "what the network believed after each row").
#
#   scripts/build_bundled_model.sh [MNIST_DIR]      (default: $ROWRNN_DATA, else ../shared/data/mnist)
#
# Needs the training extra. Takes 5-11 minutes on 2 cores. Training is deterministic on one machine
# and library versions only: on another machine the weights (and accuracy) differ slightly.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${ROWRNN_DATA:-../shared/data/mnist}}"
rowrnn="${ROWRNN:-.venv/bin/rowrnn}"
work="build/bundled-model"

"$rowrnn" train --data "$data" --out "$work" --seed 0
"$rowrnn" export "$work/mnist.onnx" --model "$work/model.keras" --data "$data" --quantize int8 --step
for file in mnist.onnx mnist.step.onnx mnist.parity.json; do
    cp "$work/$file" "runtime/models/.$file.tmp"
    mv "runtime/models/.$file.tmp" "runtime/models/$file"  # atomic: never a half-copied model
done
"$rowrnn" info runtime/models/mnist.onnx
