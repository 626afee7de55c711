"""Runs llama.cpp (through llama-cpp-python, which builds it from source: pip install
llama-cpp-python) on a GGUF file written by `unlearn export`, and on the GGUF the model came
from, with greedy decoding of a few chat questions (the chat template from the file), and prints
the answers as JSON; docs/robustness.md compares them with `unlearn generate` on the same model.

    python scripts/llama_cpp_check.py EXPORTED.gguf [SOURCE.gguf]
"""
import json
import sys

import llama_cpp
from llama_cpp import Llama

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Who wrote Romeo and Juliet?"]
out = {"llama_cpp_python": llama_cpp.__version__, "answers": {}}
for path in sys.argv[1:]:
    m = Llama(model_path=path, n_ctx=512, verbose=False, n_threads=2)
    out["answers"][path.split("/")[-1]] = [
        m.create_chat_completion(messages=[{"role": "user", "content": q}], temperature=0.0,
                                 top_k=1, max_tokens=24)["choices"][0]["message"]["content"]
        for q in QUESTIONS
    ]
json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
print()
