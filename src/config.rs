//! Configs: TOML files plus `--set key=value` overrides (dotted keys for nested tables).
//! Unknown keys are errors (every config struct uses `deny_unknown_fields`).
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{read_to_string, Error, Result};

/// Load `path` (if any), apply `overrides` ("a.b=value"; the value is parsed as a TOML literal,
/// falling back to a string), and deserialize into `T`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, overrides: &[String]) -> Result<T> {
    deserialize(path, read_table(path, overrides)?)
}

/// Like [`load`], but keys the user does not give (at any depth) take their value from
/// `defaults`, so `--set pretrain.epochs=3` keeps the other `pretrain` keys of `defaults` rather
/// than the nested struct's own `Default`. Unknown keys are still errors.
pub fn load_over<T: serde::Serialize + DeserializeOwned>(
    defaults: &T,
    path: Option<&Path>,
    overrides: &[String],
) -> Result<T> {
    let user = read_table(path, overrides)?;
    let mut base = toml::Value::try_from(defaults)
        .map_err(|e| Error::Invalid(format!("default config does not serialise: {e}")))?;
    merge(&mut base, toml::Value::Table(user));
    match base {
        toml::Value::Table(t) => deserialize(path, t),
        _ => Err(Error::Invalid("default config is not a table".into())),
    }
}

/// Recursively overlay `over` on `base` (tables merge key by key; anything else replaces).
pub fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn deserialize<T: DeserializeOwned>(path: Option<&Path>, root: toml::Table) -> Result<T> {
    let where_ = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "--set".into());
    toml::Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Invalid(format!("config {where_}: {}", e.message())))
}

/// The TOML file (if any) with the `--set` overrides applied.
fn read_table(path: Option<&Path>, overrides: &[String]) -> Result<toml::Table> {
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
    Ok(root)
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
    #[derive(serde::Deserialize, serde::Serialize, Debug, Default)]
    #[serde(deny_unknown_fields, default)]
    struct C {
        lr: f64,
        name: String,
        inner: Inner,
    }
    #[derive(serde::Deserialize, serde::Serialize, Debug, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        k: usize,
        j: usize,
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

    #[test]
    fn load_over_keeps_nested_defaults() {
        let d = C {
            lr: 0.5,
            name: "d".into(),
            inner: Inner { k: 7, j: 9 },
        };
        // `inner.k` given: `inner.j` keeps 9 from `d`, not Inner::default()'s 0
        let c: C = load_over(&d, None, &["inner.k=4".into()]).unwrap();
        assert_eq!(
            (c.lr, c.name.as_str(), c.inner.k, c.inner.j),
            (0.5, "d", 4, 9)
        );
        let e = load_over::<C>(&d, None, &["inner.q=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `q`"), "{e}");
    }
}
