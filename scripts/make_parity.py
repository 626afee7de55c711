"""Produce the golden values of tests/parity.rs with PyTorch + transformers.

Run once (needs torch, transformers, safetensors):  python scripts/make_parity.py [NAME ...]
(no names: every model; llama and qwen2 were made with transformers 4.x, qwen3 with 5.24.0)
Writes tests/fixtures/parity_<name>/{config.json, model.safetensors, golden.safetensors}:
  golden.safetensors holds `input_ids` [2, 9] (int64), `labels` (-100 = ignored), `logits`
  [2, 9, vocab], `loss` (HF causal-LM loss: mean CE over shifted labelled tokens) and
  `grad.<param name>` for every parameter.
"""
import os, json, torch
import sys
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

def make(name, model):
    torch.manual_seed(1)
    d = os.path.join(ROOT, f"parity_{name}")
    os.makedirs(d, exist_ok=True)
    model = model.float().eval()
    # Give norm weights non-trivial values so their gradients are tested meaningfully.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or "layernorm" in n or n.endswith(".bias"):
                # Gemma's norms scale by (1 + w): weights around 0
                one = 0.0 if "Gemma" in type(model).__name__ else 1.0
                p.copy_(one + 0.1 * torch.randn_like(p) if "norm" in n else 0.05 * torch.randn_like(p))
    model.save_pretrained(d, safe_serialization=True)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 9))
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, :5] = -100
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    g = {"input_ids": ids, "labels": labels, "logits": out.logits.detach().contiguous(),
         "loss": out.loss.detach().reshape(1)}
    for n, p in model.named_parameters():
        # transformers 5 calls GPT-NeoX's head lm_head in memory and embed_out in the checkpoint
        if n == "lm_head.weight" and "GPTNeoX" in type(model).__name__:
            n = "embed_out.weight"
        g["grad." + n] = p.grad.detach().contiguous()
    save_file(g, os.path.join(d, "golden.safetensors"))
    print(name, "loss", out.loss.item(), "params", sum(p.numel() for p in model.parameters()))

def llama():
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        attn_implementation="eager"))

def qwen2():
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True, attn_implementation="eager"))

def qwen3():
    # head_dim 16 with hidden 32 and 4 heads: q is wider than the residual stream, as in Qwen3
    from transformers import Qwen3Config, Qwen3ForCausalLM
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, attention_bias=False, attn_implementation="eager"))

def olmo2():
    from transformers import Olmo2Config, Olmo2ForCausalLM
    return Olmo2ForCausalLM(Olmo2Config(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=500000.0,
        tie_word_embeddings=False, attention_bias=False, attn_implementation="eager",
        pad_token_id=None, bos_token_id=None, eos_token_id=None))

def olmo():
    # clip_qkv small enough that the clamp binds on this tiny model's projections
    from transformers import OlmoConfig, OlmoForCausalLM
    return OlmoForCausalLM(OlmoConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64, rope_theta=10000.0, clip_qkv=0.05,
        tie_word_embeddings=False, attention_bias=False, attn_implementation="eager",
        pad_token_id=None, bos_token_id=None, eos_token_id=None))

def phi3():
    # LongRoPE with original_max_position_embeddings 8 < the 9 tokens of the golden inputs:
    # transformers switches to the long factors; attention_factor from max/original = 8
    from transformers import Phi3Config, Phi3ForCausalLM
    return Phi3ForCausalLM(Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, original_max_position_embeddings=8, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0],
                      "long_factor": [1.5, 2.5, 4.0, 6.0]},
        tie_word_embeddings=False, attn_implementation="eager",
        pad_token_id=None, bos_token_id=None, eos_token_id=None))

def gemma2():
    # 9 tokens over a sliding window of 4: layer 0 (sliding) and layer 1 (global) see different
    # keys; soft-caps small enough to bind on this tiny model's scores and logits;
    # query_pre_attn_scalar differs from head_dim
    from transformers import Gemma2Config, Gemma2ForCausalLM
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
        query_pre_attn_scalar=12, sliding_window=4, attn_logit_softcapping=0.05,
        final_logit_softcapping=0.5, tie_word_embeddings=True, attn_implementation="eager",
        pad_token_id=None, bos_token_id=None, eos_token_id=None))

def gemma3():
    # 3 layers, sliding_window_pattern 3: layers 0, 1 slide (local RoPE base 10000), layer 2 is
    # global (base 1e6 with linear scaling 2); per-head q/k norms; a head wider than hidden/heads
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM
    return Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=64, rms_norm_eps=1e-6, query_pre_attn_scalar=12, sliding_window=4,
        sliding_window_pattern=3,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        tie_word_embeddings=True, attn_implementation="eager",
        pad_token_id=None, bos_token_id=None, eos_token_id=None))

def gpt_neox():
    # Pythia's layout: parallel residual, rotary over a quarter of each head (head_dim 8: 2 dims),
    # LayerNorm with biases, exact GELU, untied embed_out; a second config without the parallel
    # residual and with rotary over half of each head
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
        rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5, use_parallel_residual=True,
        hidden_act="gelu", tie_word_embeddings=False, attn_implementation="eager",
        pad_token_id=None, bos_token_id=None, eos_token_id=None))

def gpt_neox_seq():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
        rotary_pct=0.5, rotary_emb_base=500, layer_norm_eps=1e-5, use_parallel_residual=False,
        hidden_act="gelu_new", tie_word_embeddings=False, attn_implementation="eager",
        pad_token_id=None, bos_token_id=None, eos_token_id=None))

MODELS = {"gpt_neox": gpt_neox, "gpt_neox_seq": gpt_neox_seq, "llama": llama, "qwen2": qwen2, "qwen3": qwen3, "olmo2": olmo2, "olmo": olmo, "phi3": phi3,
          "gemma2": gemma2, "gemma3": gemma3}
for name in sys.argv[1:] or list(MODELS):
    torch.manual_seed(0)
    make(name, MODELS[name]())
