//! Hugging Face model directories: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, `tokenizer.json`, `tokenizer_config.json`.
//! Saving writes the whole directory under a temporary name and renames it when complete.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{read_json, Error, Result};
use crate::model::{Llama, LlamaConfig};
use crate::tokenizer::Tok;

/// A loaded model directory.
pub struct ModelDir {
    pub model: Llama,
    pub tok: Tok,
    /// The original config.json (unknown fields preserved on save).
    pub config_json: serde_json::Value,
    /// Small side files copied through unchanged (generation_config.json, special_tokens_map.json).
    pub side_files: Vec<(String, Vec<u8>)>,
    pub path: PathBuf,
}

const SIDE_FILES: &[&str] = &["generation_config.json", "special_tokens_map.json"];

/// Read every tensor of a directory's safetensors file(s). Returns (tensors, file named in errors).
pub fn read_safetensors(dir: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, PathBuf)> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let load = |p: &Path| {
        candle_core::safetensors::load(p, device).map_err(|e| match e {
            candle_core::Error::Io(cause) => Error::Io {
                path: p.to_path_buf(),
                cause,
            },
            other => Error::Gguf {
                path: p.to_path_buf(),
                msg: format!("cannot read safetensors: {other}"),
            },
        })
    };
    if single.exists() {
        return Ok((load(&single)?, single));
    }
    if index.exists() {
        let idx: serde_json::Value = read_json(&index)?;
        let map = idx
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Config {
                path: index.clone(),
                msg: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        files.sort();
        files.dedup();
        let mut all = HashMap::new();
        for f in files {
            all.extend(load(&dir.join(f))?);
        }
        return Ok((all, index));
    }
    Err(Error::Io {
        path: single,
        cause: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no model.safetensors or model.safetensors.index.json in the model directory",
        ),
    })
}

impl ModelDir {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cpath = dir.join("config.json");
        let config_json: serde_json::Value = read_json(&cpath)?;
        let cfg = LlamaConfig::from_json(&config_json, &cpath)?;
        let (tensors, src) = read_safetensors(dir, device)?;
        let model = Llama::from_tensors(cfg.clone(), tensors, &src, device)?;
        let tok = Tok::load(dir, &cfg.eos_token_ids)?;
        check_vocab(&tok, &cfg, dir)?;
        let mut side_files = Vec::new();
        for f in SIDE_FILES {
            let p = dir.join(f);
            if p.exists() {
                side_files.push((
                    f.to_string(),
                    std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
                ));
            }
        }
        Ok(ModelDir {
            model,
            tok,
            config_json,
            side_files,
            path: dir.to_path_buf(),
        })
    }

    /// Save as a HF directory (atomically: temp dir, then rename).
    pub fn save(&self, out: &Path) -> Result<()> {
        save_model(
            &self.model,
            &self.tok,
            Some(&self.config_json),
            &self.side_files,
            out,
        )
    }
}

/// The tokenizer must not produce ids the embedding does not have.
pub fn check_vocab(tok: &Tok, cfg: &LlamaConfig, dir: &Path) -> Result<()> {
    let n = tok.vocab_size();
    if n > cfg.vocab_size {
        return Err(Error::Tokenizer {
            path: dir.join("tokenizer.json"),
            msg: format!(
                "tokenizer has {n} tokens but the model's vocab_size is {} (tokenizer/model mismatch)",
                cfg.vocab_size
            ),
        });
    }
    Ok(())
}

/// Write `model`, `tok` and config into `out` as a Hugging Face directory. Fields of
/// `base_config` that we do not model are kept; ours overwrite theirs. Weights are f32.
pub fn save_model(
    model: &Llama,
    tok: &Tok,
    base_config: Option<&serde_json::Value>,
    side_files: &[(String, Vec<u8>)],
    out: &Path,
) -> Result<()> {
    atomic_dir(out, |tmp| {
        let mut cfg = base_config
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let ours = model.cfg.to_json();
        let o = cfg
            .as_object_mut()
            .ok_or_else(|| Error::Invalid("config.json is not an object".into()))?;
        for (k, v) in ours.as_object().unwrap() {
            o.insert(k.clone(), v.clone());
        }
        if model.cfg.rope_scaling.is_none() {
            o.remove("rope_scaling");
        }
        // transformers >= 5 writes `rope_parameters`; keep it consistent with what we hold.
        if o.contains_key("rope_parameters") {
            let mut rp = o
                .remove("rope_scaling")
                .unwrap_or_else(|| serde_json::json!({"rope_type": "default"}));
            rp["rope_theta"] = model.cfg.rope_theta.into();
            o.insert("rope_parameters".into(), rp);
        }
        let p = tmp.join("config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap())
            .map_err(|e| Error::io(&p, e))?;
        let tensors: HashMap<String, Tensor> = model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.contiguous()?)))
            .collect::<Result<_>>()?;
        let p = tmp.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &p)?;
        tok.save(tmp)?;
        for (name, bytes) in side_files {
            let p = tmp.join(name);
            std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    })
}

/// Run `write` on a fresh temporary directory beside `out`, then move it into place. On error
/// the temporary directory is removed and `out` is left as it was.
pub fn atomic_dir(out: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name = out
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("output path {} has no file name", out.display())))?
        .to_string_lossy()
        .to_string();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

/// Write a file atomically (temp name + rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp-{}",
        path.extension()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    if let Some(p) = path.parent() {
        if !p.as_os_str().is_empty() {
            std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
    }
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
