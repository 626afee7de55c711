//! Configs: TOML files plus `--set key=value` overrides (dotted keys for nested tables).
//! Unknown keys are errors (every config struct uses `deny_unknown_fields`).
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{read_to_string, Error, Result};

/// Load `path` (if any), apply `overrides` ("a.b=value"; the value is parsed as a TOML literal,
/// falling back to a string), and deserialize into `T`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, overrides: &[String]) -> Result<T> {
    let mut root = match path {
        Some(p) => {
            let text = read_to_string(p)?;
            text.parse::<toml::Table>().map_err(|e| Error::Data {
                path: p.to_path_buf(),
                line: e
                    .span()
                    .map(|s| text[..s.start].lines().count().max(1))
                    .unwrap_or(0),
                msg: e.message().to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    for ov in overrides {
        let (key, val) = ov
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("--set `{ov}`: expected key=value")))?;
        let value = parse_literal(val.trim());
        let parts: Vec<&str> = key.trim().split('.').collect();
        let mut table = &mut root;
        for p in &parts[..parts.len() - 1] {
            let entry = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            // A named value refined by sub-keys (`method = "ga+gd"`, `--set method.alpha=2`)
            // becomes a table carrying the name.
            if let toml::Value::String(name) = entry {
                let mut t = toml::Table::new();
                t.insert("name".into(), toml::Value::String(name.clone()));
                *entry = toml::Value::Table(t);
            }
            table = entry
                .as_table_mut()
                .ok_or_else(|| Error::Invalid(format!("--set `{ov}`: `{p}` is not a table")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    let where_ = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "--set".into());
    toml::Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Invalid(format!("config {where_}: {}", e.message())))
}

fn parse_literal(s: &str) -> toml::Value {
    let doc = format!("v = {s}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap(),
        Err(_) => toml::Value::String(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields, default)]
    struct C {
        lr: f64,
        name: String,
        inner: Inner,
    }
    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        k: usize,
    }
    #[test]
    fn overrides_and_unknown_keys() {
        let c: C = load(
            None,
            &["lr=1e-3".into(), "name=abc".into(), "inner.k=4".into()],
        )
        .unwrap();
        assert_eq!((c.lr, c.name.as_str(), c.inner.k), (1e-3, "abc", 4));
        let e = load::<C>(None, &["lrr=1".into()]).unwrap_err().to_string();
        assert!(e.contains("unknown field `lrr`"), "{e}");
    }
}
