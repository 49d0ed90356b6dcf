#!/usr/bin/env bash
# Train the paper's 3-layer network on the fruit and city photos with the faithful preset and the default one and write
# the pixel-space filters of every layer into docs/figures/ (the figures in the README).
#   bash examples/paper_figures.sh [DATA_DIR]      (DATA_DIR defaults to ../shared/data)
# Each run folder (runs/<set>-<preset>) also holds the HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
for set in fruit city; do
  for preset in zeiler2010 calibrated; do
    run="runs/$set-$preset"
    rm -rf "$run"
    deconvnet train "$data/$set" --preset "$preset" --layers 3 \
      --out "$run" --quiet
    deconvnet project "$run" --out "docs/figures/$set-$preset" --zoom 4 --sort activity
  done
done
