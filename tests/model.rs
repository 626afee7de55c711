//! Model-level tests on tiny random configurations: gradients reach every parameter, agree with
//! finite differences, scoring does not depend on the batch, the KV cache is exact.
use candle_core::{DType, Device, Tensor};
use unlearn::data::Encoded;
use unlearn::infer::score::{score, token_mean_nll, Batch};
use unlearn::model::fixture::tiny_config;
use unlearn::model::Llama;

fn items() -> Vec<Encoded> {
    vec![
        Encoded {
            ids: vec![5, 9, 13, 2, 77, 81, 258],
            n_prompt: 3,
        },
        Encoded {
            ids: vec![7, 3, 44, 258],
            n_prompt: 2,
        },
        Encoded {
            ids: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 258],
            n_prompt: 6,
        },
    ]
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    for tied in [true, false] {
        let mut cfg = tiny_config(32, 2);
        cfg.tie_word_embeddings = tied;
        cfg.qkv_bias = true;
        let m = Llama::random(cfg, 3, &Device::Cpu).unwrap();
        let it = items();
        let refs: Vec<&Encoded> = it.iter().collect();
        let b = Batch::new(&refs, 0, &Device::Cpu).unwrap();
        let loss = token_mean_nll(&m.forward(&b.input).unwrap(), &b).unwrap();
        let g = loss.backward().unwrap();
        for (name, v) in m.params() {
            let gr = g
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let a = gr
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(
                a.iter().all(|x| x.is_finite()),
                "{name}: non-finite gradient"
            );
            assert!(a.iter().any(|&x| x > 0.0), "{name}: gradient is all zero");
        }
    }
}

