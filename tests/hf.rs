//! Hugging Face directories: bf16 weights in a sharded checkpoint load as the f32 original does;
//! saving keeps unknown config fields and the tokenizer files.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use unlearn::model::fixture::{tiny_config, write_tiny_llama};
use unlearn::model::hf::ModelDir;

#[test]
fn sharded_bf16_checkpoint_loads_and_save_keeps_config_fields() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m");
    write_tiny_llama(&p, tiny_config(32, 2), 7).unwrap();
    let dev = Device::Cpu;
    let orig = ModelDir::load(&p, &dev).unwrap();
    // Rewrite as two bf16 shards plus an index, and add a field we do not model.
    let sharded = d.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(p.join(f), sharded.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap();
    cfg["my_custom_field"] = "kept".into();
    cfg["torch_dtype"] = "bfloat16".into();
    std::fs::write(sharded.join("config.json"), cfg.to_string()).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (n, t)) in orig.model.named_tensors().into_iter().enumerate() {
        let (shard, file) = if i % 2 == 0 {
            (&mut a, "model-00001-of-00002.safetensors")
        } else {
            (&mut b, "model-00002-of-00002.safetensors")
        };
        shard.insert(n.clone(), t.to_dtype(DType::BF16).unwrap());
        map.insert(n, file.into());
    }
    candle_core::safetensors::save(&a, sharded.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, sharded.join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let loaded = ModelDir::load(&sharded, &dev).unwrap();
    let ids = Tensor::new(&[[1u32, 50, 60, 70, 258]], &dev).unwrap();
    let x = orig.model.forward(&ids).unwrap();
    let y = loaded.model.forward(&ids).unwrap();
    let diff = unlearn::ops::max_abs_diff(&x, &y).unwrap();
    assert!(diff < 0.05, "bf16 logits differ by {diff}");
    assert_eq!(
        loaded.model.params()[0].1.dtype(),
        DType::F32,
        "trains in f32"
    );
    // Save: unknown fields survive, our dtype is recorded, reload is exact.
    let out = d.path().join("out");
    loaded.save(&out).unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["my_custom_field"], "kept");
    assert_eq!(saved["torch_dtype"], "float32");
    let again = ModelDir::load(&out, &dev).unwrap();
    let z = again.model.forward(&ids).unwrap();
    let w = loaded.model.forward(&ids).unwrap();
    assert_eq!(z.to_vec3::<f32>().unwrap(), w.to_vec3::<f32>().unwrap());
    // A tokenizer larger than the embedding is a clear error.
    let mut small = cfg.clone();
    small["vocab_size"] = 100.into();
    std::fs::write(sharded.join("config.json"), small.to_string()).unwrap();
    let e = ModelDir::load(&sharded, &dev).err().unwrap().to_string();
    assert!(e.contains("shape") || e.contains("mismatch"), "{e}");
}
