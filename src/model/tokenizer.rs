//! Tokenizer and chat template of a model directory (`tokenizer.json`, `tokenizer_config.json`,
//! optional `chat_template.jinja`), kept verbatim for saving.
use std::path::Path;

use crate::error::{read_to_string, Error, Result};

/// Bounds of one chat-template rendering (a template is a program from the model's files):
/// minijinja instructions, live memory (enforced by the binary's allocator), wall time and the
/// length of the rendered prompt.
pub const TEMPLATE_FUEL: u64 = 2_000_000;
pub const TEMPLATE_MEMORY: usize = 256 << 20;
pub const TEMPLATE_SECONDS: u64 = 20;
pub const TEMPLATE_MAX_CHARS: usize = 1 << 20;

pub struct Tok {
    pub inner: tokenizers::Tokenizer,
    /// Raw `tokenizer.json` text (written back unchanged on save).
    pub tokenizer_json: String,
    /// Raw `tokenizer_config.json` (empty object when absent).
    pub tokenizer_config: serde_json::Value,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: String,
    pub eos_id: u32,
    pub pad_id: u32,
    /// Where the chat template came from (named in errors).
    pub template_origin: String,
    /// Why the chat template cannot be used (it failed, ran out of bounds, or ignored the user's
    /// message when rendered at load time); checked when a prompt style asks for it.
    pub template_problem: Option<String>,
}

fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// `<unlearn_N>` (N decimal digits): the name UniErase gives its unlearning tokens.
pub fn is_unlearning_token(s: &str) -> bool {
    s.strip_prefix("<unlearn_")
        .and_then(|r| r.strip_suffix('>'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Tok {
    /// Load from a directory. `eos_fallback`: eos ids from config.json, used when the tokenizer
    /// config names no eos token.
    pub fn load(dir: &Path, eos_fallback: &[u32]) -> Result<Self> {
        let tpath = dir.join("tokenizer.json");
        let json = read_to_string(&tpath)?;
        let cpath = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if cpath.exists() {
            crate::error::read_json(&cpath)?
        } else {
            serde_json::json!({})
        };
        let mut chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|e| e.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        let jpath = dir.join("chat_template.jinja");
        let mut origin = cpath.display().to_string();
        if chat_template.is_none() && jpath.exists() {
            chat_template = Some(read_to_string(&jpath)?);
            origin = jpath.display().to_string();
        }
        Self::from_parts_of(json, config, chat_template, eos_fallback, &tpath, &origin)
    }

    pub fn from_parts(
        tokenizer_json: String,
        tokenizer_config: serde_json::Value,
        chat_template: Option<String>,
        eos_fallback: &[u32],
        path: &Path,
    ) -> Result<Self> {
        let origin = path.display().to_string();
        Self::from_parts_of(
            tokenizer_json,
            tokenizer_config,
            chat_template,
            eos_fallback,
            path,
            &origin,
        )
    }

    /// [`Tok::from_parts`] with the chat template's origin (named in its errors).
    pub fn from_parts_of(
        tokenizer_json: String,
        tokenizer_config: serde_json::Value,
        chat_template: Option<String>,
        eos_fallback: &[u32],
        path: &Path,
        template_origin: &str,
    ) -> Result<Self> {
        let terr = |msg: String| Error::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json.as_bytes())
            .map_err(|e| terr(e.to_string()))?;
        let bos_token = token_str(tokenizer_config.get("bos_token"));
        let (eos_token, eos_id) = match token_str(tokenizer_config.get("eos_token")) {
            Some(s) => {
                let id = inner
                    .token_to_id(&s)
                    .ok_or_else(|| terr(format!("eos_token `{s}` is not in the vocabulary")))?;
                (s, id)
            }
            None => {
                let id = *eos_fallback.first().ok_or_else(|| {
                    terr(
                        "no eos_token in tokenizer_config.json and no eos_token_id in config.json"
                            .into(),
                    )
                })?;
                let s = inner
                    .id_to_token(id)
                    .ok_or_else(|| terr(format!("eos_token_id {id} is not in the vocabulary")))?;
                (s, id)
            }
        };
        let pad_id = token_str(tokenizer_config.get("pad_token"))
            .and_then(|p| inner.token_to_id(&p))
            .unwrap_or(eos_id);
        let mut tok = Tok {
            inner,
            tokenizer_json,
            tokenizer_config,
            chat_template,
            bos_token,
            eos_token,
            eos_id,
            pad_id,
            template_origin: template_origin.to_string(),
            template_problem: None,
        };
        tok.template_problem = tok.probe_template();
        Ok(tok)
    }

    /// Render the chat template once for a probe message: None when it works and includes the
    /// message, else why not.
    fn probe_template(&self) -> Option<String> {
        self.chat_template.as_ref()?;
        const PROBE: &str = "What is the capital of France?";
        match self.render_chat_unchecked(None, PROBE) {
            Err(e) => Some(e.to_string()),
            Ok(Some(s)) if !s.contains(PROBE) => Some(format!(
                "chat template ({}): its output does not contain the user's message, so every \
                 prompt would be the same",
                self.template_origin
            )),
            Ok(_) => None,
        }
    }

    /// Ids of the added special tokens that UniErase creates (`<unlearn_N>`), ascending.
    pub fn unlearning_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && is_unlearning_token(&t.content))
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; `add_special` applies the tokenizer's post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::Tokenizer {
                path: "tokenizer.json".into(),
                msg: format!("encoding {}: {e}", crate::error::excerpt(text, 80)),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer {
                path: "tokenizer.json".into(),
                msg: format!("decoding: {e}"),
            })
    }

    /// Render the chat template for one user turn (plus an optional system turn), with the
    /// generation prompt appended, as `apply_chat_template(..., add_generation_prompt=True)`.
    /// Rendering is bounded ([`TEMPLATE_FUEL`], [`TEMPLATE_MEMORY`], [`TEMPLATE_SECONDS`],
    /// [`TEMPLATE_MAX_CHARS`]); a template that failed at load time is refused.
    pub fn render_chat(&self, system: Option<&str>, user: &str) -> Result<Option<String>> {
        if let Some(p) = &self.template_problem {
            return Err(Error::Template(p.clone()));
        }
        self.render_chat_unchecked(system, user)
    }

    fn render_chat_unchecked(&self, system: Option<&str>, user: &str) -> Result<Option<String>> {
        self.render_messages(system, user, None)
    }

    /// The whole exchange (user turn and the assistant's `answer`, no generation prompt), as
    /// `apply_chat_template(chat, add_generation_prompt=False)`: what open-unlearning tokenizes
    /// as the labelled sequence (`eval.compat = "open_unlearning"`).
    pub fn render_exchange(
        &self,
        system: Option<&str>,
        user: &str,
        answer: &str,
    ) -> Result<Option<String>> {
        if let Some(p) = &self.template_problem {
            return Err(Error::Template(p.clone()));
        }
        self.render_messages(system, user, Some(answer))
    }

    /// Render the template for a user turn and, when `answer` is given, the assistant's reply
    /// (then without the generation prompt).
    fn render_messages(
        &self,
        system: Option<&str>,
        user: &str,
        answer: Option<&str>,
    ) -> Result<Option<String>> {
        let Some(tpl) = &self.chat_template else {
            return Ok(None);
        };
        let origin = self.template_origin.clone();
        let terr = |msg: String| Error::Template(format!("chat template ({origin}): {msg}"));
        if tpl.trim().is_empty() {
            return Err(terr("the template is empty".into()));
        }
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(serde_json::json!({"role": "system", "content": s}));
        }
        messages.push(serde_json::json!({"role": "user", "content": user}));
        if let Some(a) = answer {
            messages.push(serde_json::json!({"role": "assistant", "content": a}));
        }
        let ctx = serde_json::json!({
            "messages": messages,
            "add_generation_prompt": answer.is_none(),
            "bos_token": self.bos_token.clone().unwrap_or_default(),
            "eos_token": self.eos_token,
        });
        let tpl = tpl.clone();
        let job = move || render_template(&tpl, ctx);
        let out = if crate::util::alloc::budgets_enforced() {
            use crate::util::alloc::{bounded, Bounded};
            let secs = TEMPLATE_SECONDS;
            match bounded(TEMPLATE_MEMORY, std::time::Duration::from_secs(secs), job) {
                Bounded::Done(r) => r,
                Bounded::OverBudget => Err(format!(
                    "rendering needed more than {} MiB of memory; refusing the template",
                    TEMPLATE_MEMORY >> 20
                )),
                Bounded::TimedOut => Err(format!(
                    "rendering took more than {secs} s; refusing the template"
                )),
            }
        } else {
            job()
        }
        .map_err(terr)?;
        if out.chars().count() > TEMPLATE_MAX_CHARS {
            return Err(terr(format!(
                "the rendered prompt has more than {TEMPLATE_MAX_CHARS} characters"
            )));
        }
        if out.trim().is_empty() {
            return Err(terr("the template renders an empty prompt".into()));
        }
        Ok(Some(out))
    }

    /// Write tokenizer.json, tokenizer_config.json (and nothing else) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let p = dir.join("tokenizer.json");
        std::fs::write(&p, &self.tokenizer_json).map_err(|e| Error::io(&p, e))?;
        let mut cfg = self.tokenizer_config.clone();
        if let (Some(o), Some(t)) = (cfg.as_object_mut(), &self.chat_template) {
            o.insert("chat_template".into(), t.clone().into());
            o.entry("eos_token")
                .or_insert(self.eos_token.clone().into());
            if let Some(b) = &self.bos_token {
                o.entry("bos_token").or_insert(b.clone().into());
            }
        }
        let p = dir.join("tokenizer_config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap())
            .map_err(|e| Error::io(&p, e))?;
        Ok(())
    }
}

