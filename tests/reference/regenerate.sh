#!/usr/bin/env bash
# Regenerates the PyTorch reference trajectories in tests/golden/torch/ (outside CI).
# Needs a Python with torch, safetensors and numpy: PYTHON=/path/to/venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
cargo build --release
mkdir -p tests/golden/torch
for job in tests/reference/jobs/*.train; do
    name=$(basename "$job" .train)
    init=tests/golden/torch/$name.init.safetensors
    saved=$(mktemp --suffix=.safetensors)
    target/release/kpc init "$job" -o "$init"
    target/release/kpc run "$job" --init "$init" --save "$saved" --quiet
    "$PYTHON" tests/reference/torch_ref.py "$name" --init "$init" --saved "$saved" > "tests/golden/torch/$name.jsonl"
    rm -f "$saved"
    echo "wrote tests/golden/torch/$name.jsonl"
done
