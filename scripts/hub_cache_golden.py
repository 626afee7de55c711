"""Checks that our Hub cache is the one Python's `huggingface_hub` writes and reads, and writes
tests/fixtures/hub/python_cache_layout.json, which tests/hub.rs compares our cache with.

Runs the tests' Hub stand-in (examples/hub_standin.rs, 127.0.0.1) serving a tiny model
(`unlearn init --hidden 64 --layers 2 --seed 1`, as the tests make it) and the dataset
tests/fixtures/hub/tofu-mini, then:
1. `huggingface_hub.snapshot_download` of both into cache A: its layout (blobs, refs, snapshots
   and their links; hashes replaced by names) is the golden file;
2. `unlearn generate --model org/tiny` and `unlearn eval --benchmark org/tofu-mini` into cache B:
   the same layout is required;
3. Python reads cache B with HF_HUB_OFFLINE=1 (every file, compared byte for byte);
4. `unlearn generate` reads cache A with the endpoint pointing at a closed port (no request).

Needs `huggingface_hub` and a release build: cargo build --release --examples && python scripts/hub_cache_golden.py
"""
import json
import os
import subprocess
import sys
import tempfile

import huggingface_hub
from huggingface_hub import snapshot_download

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.join(ROOT, "target", "release", "unlearn")
STANDIN = os.path.join(ROOT, "target", "release", "examples", "hub_standin")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "hub")
REPOS = [("models", "org/tiny"), ("datasets", "org/tofu-mini")]


def layout(cache):
    """The cache as huggingface_hub lays it out, hashes replaced by what they name."""
    names = {}
    for kind, repo in REPOS:
        folder = os.path.join(cache, f"{kind}--{repo.replace('/', '--')}")
        snaps = os.path.join(folder, "snapshots")
        for commit in os.listdir(snaps):
            names[commit] = f"<commit {repo}>"
            for d, _, files in os.walk(os.path.join(snaps, commit)):
                for f in files:
                    p = os.path.join(d, f)
                    rel = os.path.relpath(p, os.path.join(snaps, commit))
                    names[os.path.basename(os.readlink(p))] = f"<blob {repo}:{rel}>"
    out = []
    for kind, repo in REPOS:
        top = f"{kind}--{repo.replace('/', '--')}"
        for d, _, files in os.walk(os.path.join(cache, top)):
            for f in files:
                p = os.path.join(d, f)
                rel = os.path.relpath(p, cache)
                parts = rel.split(os.sep)
                if parts[1] not in ("blobs", "refs", "snapshots") or f.endswith(".lock"):
                    continue  # lock files, huggingface_hub's trees/ listing cache
                line = "/".join(names.get(x, x) for x in parts)
                if os.path.islink(p):
                    line += " -> " + "/".join(names.get(x, x) for x in os.readlink(p).split("/"))
                elif parts[1] == "refs":
                    line += " = " + names.get(open(p).read().strip(), "?")
                out.append(line)
    return sorted(out)


def main():
    work = tempfile.mkdtemp(prefix="hubgolden")
    subprocess.run([BIN, "init", "--out", "tiny", "--hidden", "64", "--layers", "2", "--seed", "1"],
                   cwd=work, check=True, capture_output=True)
    srv = subprocess.Popen([STANDIN, "--seconds", "300",
                            f"models:org/tiny={work}/tiny",
                            f"datasets:org/tofu-mini={FIXTURES}/tofu-mini"],
                           stdout=subprocess.PIPE, text=True)
    url = srv.stdout.readline().strip()
    try:
        a, b = os.path.join(work, "A"), os.path.join(work, "B")
        for kind, repo in REPOS:
            snapshot_download(repo, repo_type=kind[:-1], cache_dir=a, endpoint=url)
        env = dict(os.environ, HF_ENDPOINT=url, HF_HUB_CACHE=b, UNLEARN_CACHE=os.path.join(work, "uc"))
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("UNLEARN_TOFU_DIR", None)
        gen = [BIN, "generate", "--model", "org/tiny", "--prompt", "Hi", "--max-new-tokens", "4"]
        subprocess.run(gen, cwd=work, env=env, check=True, capture_output=True)
        subprocess.run([BIN, "eval", "--model", "org/tiny", "--benchmark", "org/tofu-mini",
                        "--forget-split", "forget01", "--out", "ev", "--set", "max_new_tokens=4"],
                       cwd=work, env=env, check=True, capture_output=True)
        ours, theirs = layout(b), layout(a)
        same = ours == theirs
        if not same:
            print("layouts differ:\n ours  ", "\n  ".join(ours), "\n theirs", "\n  ".join(theirs))
        # Python reads our cache offline, byte for byte
        os.environ["HF_HUB_OFFLINE"] = "1"
        reads = True
        for kind, repo in REPOS:
            pa = snapshot_download(repo, repo_type=kind[:-1], cache_dir=a, local_files_only=True)
            pb = snapshot_download(repo, repo_type=kind[:-1], cache_dir=b, local_files_only=True)
            for d, _, files in os.walk(pa):
                for f in files:
                    rel = os.path.relpath(os.path.join(d, f), pa)
                    if open(os.path.join(d, f), "rb").read() != open(os.path.join(pb, rel), "rb").read():
                        reads = False
        del os.environ["HF_HUB_OFFLINE"]
        # we read Python's cache without a request (closed port as the endpoint)
        env2 = dict(env, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=a)
        r = subprocess.run(gen, cwd=work, env=env2, capture_output=True, text=True)
        no_request = r.returncode == 0
        if not no_request:
            print(r.stderr)
    finally:
        srv.kill()
    out = {
        "huggingface_hub": huggingface_hub.__version__,
        "python_layout": theirs,
        "ours_equals_python": same,
        "python_reads_our_cache_offline": reads,
        "ours_reads_python_cache_without_requests": no_request,
    }
    with open(os.path.join(FIXTURES, "python_cache_layout.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v for k, v in out.items() if k != "python_layout"}))
    sys.exit(0 if same and reads and no_request else 1)


if __name__ == "__main__":
    main()