/// Central differences in f64 on a handful of elements of every parameter tensor.
#[test]
fn gradients_match_finite_differences_f64() {
    let mut cfg = tiny_config(16, 2);
    cfg.vocab_size = 264;
    cfg.tie_word_embeddings = false;
    let m = Llama::random(cfg, 5, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let it = items();
    let refs: Vec<&Encoded> = it.iter().collect();
    let b = Batch::new(&refs, 0, &Device::Cpu).unwrap();
    let b = Batch {
        mask: b.mask.to_dtype(DType::F64).unwrap(),
        ..b
    };
    let loss_of = |m: &Llama| token_mean_nll(&m.forward(&b.input).unwrap(), &b).unwrap();
    let grads = loss_of(&m).backward().unwrap();
    for (name, v) in m.params() {
        let g = grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let orig = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // Pick the elements with the largest gradients (most informative) plus element 0.
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().partial_cmp(&g[a].abs()).unwrap());
        idx.truncate(2);
        idx.push(0);
        for &i in &idx {
            let eps = 1e-5;
            let mut p = orig.clone();
            p[i] += eps;
            v.set(&Tensor::from_vec(p.clone(), v.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let lp = loss_of(&m).to_scalar::<f64>().unwrap();
            p[i] -= 2.0 * eps;
            v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let lm = loss_of(&m).to_scalar::<f64>().unwrap();
            v.set(&Tensor::from_vec(orig.clone(), v.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 1e-6 + 1e-4 * g[i].abs(),
                "{name}[{i}]: fd {fd} vs autograd {}",
                g[i]
            );
        }
    }
}

#[test]
fn scoring_does_not_depend_on_batch_size() {
    let m = Llama::random(tiny_config(32, 2), 1, &Device::Cpu).unwrap();
    let it = items();
    let one = score(&m, &it, 1).unwrap();
    let all = score(&m, &it, 3).unwrap();
    let two = score(&m, &it, 2).unwrap();
    for ((a, b), c) in one.iter().zip(&all).zip(&two) {
        assert_eq!(a.len(), b.len());
        for ((x, y), z) in a.iter().zip(b).zip(c) {
            assert!((x - y).abs() < 1e-5 && (x - z).abs() < 1e-5, "{x} {y} {z}");
        }
    }
    assert_eq!(one[0].len(), 4);
    // The sum of per-token log-probs matches the batched loss primitive.
    let refs: Vec<&Encoded> = it.iter().collect();
    let b = Batch::new(&refs, 0, &Device::Cpu).unwrap();
    let s = unlearn::infer::score::sum_logprobs(&m.forward(&b.input).unwrap(), &b)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (row, want) in one.iter().zip(s) {
        assert!((row.iter().sum::<f32>() - want).abs() < 1e-4);
    }
}

#[test]
fn kv_cache_generation_equals_full_recompute_and_batching() {
    // Llama, Qwen3 (per-head q/k norms, heads wider than hidden / heads), OLMo-2 (post-norms)
    // and OLMo (parameter-free LayerNorm, clamped q/k/v)
    let mut qwen3 = tiny_config(32, 2);
    qwen3.arch = unlearn::model::Arch::Qwen3;
    qwen3.head_dim = 16;
    let mut olmo2 = tiny_config(32, 2);
    olmo2.arch = unlearn::model::Arch::Olmo2;
    let mut olmo = tiny_config(32, 2);
    olmo.arch = unlearn::model::Arch::Olmo;
    olmo.clip_qkv = Some(0.05);
    // Phi-3 with LongRoPE whose switch to the long factors lies beyond these sequences
    let mut phi3 = tiny_config(32, 2);
    phi3.arch = unlearn::model::Arch::Phi3;
    phi3.rope_scaling = Some(unlearn::model::config::RopeScaling::LongRope {
        short_factor: vec![1.0, 1.5, 2.0, 3.0],
        long_factor: vec![2.0, 3.0, 5.0, 8.0],
        original_max_position_embeddings: 32,
        attention_factor: None,
    });
    // Gemma 2 and 3: a window of 3 that generation runs past, sliding and global layers, the
    // soft-caps (Gemma 2) and Gemma 3's two RoPE bases
    let gemma = |arch, layers: usize| {
        let mut c = tiny_config(32, layers);
        c.arch = arch;
        c.sliding_window = Some(3);
        c.sliding_layers = Some((0..layers).map(|i| i % 2 == 0).collect());
        c.query_pre_attn_scalar = Some(12.0);
        c
    };
    let mut gemma2 = gemma(unlearn::model::Arch::Gemma2, 2);
    gemma2.attn_logit_softcapping = Some(0.05);
    gemma2.final_logit_softcapping = Some(0.5);
    let mut gemma3 = gemma(unlearn::model::Arch::Gemma3, 3);
    gemma3.rope_local_theta = Some(100.0);
    // GPT-NeoX: partial RoPE (a quarter of each head), LayerNorm and linear biases, parallel
    // residual, ungated GELU MLP
    let mut neox = tiny_config(32, 2);
    neox.arch = unlearn::model::Arch::GptNeox;
    neox.num_key_value_heads = neox.num_attention_heads;
    neox.qkv_bias = true;
    neox.o_bias = true;
    neox.partial_rotary_factor = 0.25;
    neox.parallel_residual = true;
    neox.act = unlearn::model::config::Act::GeluErf;
    for cfg in [
        tiny_config(32, 2),
        qwen3,
        olmo2,
        olmo,
        phi3,
        gemma2,
        gemma3,
        neox,
    ] {
        kv_cache_case(Llama::random(cfg, 9, &Device::Cpu).unwrap());
    }
}

fn kv_cache_case(m: Llama) {
    let prompts = vec![vec![10u32, 20, 30, 40, 50], vec![7u32, 8]];
    let g = unlearn::infer::generate::GenConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let batched = unlearn::infer::generate::generate(&m, &prompts, &[0, 1], &[], 0, &g).unwrap();
    for (k, p) in prompts.iter().enumerate() {
        let single = unlearn::infer::generate::generate(
            &m,
            std::slice::from_ref(p),
            &[k as u64],
            &[],
            0,
            &g,
        )
        .unwrap();
        assert_eq!(
            single[0], batched[k],
            "left-padded batch differs from single"
        );
        // Greedy without cache: argmax of a full forward pass each step.
        let mut seq = p.clone();
        for _ in 0..6 {
            let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let l = Llama::last_logits(&m.forward(&ids).unwrap()).unwrap();
            seq.push(l.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0]);
        }
        assert_eq!(
            &seq[p.len()..],
            single[0].as_slice(),
            "cache differs from recompute"
        );
    }
}

#[test]
fn sampling_is_seeded_per_item() {
    let m = Llama::random(tiny_config(32, 2), 9, &Device::Cpu).unwrap();
    let g = unlearn::infer::generate::GenConfig {
        max_new_tokens: 8,
        temperature: 1.0,
        top_p: 0.9,
        seed: 4,
        ..Default::default()
    };
    let p = vec![vec![10u32, 20], vec![30u32, 40, 50]];
    let a = unlearn::infer::generate::generate(&m, &p, &[0, 1], &[], 0, &g).unwrap();
    let b = unlearn::infer::generate::generate(&m, &p[1..], &[1], &[], 0, &g).unwrap();
    assert_eq!(a[1], b[0]);
}

#[test]
fn hooks_expose_hidden_states_and_replace_mlp_activations() {
    use unlearn::model::Hooks;
    let m = Llama::random(tiny_config(32, 3), 2, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[3u32, 4, 5, 6]], &Device::Cpu).unwrap();
    let base = m.forward(&ids).unwrap();
    let seen = std::cell::RefCell::new(vec![]);
    let record = |l: usize, a: &Tensor| {
        seen.borrow_mut().push((l, a.dims().to_vec()));
        Ok(None)
    };
    let o = m
        .forward_with(
            &ids,
            None,
            None,
            None,
            Hooks {
                hidden_layers: &[0, 2],
                mlp_act: Some(&record),
                ..Default::default()
            },
        )
        .unwrap();
    let inter = m.cfg.intermediate_size;
    assert_eq!(
        *seen.borrow(),
        vec![
            (0, vec![1, 4, inter]),
            (1, vec![1, 4, inter]),
            (2, vec![1, 4, inter])
        ]
    );
    assert_eq!(
        o.hidden
            .iter()
            .map(|(l, h)| (*l, h.dims().to_vec()))
            .collect::<Vec<_>>(),
        vec![(0, vec![1, 4, 32]), (2, vec![1, 4, 32])]
    );
    let same = unlearn::ops::max_abs_diff(&o.logits.unwrap(), &base).unwrap();
    assert_eq!(same, 0.0, "a recording hook changes nothing");
    // Zeroing layer 1's MLP activations changes the output.
    let zero = |l: usize, a: &Tensor| Ok(if l == 1 { Some(a.zeros_like()?) } else { None });
    let z = m
        .forward_with(
            &ids,
            None,
            None,
            None,
            Hooks {
                mlp_act: Some(&zero),
                ..Default::default()
            },
        )
        .unwrap()
        .logits
        .unwrap();
    assert!(unlearn::ops::max_abs_diff(&z, &base).unwrap() > 1e-6);
    // skip_logits stops after the last requested layer.
    let s = m
        .forward_with(
            &ids,
            None,
            None,
            None,
            Hooks {
                hidden_layers: &[1],
                skip_logits: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(s.logits.is_none());
    let full_h1 = m
        .forward_with(
            &ids,
            None,
            None,
            None,
            Hooks {
                hidden_layers: &[1],
                ..Default::default()
            },
        )
        .unwrap()
        .hidden;
    assert_eq!(
        s.hidden[0].1.to_vec3::<f32>().unwrap(),
        full_h1[0].1.to_vec3::<f32>().unwrap()
    );
}

/// A pass started at layer l from the recorded residual after layer l − 1 gives the full pass's
/// logits exactly (SIMU's attribution relies on it to skip the unchanged layers).
#[test]
fn forward_started_at_a_layer_matches_the_full_pass() {
    use unlearn::model::Hooks;
    let m = Llama::random(tiny_config(32, 3), 4, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 7, 9, 2], [3, 4, 8, 1, 6]], &Device::Cpu).unwrap();
    let full = m
        .forward_with(
            &ids,
            None,
            None,
            None,
            Hooks {
                hidden_layers: &[0, 1],
                ..Default::default()
            },
        )
        .unwrap();
    let base = full.logits.unwrap().to_vec3::<f32>().unwrap();
    for (l, h) in [(1usize, &full.hidden[0].1), (2, &full.hidden[1].1)] {
        let o = m
            .forward_with(
                &ids,
                None,
                None,
                None,
                Hooks {
                    start: Some((l, h)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            o.logits.unwrap().to_vec3::<f32>().unwrap(),
            base,
            "start at {l}"
        );
    }
    // a residual of the wrong shape, or a layer past the last, is an error, not a panic
    let bad = Tensor::zeros((1, 5, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (l, h) in [(1usize, &bad), (3, &full.hidden[0].1)] {
        let r = m.forward_with(
            &ids,
            None,
            None,
            None,
            Hooks {
                start: Some((l, h)),
                ..Default::default()
            },
        );
        assert!(r.is_err(), "start at {l}");
    }
}

/// Integrated gradients' completeness: Σ_k Att(l, k) ≈ Σ_i [L_i(β_l) − L_i(0)] for every layer
/// (the Riemann sum converges as m grows).
#[test]
fn attribution_satisfies_completeness() {
    use unlearn::model::Hooks;
    use unlearn::unlearn::attribution::{attribute, AttributionConfig};
    let m = Llama::random(tiny_config(32, 2), 4, &Device::Cpu).unwrap();
    let it = items();
    let cfg = AttributionConfig {
        steps: 64,
        batch_size: 2,
        ..Default::default()
    };
    let att = attribute(&m, &it, 0, &cfg, false).unwrap();
    let refs: Vec<&Encoded> = it.iter().collect();
    let b = Batch::new(&refs, 0, &Device::Cpu).unwrap();
    let total = |zero_layer: Option<usize>| -> f64 {
        let z = |l: usize, a: &Tensor| {
            Ok(if Some(l) == zero_layer {
                Some(a.zeros_like()?)
            } else {
                None
            })
        };
        let o = m
            .forward_with(
                &b.input,
                None,
                None,
                None,
                Hooks {
                    mlp_act: Some(&z),
                    ..Default::default()
                },
            )
            .unwrap();
        unlearn::infer::score::nll_mean(&o.logits.unwrap(), &b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let full = total(None);
    for (l, row) in att.iter().enumerate() {
        let want = full - total(Some(l));
        let got: f64 = row.iter().sum();
        assert!(
            (got - want).abs() <= 0.03 * want.abs() + 1e-4,
            "layer {l}: Σ Att {got} vs ΔL {want}"
        );
    }
}

/// Regression (issue #4: the TOFU evaluation of SmolLM2 was OOM-killed at 24 GB during
/// generation): the KV cache must hold plain tensors, not the autograd graph of each step, or a
/// generation of T tokens keeps O(T²) activations alive. A loss built from the cache reaches no
/// parameter.
#[test]
fn issue4_kv_cache_holds_no_autograd_graph() {
    use unlearn::model::{Hooks, KvCache};
    let m = Llama::random(tiny_config(32, 2), 9, &Device::Cpu).unwrap();
    let mut cache = KvCache::new(m.cfg.num_hidden_layers);
    for ids in [vec![1u32, 2, 3], vec![4u32]] {
        let t = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        m.forward_with(&t, None, None, Some(&mut cache), Hooks::default())
            .unwrap();
    }
    assert_eq!(cache.len(), 4);
    let (k, v) = cache.layer(1).unwrap();
    let loss = (k.sum_all().unwrap() + v.sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    for (name, p) in m.params() {
        assert!(grads.get(p.as_tensor()).is_none(), "cache reaches {name}");
    }
}

/// `frozen_except` (UniErase's δ and token training): the view computes the same logits, gives
/// gradients only to the named parameters, equal to the full model's, and sees in-place updates
/// of the shared storage.
#[test]
fn frozen_view_tracks_only_the_named_parameters() {
    for tied in [true, false] {
        let mut cfg = tiny_config(32, 2);
        cfg.tie_word_embeddings = tied;
        let m = Llama::random(cfg, 5, &Device::Cpu).unwrap();
        let it = items();
        let refs: Vec<&Encoded> = it.iter().collect();
        let b = Batch::new(&refs, 0, &Device::Cpu).unwrap();
        let name = "model.embed_tokens.weight";
        let view = m.frozen_except(&[name]).unwrap();
        let lf = m.forward(&b.input).unwrap();
        let lv = view.forward(&b.input).unwrap();
        let d = (&lf - &lv).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let gf = token_mean_nll(&lf, &b).unwrap().backward().unwrap();
        let gv = token_mean_nll(&lv, &b).unwrap().backward().unwrap();
        for (n, v) in m.params() {
            match gv.get(v.as_tensor()) {
                Some(g) if n == name => {
                    let d = (g - gf.get(v.as_tensor()).unwrap())
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(d < 1e-6, "{n}: {d}");
                }
                Some(_) => panic!("frozen parameter {n} got a gradient (tied: {tied})"),
                None => assert_ne!(n, name, "no gradient for {n}"),
            }
        }
        // an in-place update through the original Var reaches the view
        let w = m.param("model.layers.0.mlp.down_proj.weight").unwrap();
        w.set(&w.as_tensor().zeros_like().unwrap()).unwrap();
        let lv2 = view.forward(&b.input).unwrap();
        let lf2 = m.forward(&b.input).unwrap();
        let d = (&lf2 - &lv2).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let moved = (&lf - &lv2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 0.0);
    }
}

/// LoRA: the adapter's A and B get the gradients central differences give (f64, B non-zero so
/// both factors matter), and no gradient reaches a base weight.
#[test]
fn lora_adapter_gradients_match_finite_differences_f64() {
    use unlearn::model::{Lora, LoraConfig};
    let cfg = tiny_config(16, 2);
    let base = Llama::random(cfg.clone(), 5, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let lc = LoraConfig {
        r: 2,
        alpha: 3.0,
        targets: vec!["self_attn.{q,v}_proj".into(), "mlp.down_proj".into()],
        ..LoraConfig::default()
    };
    let lora = Lora::new(&lc, &cfg, "base", 1, &Device::Cpu)
        .unwrap()
        .converted(DType::F64)
        .unwrap();
    // a trained-looking B
    for (i, (_, _, b)) in lora.modules.iter().enumerate() {
        let n = b.elem_count();
        let v: Vec<f64> = (0..n)
            .map(|k| ((k * 7 + i * 3) % 11) as f64 * 0.01 - 0.05)
            .collect();
        b.set(&Tensor::from_vec(v, b.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let m = base.with_lora(lora).unwrap();
    let it = items();
    let refs: Vec<&Encoded> = it.iter().collect();
    let b = Batch::new(&refs, 0, &Device::Cpu).unwrap();
    let b = Batch {
        mask: b.mask.to_dtype(DType::F64).unwrap(),
        ..b
    };
    let loss_of = |m: &Llama| token_mean_nll(&m.forward(&b.input).unwrap(), &b).unwrap();
    let grads = loss_of(&m).backward().unwrap();
    for (name, v) in m.params() {
        assert!(
            grads.get(v.as_tensor()).is_none(),
            "{name}: a base weight got a gradient"
        );
    }
    let adapters = m.adapters();
    assert_eq!(adapters.len(), 2 * 3 * 2);
    for (name, v) in &adapters {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let orig = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().partial_cmp(&g[a].abs()).unwrap());
        idx.truncate(2);
        for &i in &idx {
            let eps = 1e-5;
            let at = |x: f64| {
                let mut p = orig.clone();
                p[i] = x;
                v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_of(&m).to_scalar::<f64>().unwrap()
            };
            let fd = (at(orig[i] + eps) - at(orig[i] - eps)) / (2.0 * eps);
            at(orig[i]);
            assert!(
                g[i].abs() > 1e-8 && (fd - g[i]).abs() <= 1e-6 + 1e-4 * g[i].abs(),
                "{name}[{i}]: fd {fd} vs autograd {}",
                g[i]
            );
        }
    }
}

/// Activation checkpointing gives the gradients of the plain backward pass: every parameter
/// (tied and untied head, with and without LoRA adapters), with two forwards in one loss (as
/// GD's forget and retain batches) and a forward whose output does not reach the loss.
#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    use unlearn::model::{Lora, LoraConfig};
    for (tied, lora) in [(true, false), (false, false), (true, true)] {
        let mut cfg = tiny_config(32, 3);
        cfg.tie_word_embeddings = tied;
        cfg.qkv_bias = true;
        let mut m = Llama::random(cfg.clone(), 9, &Device::Cpu).unwrap();
        if lora {
            let l = Lora::new(&LoraConfig::default(), &cfg, "b", 2, &Device::Cpu).unwrap();
            for (i, (_, _, b)) in l.modules.iter().enumerate() {
                let v: Vec<f32> = (0..b.elem_count())
                    .map(|k| ((k + i) % 5) as f32 * 0.01)
                    .collect();
                b.set(&Tensor::from_vec(v, b.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
            m = m.with_lora(l).unwrap();
        }
        let it = items();
        let refs: Vec<&Encoded> = it.iter().collect();
        let b1 = Batch::new(&refs, 0, &Device::Cpu).unwrap();
        let b2 = Batch::new(&refs[..2], 0, &Device::Cpu).unwrap();
        let loss = |m: &Llama| {
            let _unused = m.forward(&b2.input).unwrap();
            let a = token_mean_nll(&m.forward(&b1.input).unwrap(), &b1).unwrap();
            let b = token_mean_nll(&m.forward(&b2.input).unwrap(), &b2).unwrap();
            (a - (b * 0.5).unwrap()).unwrap()
        };
        let plain = loss(&m).backward().unwrap();
        m.set_activation_checkpointing(true);
        let ck = m.backward(&loss(&m)).unwrap();
        m.set_activation_checkpointing(false);
        let params: Vec<(String, candle_core::Var)> = if lora {
            m.adapters()
        } else {
            m.params().to_vec()
        };
        for (name, v) in &params {
            let (a, b) = (plain.get(v.as_tensor()), ck.get(v.as_tensor()));
            let (a, b) = (
                a.unwrap_or_else(|| panic!("{name}: no plain gradient")),
                b.unwrap_or_else(|| panic!("{name}: no checkpointed gradient ({tied}, {lora})")),
            );
            let d = unlearn::ops::max_abs_diff(a, b).unwrap();
            let s = unlearn::ops::max_abs_diff(a, &a.zeros_like().unwrap()).unwrap();
            assert!(
                d <= 1e-5 * (1.0 + s),
                "{name} ({tied}, {lora}): differs by {d} (scale {s})"
            );
        }
    }
}
