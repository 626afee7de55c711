//! Hugging Face model directories: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, `tokenizer.json`, `tokenizer_config.json`.
//! Saving writes the whole directory under a temporary name and renames it when complete.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{read_json, Error, Result};
use crate::model::tokenizer::Tok;
use crate::model::{Llama, LlamaConfig};

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
    let load = |p: &Path| load_safetensors(p, device);
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
    /// Load a model directory, or a PEFT LoRA adapter directory (`adapter_config.json`, no
    /// `config.json`): its base model (`base_model_name_or_path`, a path or Hub id) with the
    /// adapter on top.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if crate::model::lora::is_adapter_dir(dir) {
            let base = crate::model::Lora::base_of(dir)?;
            // checked before loading it: an adapter naming itself (or another adapter naming it
            // back) would otherwise recurse without end
            if crate::model::lora::is_adapter_dir(&base) {
                return Err(Error::Config {
                    path: dir.join(crate::model::lora::CONFIG_FILE),
                    msg: format!(
                        "the base model {} is itself an adapter; merge it first",
                        base.display()
                    ),
                });
            }
            let mut md = Self::load(&base, device)?;
            let lora = crate::model::Lora::load(dir, &md.model.cfg, device)?;
            md.model = md.model.with_lora(lora)?;
            check_finite(&md.model, &dir.display().to_string())?;
            md.path = dir.to_path_buf();
            return Ok(md);
        }
        let cpath = dir.join("config.json");
        let config_json: serde_json::Value = read_json(&cpath)?;
        let cfg = LlamaConfig::from_json(&config_json, &cpath)?;
        let (tensors, src) = read_safetensors(dir, device)?;
        let model = Llama::from_tensors(cfg.clone(), tensors, &src, device)?;
        check_finite(&model, &src.display().to_string())?;
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

    /// Fold LoRA adapters into the weights (W + s·B·A), for what changes or writes the full
    /// weights (fine-tuning, relearning, quantization, GGUF export). Without adapters, nothing.
    pub fn merge_adapter(&mut self) -> Result<()> {
        if self.model.lora().is_some() {
            self.model = self.model.merged()?;
        }
        Ok(())
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

/// Write `model`, `tok` and config into `out` as a Hugging Face directory, atomically (a
/// temporary sibling, flushed, then renamed). Fields of `base_config` that we do not model are
/// kept; ours overwrite theirs. Weights are f32. A model with a non-finite weight is refused
/// before anything is written.
pub fn save_model(
    model: &Llama,
    tok: &Tok,
    base_config: Option<&serde_json::Value>,
    side_files: &[(String, Vec<u8>)],
    out: &Path,
) -> Result<()> {
    check_finite(model, &format!("model to be saved to {}", out.display()))?;
    atomic_dir(out, |tmp| {
        write_model_files(model, tok, base_config, side_files, tmp)
    })
}

/// Write the files of a model directory into the existing directory `dir` (not atomic by
/// itself: `dir` is a temporary to be published, see [`save_model`] and
/// [`crate::util::guard::Pending`]). Refuses a model with a non-finite weight. A model with
/// LoRA adapters is written as its adapter (PEFT layout; `Llama::merged` for the full model).
pub fn write_model_files(
    model: &Llama,
    tok: &Tok,
    base_config: Option<&serde_json::Value>,
    side_files: &[(String, Vec<u8>)],
    dir: &Path,
) -> Result<()> {
    check_finite(model, &format!("model to be saved to {}", dir.display()))?;
    if let Some(lora) = model.lora() {
        // the adapter in PEFT's layout, with the tokenizer as PEFT's save_pretrained users keep it
        lora.write(dir)?;
        return tok.save(dir);
    }
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
        if model.cfg.partial_rotary_factor != 1.0 {
            rp["partial_rotary_factor"] = model.cfg.partial_rotary_factor.into();
        }
        if let Some(local) = model.cfg.rope_local_theta {
            // Gemma 3: per layer type
            o.remove("rope_local_base_freq");
            o.remove("rope_theta");
            let rp = serde_json::json!({
                "full_attention": rp,
                "sliding_attention": {"rope_type": "default", "rope_theta": local},
            });
            o.insert("rope_parameters".into(), rp);
        } else {
            o.insert("rope_parameters".into(), rp);
        }
    }
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap())
        .map_err(|e| Error::io(&p, e))?;
    write_safetensors(&model.hf_tensors()?, &dir.join("model.safetensors"))?;
    tok.save(dir)?;
    for (name, bytes) in side_files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// Load a safetensors file; errors name the file and say what is wrong with it.
pub fn load_safetensors(p: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(p, device).map_err(|e| match e {
        candle_core::Error::Io(cause) => Error::Io {
            path: p.to_path_buf(),
            cause,
        },
        other => Error::Safetensors {
            path: p.to_path_buf(),
            msg: format!("cannot read: {}", crate::error::one_line(other)),
        },
    })
}

/// Write tensors as a safetensors file with the header metadata `{"format": "pt"}` that
/// `transformers` writes and some of its versions require (4.45 refuses a file without it).
/// The file gets the usual permissions (0666 less the umask, like every other file we write)
/// and is flushed to disk; errors (a full disk, say) name the file.
pub fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let err = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    // the crate writes through a 0600 temporary in the same directory and renames it
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta),
        path,
    )
    .map_err(|e| match e {
        safetensors::SafeTensorError::IoError(cause) => Error::io(path, cause),
        other => err(format!("cannot write: {}", crate::error::one_line(other))),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !crate::util::fs::umask();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    crate::util::fs::sync_file(path)
}

/// Refuse a model holding NaN or inf: names the first such tensor and how many values are bad.
pub fn check_finite(model: &Llama, what: &str) -> Result<()> {
    let adapters = model
        .adapters()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()));
    for (name, t) in model.named_tensors().into_iter().chain(adapters) {
        let bad = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .filter(|x| !x.is_finite())
            .count();
        if bad > 0 {
            return Err(Error::NonFiniteWeights {
                what: what.to_string(),
                tensor: name,
                count: bad,
            });
        }
    }
    Ok(())
}

pub use crate::util::fs::{atomic_dir, atomic_write};

/// Named tensors of a checkpoint, checked for shape, with the base model's prefix (`bert.`,
/// `deberta.`, …) found once.
pub struct Loader<'a> {
    t: &'a HashMap<String, Tensor>,
    path: PathBuf,
    prefix: &'a str,
}

impl<'a> Loader<'a> {
    /// The first of `prefixes` under which `probe` exists (else the last).
    pub fn new(
        t: &'a HashMap<String, Tensor>,
        path: PathBuf,
        prefixes: &[&'a str],
        probe: &str,
    ) -> Self {
        let prefix = prefixes
            .iter()
            .copied()
            .find(|p| t.contains_key(&format!("{p}{probe}")))
            .unwrap_or(prefixes.last().copied().unwrap_or(""));
        Loader { t, path, prefix }
    }
    /// `name` under the base model's prefix.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.top(&format!("{}{name}", self.prefix), shape)
    }
    /// `name` as it is (head tensors).
    pub fn top(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.t.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
            expected: shape.to_vec(),
        })?;
        if t.dims() != shape {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(candle_core::DType::F32)?)
    }
}