/// Render a chat template with at most [`TEMPLATE_FUEL`] instructions.
fn render_template(tpl: &str, ctx: serde_json::Value) -> std::result::Result<String, String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", tpl).map_err(|e| e.to_string())?;
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            if e.kind() == minijinja::ErrorKind::OutOfFuel {
                format!(
                    "rendering ran past {TEMPLATE_FUEL} template instructions (a loop that does \
                     not end?); refusing the template"
                )
            } else {
                e.to_string()
            }
        })
}

/// A byte-level tokenizer built by our code: 256 byte tokens (GPT-2 byte-to-unicode alphabet),
/// no merges, plus ChatML-style specials. Used by test fixtures and the embedded demo model.
/// Returns (tokenizer.json text, tokenizer_config.json value). Vocabulary size: 256 + 3.
pub fn byte_level_tokenizer_json(with_chat_template: bool) -> (String, serde_json::Value) {
    let alphabet = gpt2_bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (b, ch) in alphabet.iter().enumerate() {
        vocab.insert(ch.to_string(), (b as u32).into());
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vocab.insert(s.to_string(), (256 + i as u32).into());
            serde_json::json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tj = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    });
    let mut cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": false,
    });
    if with_chat_template {
        cfg["chat_template"] = CHATML_TEMPLATE.into();
    }
    (serde_json::to_string_pretty(&tj).unwrap(), cfg)
}

/// The ChatML template (as used by SmolLM2 and Qwen2, without a default system prompt).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's reversible byte -> printable unicode character table.
pub fn gpt2_bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

#[cfg(test)]
mod tests {
    #[test]
    fn unlearning_token_names() {
        use super::is_unlearning_token;
        assert!(is_unlearning_token("<unlearn_0>") && is_unlearning_token("<unlearn_12>"));
        for s in [
            "<unlearn_>",
            "<unlearn_x>",
            "unlearn_0",
            "<unlearn_0",
            "<|unlearn_0|>",
        ] {
            assert!(!is_unlearning_token(s), "{s}");
        }
    }

    #[test]
    fn byte_level_roundtrip_and_chat() {
        let t = crate::model::fixture::tiny_tokenizer();
        assert_eq!(t.vocab_size(), 259);
        let ids = t.encode("Héllo <|im_end|>", false).unwrap();
        // "H" is byte 72 -> id 72; é is two bytes; the special token is one id.
        assert_eq!(ids[0], 72);
        assert_eq!(*ids.last().unwrap(), 258);
        assert_eq!(t.decode(&ids, false).unwrap(), "Héllo <|im_end|>");
        let chat = t.render_chat(None, "Hi?").unwrap().unwrap();
        assert_eq!(
            chat,
            "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.eos_id, 258);
        assert_eq!(t.pad_id, 256);
    }
}

/// A small byte-level BPE tokenizer trained by our code on `texts` (the embedded demo's
/// tokenizer): the byte-level pipeline of [`byte_level_tokenizer_json`] with merges learnt by
/// the `tokenizers` BPE trainer up to `vocab_size` entries (specials first: `<|endoftext|>`,
/// `<|im_start|>`, `<|im_end|>`), and the ChatML template. Deterministic for the same texts.
pub fn train_bpe_tokenizer(texts: &[String], vocab_size: usize) -> Result<Tok> {
    use tokenizers::models::bpe::BpeTrainerBuilder;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let path = Path::new("<trained BPE tokenizer>");
    let terr = |e: tokenizers::Error| Error::Tokenizer {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let (json, cfg) = byte_level_tokenizer_json(true);
    let mut tk = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(terr)?;
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| tokenizers::AddedToken::from(*s, true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tk.train(&mut trainer, texts.iter()).map_err(terr)?;
    let json = tk.to_string(true).map_err(terr)?;
    let tpl = cfg["chat_template"].as_str().map(String::from);
    Tok::from_parts(json, cfg, tpl, &[], path)
}

#[cfg(test)]
mod bpe_tests {
    #[test]
    fn trained_bpe_round_trips_and_compresses() {
        let texts: Vec<String> = (0..50)
            .map(|i| {
                format!(
                    "Alma Marlow was born in Oslo in {}. She wrote The Silent Harbor.",
                    1900 + i
                )
            })
            .collect();
        let tok = super::train_bpe_tokenizer(&texts, 400).unwrap();
        assert!(
            tok.vocab_size() <= 400 && tok.vocab_size() > 259,
            "{}",
            tok.vocab_size()
        );
        let s = "Alma Marlow was born in Lima. ü";
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), s);
        assert!(ids.len() < s.len() / 2, "{} tokens", ids.len());
        assert_eq!(tok.inner.token_to_id("<|im_end|>"), Some(tok.eos_id));
        let chat = tok.render_chat(None, "Hi").unwrap().unwrap();
        let ids = tok.encode(&chat, false).unwrap();
        assert_eq!(ids[0], tok.inner.token_to_id("<|im_start|>").unwrap());
    }
}
