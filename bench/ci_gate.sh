#!/usr/bin/env bash
# Run the INT8 accuracy gate on the labelled digits fixture, the way a project's CI gates its model:
# train (or reuse) the cached fixture, export INT8 to every format, then `edgeeff check`.
#
# Environment:
#   EDGEEFF_GATE_OUT       output folder (default: out/ci-gate): artifacts/, gate.xml, results.sqlite
#   EDGEEFF_GATE_MAX_DROP  maximum top-1 drop vs float in points (default: 0.5)
#   EDGEEFF_GATE_TARGETS   export targets (default: all)
#   EDGEEFF_CACHE          cache folder of the trained fixture (default: the user cache folder)
# Exit status: that of `edgeeff check` (0 pass, 1 a threshold failed, 2 invalid input), or the
# first failing step's.
set -euo pipefail
cd "$(dirname "$0")/.."

python=.venv/bin/python
edgeeff=.venv/bin/edgeeff
out="${EDGEEFF_GATE_OUT:-out/ci-gate}"
max_drop="${EDGEEFF_GATE_MAX_DROP:-0.5}"
targets="${EDGEEFF_GATE_TARGETS:-all}"

# The first run trains B0 for about 3 minutes on 2 cores; later runs reuse the cached checkpoint.
mapfile -t fixture < <("$python" -c '
from edgeeff.datasets.digits import trained_fixture
fixture = trained_fixture()
print(fixture.checkpoint, fixture.train_dir, fixture.val_dir, sep="\n")')
checkpoint="${fixture[0]}"
train_dir="${fixture[1]}"
val_dir="${fixture[2]}"

rm -rf "$out/artifacts"
mkdir -p "$out"
"$edgeeff" export --checkpoint "$checkpoint" --target "$targets" --int8 \
  --calib "$train_dir" --calib-size 64 --verify-size 8 --output "$out/artifacts"

artifacts=()
for path in "$out"/artifacts/*.pte "$out"/artifacts/*.tflite "$out"/artifacts/*.onnx; do
  [[ -f "$path" ]] && artifacts+=(--artifact "$path")
done

"$edgeeff" check --checkpoint "$checkpoint" --data "$val_dir" "${artifacts[@]}" \
  --max-drop "$max_drop" --min-agreement 0.97 \
  --junit "$out/gate.xml" --db "$out/results.sqlite"
