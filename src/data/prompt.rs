//! Prompt formatting: the model's chat template when it has one, else the plain template
//! `Question: {q}\nAnswer: {a}`. Labels cover the answer tokens plus EOS only.
use crate::error::{excerpt, Error, Result};
use crate::model::tokenizer::Tok;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// Chat template if the tokenizer has one, else plain.
    Auto,
    Chat,
    Plain,
}

/// One encoded (prompt, answer) pair: `ids` = prompt ⊕ answer ⊕ EOS; the labelled tokens are
/// `ids[n_prompt..]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub n_prompt: usize,
}

impl Encoded {
    pub fn n_labels(&self) -> usize {
        self.ids.len() - self.n_prompt
    }
}

pub struct Formatter<'a> {
    pub tok: &'a Tok,
    chat: bool,
    pub system: Option<String>,
    pub max_len: usize,
}

impl<'a> Formatter<'a> {
    pub fn new(tok: &'a Tok, style: PromptStyle, max_len: usize) -> Result<Self> {
        let chat = match style {
            PromptStyle::Auto => tok.chat_template.is_some(),
            PromptStyle::Plain => false,
            PromptStyle::Chat => {
                if tok.chat_template.is_none() {
                    return Err(Error::Invalid(
                        "prompt style `chat` asked for, but the tokenizer has no chat template"
                            .into(),
                    ));
                }
                true
            }
        };
        if chat {
            if let Some(p) = &tok.template_problem {
                return Err(Error::Template(format!(
                    "{p} (the plain `Question: … Answer:` prompt does not use it: --set \
                     prompt=plain, or --plain for generate)"
                )));
            }
        }
        if max_len < 2 {
            return Err(Error::Invalid(format!(
                "max_len {max_len} must be at least 2"
            )));
        }
        Ok(Formatter {
            tok,
            chat,
            system: None,
            max_len,
        })
    }

    pub fn uses_chat(&self) -> bool {
        self.chat
    }

    /// The prompt text for question `q` (ends where the answer starts).
    pub fn prompt_text(&self, q: &str) -> Result<String> {
        if self.chat {
            Ok(self.tok.render_chat(self.system.as_deref(), q)?.unwrap())
        } else {
            Ok(format!("Question: {q}\nAnswer:"))
        }
    }

    /// Token ids of the prompt (chat: the rendered template carries its own special tokens;
    /// plain: the tokenizer's post-processor adds BOS where the model uses one).
    pub fn encode_prompt(&self, q: &str) -> Result<Vec<u32>> {
        let text = self.prompt_text(q)?;
        self.tok.encode(&text, !self.chat)
    }

    /// Encode (q, a): prompt ⊕ answer ⊕ EOS, truncated to `max_len`. The answer is tokenised
    /// jointly with the prompt when that keeps the prompt's tokens unchanged (so the answer's
    /// first token is the one the model would produce), else separately.
    /// [`Formatter::encode_qa`] of every item.
    pub fn encode_items(&self, items: &[crate::data::QaItem]) -> Result<Vec<Encoded>> {
        items
            .iter()
            .map(|it| self.encode_qa(&it.question, &it.answer))
            .collect()
    }

    pub fn encode_qa(&self, q: &str, a: &str) -> Result<Encoded> {
        if q.is_empty() && !self.chat {
            return self.encode_text(a);
        }
        let prompt = self.encode_prompt(q)?;
        let ptext = self.prompt_text(q)?;
        let sep = if self.chat { "" } else { " " };
        let full = self.tok.encode(&format!("{ptext}{sep}{a}"), !self.chat)?;
        let mut ids = if full.len() > prompt.len() && full[..prompt.len()] == prompt[..] {
            full
        } else {
            let mut v = prompt.clone();
            v.extend(self.tok.encode(&format!("{sep}{a}"), false)?);
            v
        };
        if ids.len() == prompt.len() {
            return Err(Error::Invalid(format!(
                "answer {} to question {} has no tokens (nothing to learn or unlearn)",
                excerpt(a, 80),
                excerpt(q, 80)
            )));
        }
        ids.push(self.tok.eos_id);
        if prompt.len() + 1 >= self.max_len {
            return Err(Error::Invalid(format!(
                "the prompt of question {} has {} tokens, which leaves no room for an answer \
                 within max_len = {} tokens",
                excerpt(q, 80),
                prompt.len(),
                self.max_len
            )));
        }
        ids.truncate(self.max_len);
        Ok(Encoded {
            ids,
            n_prompt: prompt.len(),
        })
    }
}

