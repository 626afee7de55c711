"""Checks GGUF files written by `unlearn export` against llama.cpp's own tensor tables (the
`gguf` package, gguf-py from the llama.cpp repository): every tensor name must be one that
llama.cpp's loader knows for the file's `general.architecture`. Prints one line per file and
exits non-zero if any name is unknown.

    pip install gguf
    for a in gemma2 gemma3 olmo2 gpt_neox phi3; do
      unlearn init --arch $a --out $a --hidden 64 --layers 6 $( [ $a = gpt_neox ] && echo --kv-heads 4 )
      unlearn export --model $a --out $a.gguf --type q8_0
    done
    python scripts/gguf_names_check.py *.gguf
"""
import importlib.metadata
import sys

import gguf

bad_files = 0
for path in sys.argv[1:]:
    r = gguf.GGUFReader(path)
    arch_name = bytes(r.fields["general.architecture"].parts[-1]).decode()
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    n_layers = int(r.fields[f"{arch_name}.block_count"].parts[-1][0])
    allowed = {gguf.TENSOR_NAMES[t].format(bid=b)
               for t in gguf.MODEL_TENSORS[arch] for b in range(n_layers)}
    names = [t.name for t in r.tensors]
    unknown = [n for n in names if n.rsplit(".", 1)[0] not in allowed]
    bad_files += bool(unknown)
    keys = sorted(k[len(arch_name) + 1:] for k in r.fields if k.startswith(arch_name + "."))
    print(f"{path}: {arch_name}, {len(names)} tensors, unknown to llama.cpp: {unknown or 'none'}; "
          f"keys: {', '.join(keys)}")
print(f"gguf {importlib.metadata.version('gguf')}")
sys.exit(1 if bad_files else 0)
