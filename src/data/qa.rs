//! QA datasets as JSON arrays or JSONL, with TOFU field names: `question`, `answer`,
//! `paraphrased_answer`, `perturbed_answer` (list), `paraphrased_question`. Real-authors /
//! world-facts files give their wrong options as `perturbed_answer` as well.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{read_to_string, Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaItem {
    pub question: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paraphrased_answer: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub perturbed_answer: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paraphrased_question: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => vec![],
    })
}

fn check(item: &QaItem) -> std::result::Result<(), String> {
    if item.question.trim().is_empty() {
        return Err("empty `question`".into());
    }
    if item.answer.trim().is_empty() {
        return Err("empty `answer`".into());
    }
    Ok(())
}

/// Read a QA file: a JSON array (errors name the element index as `item N` and the line where the
/// parser stopped) or JSONL (errors name the line). Blank lines are skipped.
pub fn read_qa(path: &Path) -> Result<Vec<QaItem>> {
    read(path, false)
}

/// Read a training corpus: QA items as [`read_qa`], plus plain text. A `{"text": …}` object, or
/// each non-empty line of a `.txt` file, becomes an item with an empty question, which the
/// formatter encodes as text the model says unprompted (an empty user turn under a chat template;
/// the bare text in the plain style), every token a label. QA items may also leave the question
/// empty.
pub fn read_items(path: &Path) -> Result<Vec<QaItem>> {
    if path.extension().is_some_and(|e| e == "txt") {
        let items: Vec<QaItem> = read_to_string(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| QaItem::text(l.trim()))
            .collect();
        if items.is_empty() {
            return Err(Error::Data {
                path: path.to_path_buf(),
                line: 0,
                msg: "the file has no text".into(),
            });
        }
        return Ok(items);
    }
    read(path, true)
}

/// Write items as JSONL, one object per line (atomically).
pub fn write_qa(items: &[QaItem], path: &Path) -> Result<()> {
    let text: String = items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap() + "\n")
        .collect();
    crate::model::hf::atomic_write(path, text.as_bytes())
}

impl QaItem {
    /// An unprompted text (empty question).
    pub fn text(t: &str) -> QaItem {
        QaItem {
            question: String::new(),
            answer: t.to_string(),
            paraphrased_answer: None,
            perturbed_answer: vec![],
            paraphrased_question: None,
        }
    }
}

fn parse_item(v: serde_json::Value, texts: bool) -> std::result::Result<QaItem, String> {
    if texts {
        if let Some(t) = v.get("text").filter(|_| v.get("question").is_none()) {
            let t = t.as_str().ok_or("`text` is not a string")?;
            if t.trim().is_empty() {
                return Err("empty `text`".into());
            }
            return Ok(QaItem::text(t));
        }
    }
    let item: QaItem = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if texts && item.question.trim().is_empty() {
        if item.answer.trim().is_empty() {
            return Err("empty `answer`".into());
        }
        return Ok(item);
    }
    check(&item)?;
    Ok(item)
}

/// QA items from JSON objects read out of `path` (a parquet file, say); errors name the file
/// and `what` with the index (`row 3: empty `answer``).
pub fn items_from_values(
    values: Vec<serde_json::Value>,
    path: &Path,
    what: &str,
) -> Result<Vec<QaItem>> {
    let out = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            parse_item(v, false).map_err(|m| Error::Data {
                path: path.to_path_buf(),
                line: 0,
                msg: format!("{what} {i}: {m}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if out.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 0,
            msg: "the dataset has no items".into(),
        });
    }
    Ok(out)
}

fn read(path: &Path, texts: bool) -> Result<Vec<QaItem>> {
    let text = read_to_string(path)?;
    let err = |line: usize, msg: String| Error::Data {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let trimmed = text.trim_start();
    let mut out = Vec::new();
    if trimmed.starts_with('[') {
        let values: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| err(e.line(), format!("invalid JSON: {e}")))?;
        // Line of each element: find the start of each top-level element by re-scanning.
        for (i, v) in values.into_iter().enumerate() {
            let item = parse_item(v, texts).map_err(|m| err(0, format!("item {i}: {m}")))?;
            out.push(item);
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| err(i + 1, e.to_string()))?;
            out.push(parse_item(v, texts).map_err(|m| err(i + 1, m))?);
        }
    }
    if out.is_empty() {
        return Err(err(0, "the dataset has no items".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jsonl_and_array_and_reports_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{\"question\":\"q1\",\"answer\":\"a1\",\"perturbed_answer\":[\"x\",\"y\"]}\n\n{\"question\":\"q2\",\"answer\":\"a2\",\"perturbed_answer\":\"z\"}\n").unwrap();
        let v = read_qa(&p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].perturbed_answer, vec!["x", "y"]);
        assert_eq!(v[1].perturbed_answer, vec!["z"]);
        let p2 = dir.path().join("b.json");
        std::fs::write(&p2, serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(read_qa(&p2).unwrap(), v);
        std::fs::write(
            &p,
            "{\"question\":\"q1\",\"answer\":\"a1\"}\n{\"question\":\"q2\"}\n",
        )
        .unwrap();
        let e = read_qa(&p).unwrap_err().to_string();
        assert!(e.contains("a.jsonl:2:") && e.contains("answer"), "{e}");
        std::fs::write(&p, "{\"question\":\"q1\",\"answer\":\"  \"}\n").unwrap();
        assert!(read_qa(&p)
            .unwrap_err()
            .to_string()
            .contains(":1: empty `answer`"));
    }

    #[test]
    fn reads_texts_for_training() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        std::fs::write(&p, "{\"text\":\"Once upon a time.\"}\n{\"question\":\"\",\"answer\":\"Hello.\"}\n{\"question\":\"q\",\"answer\":\"a\"}\n").unwrap();
        let v = read_items(&p).unwrap();
        assert_eq!(v[0], QaItem::text("Once upon a time."));
        assert_eq!(v[1], QaItem::text("Hello."));
        assert_eq!(v[2].question, "q");
        // evaluation data keeps requiring questions
        assert!(read_qa(&p).is_err());
        std::fs::write(&p, "{\"text\":\" \"}\n").unwrap();
        assert!(read_items(&p)
            .unwrap_err()
            .to_string()
            .contains(":1: empty `text`"));
        let t = dir.path().join("d.txt");
        std::fs::write(&t, "line one\n\nline two\n").unwrap();
        assert_eq!(read_items(&t).unwrap().len(), 2);
    }

    #[test]
    fn reads_tofu_files() {
        // The TOFU data the tests are given (scripts/test.sh sets UNLEARN_TOFU_DIR).
        let Some(dir) = std::env::var_os("UNLEARN_TOFU_DIR") else {
            eprintln!("skipping: UNLEARN_TOFU_DIR not set");
            return;
        };
        let p = Path::new(&dir).join("forget01_perturbed.jsonl");
        let v = read_qa(&p).unwrap();
        assert_eq!(v.len(), 40);
        assert_eq!(v[0].perturbed_answer.len(), 5);
        assert!(v[0].paraphrased_answer.is_some() && v[0].paraphrased_question.is_some());
    }
}