impl Formatter<'_> {
    /// Encode (q, a) as open-unlearning's `preprocess_chat_instance` does
    /// (`eval.compat = "open_unlearning"`): with a chat template, the whole exchange rendered
    /// with the assistant's turn closed (`apply_chat_template(add_generation_prompt=False)`)
    /// plus EOS when it does not already end in EOS, so on ChatML models the labels are
    /// a ⊕ <|im_end|> ⊕ "\n" ⊕ <|im_end|>; the prompt is the generation prompt as ours. Without
    /// a template, `Question: {q}\nAnswer: ` (the tags of open-unlearning's Llama-2 and Phi
    /// configs) followed by the answer, tokenised with the tokenizer's special tokens, plus EOS.
    /// The labels are everything after the prompt's length, whether or not the prompt's tokens
    /// are a prefix of the sequence's (open-unlearning does not check).
    pub fn encode_qa_compat(&self, q: &str, a: &str) -> Result<Encoded> {
        let (mut ids, prompt) = if self.chat {
            let full = self
                .tok
                .render_exchange(self.system.as_deref(), q, a)?
                .unwrap_or_default();
            (self.tok.encode(&full, false)?, self.encode_prompt(q)?)
        } else {
            let wrapped = format!("Question: {q}\nAnswer: ");
            (
                self.tok.encode(&format!("{wrapped}{a}"), true)?,
                self.tok.encode(&wrapped, true)?,
            )
        };
        if ids.last() != Some(&self.tok.eos_id) {
            ids.push(self.tok.eos_id);
        }
        if prompt.len() + 1 >= self.max_len || prompt.len() >= ids.len() {
            return Err(Error::Invalid(format!(
                "question {}: no answer tokens within max_len = {} after a prompt of {} tokens",
                excerpt(q, 80),
                self.max_len,
                prompt.len()
            )));
        }
        ids.truncate(self.max_len);
        Ok(Encoded {
            ids,
            n_prompt: prompt.len(),
        })
    }

    /// Encode unprompted text (plain style, empty question): the tokenizer's own special tokens
    /// (BOS where the model uses one) ⊕ text ⊕ EOS, every token after the first a label.
    pub fn encode_text(&self, a: &str) -> Result<Encoded> {
        let mut ids = self.tok.encode(a, true)?;
        if ids.is_empty() {
            return Err(Error::Invalid(format!(
                "text {} has no tokens",
                excerpt(a, 80)
            )));
        }
        ids.truncate(self.max_len.saturating_sub(1).max(1));
        ids.push(self.tok.eos_id);
        Ok(Encoded { ids, n_prompt: 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cover_answer_and_eos() {
        let tok = crate::model::fixture::tiny_tokenizer();
        let f = Formatter::new(&tok, PromptStyle::Auto, 512).unwrap();
        assert!(f.uses_chat());
        let e = f.encode_qa("Who?", "Bob").unwrap();
        assert_eq!(e.n_labels(), 4); // B o b EOS
        assert_eq!(
            tok.decode(&e.ids[e.n_prompt..], false).unwrap(),
            "Bob<|im_end|>"
        );
        let p = Formatter::new(&tok, PromptStyle::Plain, 512).unwrap();
        let e = p.encode_qa("Who?", "Bob").unwrap();
        assert_eq!(
            tok.decode(&e.ids[..e.n_prompt], false).unwrap(),
            "Question: Who?\nAnswer:"
        );
        assert_eq!(
            tok.decode(&e.ids[e.n_prompt..], false).unwrap(),
            " Bob<|im_end|>"
        );
        let short = Formatter::new(&tok, PromptStyle::Plain, 25).unwrap();
        assert_eq!(
            short.encode_qa("Who?", "Bob is here").unwrap().ids.len(),
            25
        );
    }
}
