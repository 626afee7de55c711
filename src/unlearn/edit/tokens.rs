//! Adding special tokens to a model and its tokenizer (UniErase's unlearning token `<unlearn_0>`):
//! tokenizer.json gains `added_tokens` entries (special, not normalised), tokenizer_config.json
//! gains `added_tokens_decoder` entries, the embedding gets one row per new id beyond the current
//! vocabulary (initialised to the mean embedding row), an untied LM head gets the same rows
//! (a copy of the new embedding, METHODS.md), and `vocab_size` in config.json follows. A model
//! whose embedding already has spare rows (padded vocabularies) reuses them: ids below
//! `vocab_size` need no new row, and their rows are left as trained.
use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::tokenizer::Tok;
use crate::model::Llama;

/// The result: the model and tokenizer with the tokens, and the tokens' ids.
pub struct WithTokens {
    pub model: Llama,
    pub tok: Tok,
    pub ids: Vec<u32>,
}

/// Add `tokens` as special tokens. Tokens already in the vocabulary are an error (adding twice
/// would silently reuse a trained row).
pub fn add_special_tokens(model: &Llama, tok: &Tok, tokens: &[&str]) -> Result<WithTokens> {
    let path = std::path::Path::new("<add_special_tokens>");
    let terr = |msg: String| Error::Tokenizer {
        path: path.to_path_buf(),
        msg,
    };
    let mut inner = tok.inner.clone();
    for t in tokens {
        if inner.token_to_id(t).is_some() {
            return Err(terr(format!("token `{t}` is already in the vocabulary")));
        }
    }
    let added: Vec<tokenizers::AddedToken> = tokens
        .iter()
        .map(|t| tokenizers::AddedToken::from(t.to_string(), true).normalized(false))
        .collect();
    inner
        .add_special_tokens(added)
        .map_err(|e| terr(e.to_string()))?;
    let ids: Vec<u32> = tokens
        .iter()
        .map(|t| {
            inner
                .token_to_id(t)
                .ok_or_else(|| terr(format!("token `{t}` was not added")))
        })
        .collect::<Result<_>>()?;
    let json = inner.to_string(true).map_err(|e| terr(e.to_string()))?;
    let mut cfg = tok.tokenizer_config.clone();
    if !cfg.is_object() {
        cfg = serde_json::json!({});
    }
    let o = cfg.as_object_mut().unwrap();
    let dec = o
        .entry("added_tokens_decoder")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(d) = dec.as_object_mut() {
        for (t, id) in tokens.iter().zip(&ids) {
            d.insert(
                id.to_string(),
                serde_json::json!({"content": t, "lstrip": false, "normalized": false,
                                   "rstrip": false, "single_word": false, "special": true}),
            );
        }
    }
    let new_tok = Tok::from_parts(json, cfg, tok.chat_template.clone(), &[tok.eos_id], path)?;

    // grow the embedding (and an untied head) to cover every new id
    let old_v = model.cfg.vocab_size;
    let new_v = ids
        .iter()
        .map(|&i| i as usize + 1)
        .max()
        .unwrap_or(0)
        .max(old_v);
    let mut cfg = model.cfg.clone();
    cfg.vocab_size = new_v;
    // deep copies: the returned model owns its weights, so training or editing it leaves the
    // caller's model as it was (a `Var` clone would share storage)
    let mut tensors: HashMap<String, Tensor> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.copy()?)))
        .collect::<Result<_>>()?;
    if new_v > old_v {
        let extra = new_v - old_v;
        let emb = &tensors["model.embed_tokens.weight"];
        let mean = emb.mean_keepdim(0)?; // [1, h]
        let rows = mean.repeat((extra, 1))?;
        let grown = Tensor::cat(&[emb, &rows], 0)?;
        if let Some(head) = tensors.get("lm_head.weight").cloned() {
            let head_grown = Tensor::cat(&[&head, &rows], 0)?;
            tensors.insert("lm_head.weight".into(), head_grown);
        }
        tensors.insert("model.embed_tokens.weight".into(), grown);
    }
    let model = Llama::from_tensors(cfg, tensors, path, model.device())?;
    Ok(WithTokens {
        model,
        tok: new_tok,
        ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixture::{tiny_config, tiny_tokenizer};
    use candle_core::Device;

    #[test]
    fn adds_a_row_keeps_old_logits_and_round_trips() {
        // (tied, padded): a padded embedding (264 rows for 259 tokens) reuses a spare row
        for (tied, padded) in [(true, false), (false, false), (true, true)] {
            let mut cfg = tiny_config(32, 2);
            cfg.tie_word_embeddings = tied;
            if !padded {
                cfg.vocab_size = tiny_tokenizer().vocab_size();
            }
            let v0 = cfg.vocab_size;
            let model = Llama::random(cfg, 3, &Device::Cpu).unwrap();
            let tok = tiny_tokenizer();
            let w = add_special_tokens(&model, &tok, &["<unlearn_0>"]).unwrap();
            assert_eq!(w.ids, vec![tok.vocab_size() as u32]);
            assert_eq!(w.model.cfg.vocab_size, v0.max(w.ids[0] as usize + 1));
            // one id, never split; decoding with skip_special drops it
            let enc = w.tok.encode("hi<unlearn_0>", false).unwrap();
            assert_eq!(*enc.last().unwrap(), w.ids[0]);
            assert_eq!(w.tok.decode(&enc, true).unwrap(), "hi");
            // logits of the old vocabulary are unchanged on text without the token
            let ids = Tensor::new(&[[5u32, 9, 17, 3]], &Device::Cpu).unwrap();
            let a = model.forward(&ids).unwrap();
            let b = w.model.forward(&ids).unwrap().narrow(2, 0, v0).unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
            if padded {
                assert_eq!(w.model.cfg.vocab_size, v0, "spare row reused");
                continue;
            }
            // the new row is the mean embedding row, and (untied) the head row copies it
            let emb = w
                .model
                .param("model.embed_tokens.weight")
                .unwrap()
                .as_tensor()
                .clone();
            let row = emb.get(w.ids[0] as usize).unwrap();
            let mean = emb.narrow(0, 0, v0).unwrap().mean(0).unwrap();
            let d = (row.clone() - mean)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-7);
            if !tied {
                let head = w.model.param("lm_head.weight").unwrap().as_tensor().clone();
                let hr = head.get(w.ids[0] as usize).unwrap();
                let d = (hr - row).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
            }
            // save and load back: same vocabulary, same token id
            let dir = tempfile::tempdir().unwrap();
            crate::model::hf::save_model(&w.model, &w.tok, None, &[], &dir.path().join("m"))
                .unwrap();
            let md = crate::model::hf::ModelDir::load(&dir.path().join("m"), &Device::Cpu).unwrap();
            assert_eq!(md.model.cfg.vocab_size, w.model.cfg.vocab_size);
            assert_eq!(md.tok.inner.token_to_id("<unlearn_0>"), Some(w.ids[0]));
            let tc = std::fs::read_to_string(dir.path().join("m/tokenizer_config.json")).unwrap();
            assert!(tc.contains("added_tokens_decoder") && tc.contains("<unlearn_0>"));
            // adding it again is refused
            assert!(add_special_tokens(&w.model, &w.tok, &["<unlearn_0>"]).is_err());
        }
    }
}
