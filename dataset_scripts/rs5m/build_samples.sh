#!/usr/bin/env bash
# Build the demo dataset from the vendored samples: pub11/train from captions.csv, rs3/train from labels.csv.
set -euo pipefail
OUT=${1:-rs5m-demo}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
S="$ROOT/samples/rs-samples"
python -m modeling_georsclip.data.build --captions "$S/captions.csv" --images "$S/images" --output "$OUT" \
    --config pub11 --split train --shard-size 1000 --filters invalid,dedup
python -m modeling_georsclip.data.build --image-folder "$S/images" --labels "$S/labels.csv" \
    --caption-template "a satellite image of {label}." --output "$OUT" --config rs3 --split train \
    --shard-size 1000 --filters invalid,dedup
python -m modeling_georsclip.data.build --captions "$S/captions.csv" --images "$S/images" --output "$OUT" \
    --config pub11 --split train --shard-size 1000 --filters invalid,dedup --push-to-hub me/rs5m-demo --dry-run
