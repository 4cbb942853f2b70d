#!/usr/bin/env bash
# Rebuild the model that ships inside the package (runtime/models/): the default `rowrnn train`
# (seed 0) on real MNIST, then `rowrnn export --quantize int8 --step` checked on the MNIST test set
# (the step model serves the page's "what the network believed after each row").
#
#   scripts/build_bundled_model.sh MNIST_DIR      (or set ROWRNN_DATA; MNIST_DIR holds the four IDX files)
#
# Ships: mnist.onnx (fp32), mnist.step.onnx, mnist.parity.json (the export's report, the int8 sibling's
# accuracy included: int8 is measured, not shipped) and mnist.metrics.json (the training run's
# metrics.json: where the README's training figures come from). Needs the training extra; the
# training run's time is in mnist.metrics.json. Training is deterministic on one machine and library
# versions only: on another machine the weights (and accuracy) differ slightly.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${ROWRNN_DATA:-}}"
if [ -z "$data" ]; then
    echo "usage: scripts/build_bundled_model.sh MNIST_DIR (or set ROWRNN_DATA)" >&2
    exit 2
fi
rowrnn="${ROWRNN:-.venv/bin/rowrnn}"
work="build/bundled-model"

"$rowrnn" train --data "$data" --out "$work" --seed 0
"$rowrnn" export "$work/mnist.onnx" --model "$work/model.keras" --data "$data" --quantize int8 --step
cp "$work/metrics.json" "$work/mnist.metrics.json"
for file in mnist.onnx mnist.step.onnx mnist.parity.json mnist.metrics.json; do
    cp "$work/$file" "runtime/models/.$file.tmp"
    mv "runtime/models/.$file.tmp" "runtime/models/$file"  # atomic: never a half-copied model
done
"$rowrnn" info runtime/models/mnist.onnx
