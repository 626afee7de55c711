//! Configs: TOML files plus `--set key=value` overrides (dotted keys for nested tables).
//! Unknown keys are errors (every config struct uses `deny_unknown_fields`), and so are values
//! out of range: every config implements [`Validate`], which [`load`] runs before returning, so
//! `lr = nan`, `batch_size = 0` or `adamw.beta1 = 1.5` fail when the config loads, before any
//! model or data is read.
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{read_to_string, Error, Result};

/// Load `path` (if any), apply `overrides` ("a.b=value"; the value is parsed as a TOML literal,
/// falling back to a string), and deserialize into `T`.
pub fn load<T: DeserializeOwned + Validate>(
    path: Option<&Path>,
    overrides: &[String],
) -> Result<T> {
    let v: T = deserialize(path, read_table(path, overrides)?)?;
    validated(path, v)
}

/// Range checks of a config's values, run when it loads ([`load`], [`load_over`]).
pub trait Validate {
    /// Report every out-of-range value to `c` (keys relative to this struct).
    fn check(&self, c: &mut Check);

    /// All checks as one result: the first problem, named by its dotted key.
    fn validate(&self) -> std::result::Result<(), String> {
        let mut c = Check::default();
        self.check(&mut c);
        c.finish()
    }
}

impl<T: Validate> Validate for Box<T> {
    fn check(&self, c: &mut Check) {
        (**self).check(c)
    }
}

/// Collects range violations under dotted key names.
#[derive(Default)]
pub struct Check {
    prefix: Vec<String>,
    errors: Vec<String>,
}

impl Check {
    fn key(&self, k: &str) -> String {
        let mut parts = self.prefix.clone();
        parts.push(k.to_string());
        parts.join(".")
    }

    /// Record a problem with key `k`.
    pub fn fail(&mut self, k: &str, msg: impl std::fmt::Display) {
        let key = self.key(k);
        self.errors.push(format!("`{key}` {msg}"));
    }

    fn real(&mut self, k: &str, x: f64, ok: bool, what: &str) {
        if !x.is_finite() || !ok {
            self.fail(k, format!("must be {what} (got {x})"));
        }
    }

    /// A finite number > 0.
    pub fn positive(&mut self, k: &str, x: f64) {
        self.real(k, x, x > 0.0, "a finite number > 0");
    }

    /// A finite number ≥ 0.
    pub fn non_negative(&mut self, k: &str, x: f64) {
        self.real(k, x, x >= 0.0, "a finite number >= 0");
    }

    /// Any finite number.
    pub fn finite(&mut self, k: &str, x: f64) {
        self.real(k, x, true, "a finite number");
    }

    /// In [0, 1].
    pub fn fraction(&mut self, k: &str, x: f64) {
        self.real(k, x, (0.0..=1.0).contains(&x), "in [0, 1]");
    }

    /// In [0, 1) (a moment decay β).
    pub fn decay(&mut self, k: &str, x: f64) {
        self.real(k, x, (0.0..1.0).contains(&x), "in [0, 1)");
    }

    /// In (0, 1].
    pub fn share(&mut self, k: &str, x: f64) {
        self.real(k, x, x > 0.0 && x <= 1.0, "in (0, 1]");
    }

    /// An integer ≥ `min`.
    pub fn at_least(&mut self, k: &str, n: usize, min: usize) {
        if n < min {
            self.fail(k, format!("must be at least {min} (got {n})"));
        }
    }

    /// A non-empty string.
    pub fn non_empty(&mut self, k: &str, s: &str) {
        if s.trim().is_empty() {
            self.fail(k, "must not be empty");
        }
    }

    /// Check a nested config under `k`.
    pub fn sub(&mut self, k: &str, v: &dyn Validate) {
        self.prefix.push(k.to_string());
        v.check(self);
        self.prefix.pop();
    }

    pub fn finish(self) -> std::result::Result<(), String> {
        match self.errors.first() {
            None => Ok(()),
            Some(first) if self.errors.len() == 1 => Err(first.clone()),
            Some(first) => Err(format!(
                "{first} (and {} more: {})",
                self.errors.len() - 1,
                self.errors[1..].join("; ")
            )),
        }
    }
}

fn validated<T: Validate>(path: Option<&Path>, v: T) -> Result<T> {
    v.validate().map_err(|msg| {
        let where_ = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "--set".into());
        Error::Invalid(format!("config {where_}: {msg}"))
    })?;
    Ok(v)
}

/// Like [`load`], but keys the user does not give (at any depth) take their value from
/// `defaults`, so `--set pretrain.epochs=3` keeps the other `pretrain` keys of `defaults` rather
/// than the nested struct's own `Default`. Unknown keys are still errors.
pub fn load_over<T: serde::Serialize + DeserializeOwned + Validate>(
    defaults: &T,
    path: Option<&Path>,
    overrides: &[String],
) -> Result<T> {
    let user = read_table(path, overrides)?;
    let mut base = toml::Value::try_from(defaults)
        .map_err(|e| Error::Invalid(format!("default config does not serialise: {e}")))?;
    merge(&mut base, toml::Value::Table(user));
    match base {
        toml::Value::Table(t) => validated(path, deserialize(path, t)?),
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
        .map_err(|e: toml::de::Error| Error::Invalid(format!("config {where_}: {}", keyed(&e))))
}

/// A deserialisation error as one line naming its dotted key: "`train.lr`: invalid type: ...".
/// toml's `message()` drops the key (`--set dtype=f16` used to say only "unknown variant `f16`,
/// expected ..."); its `Display` has it on a line of its own (`\nin `key``). A nested
/// deserialiser that reports through this function gives "`lr`: ..." inside `train`, joined here
/// into `train.lr`.
pub fn keyed(e: &toml::de::Error) -> String {
    let shown = e.to_string();
    let mut key: Option<String> = None;
    let mut msg = vec![];
    for line in shown.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix("in `").and_then(|k| k.strip_suffix('`')) {
            Some(k) => key = Some(k.to_string()),
            None => msg.push(line),
        }
    }
    let msg = msg.join(" ");
    let Some(key) = key else {
        return msg;
    };
    // the message of a nested deserialiser that named its own key
    if let Some((inner, rest)) = msg
        .strip_prefix('`')
        .and_then(|m| m.split_once("`: "))
        .filter(|(inner, _)| !inner.contains(' '))
    {
        return format!("`{key}.{inner}`: {rest}");
    }
    format!("`{key}`: {msg}")
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
        set_dotted(&mut root, key.trim(), parse_literal(val.trim()))
            .map_err(|e| Error::Invalid(format!("--set `{ov}`: {e}")))?;
    }
    Ok(root)
}

/// Set the dotted `key` ("train.lr") of `root` to `value`, creating tables on the way. A named
/// value refined by sub-keys (`method = "ga+gd"`, then `method.alpha = 2`) becomes a table
/// carrying the name.
pub fn set_dotted(
    root: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> std::result::Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a dotted key"));
    }
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::String(name) = entry {
            let mut t = toml::Table::new();
            t.insert("name".into(), toml::Value::String(name.clone()));
            *entry = toml::Value::Table(t);
        }
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// A config from a TOML table (unknown keys and out-of-range values are errors; `what` names
/// the table in messages).
pub fn from_table<T: DeserializeOwned + Validate>(root: toml::Table, what: &Path) -> Result<T> {
    validated(Some(what), deserialize(Some(what), root)?)
}

/// A `--set` value: a TOML literal, else the text as a string.
pub fn parse_literal(s: &str) -> toml::Value {
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
    impl Validate for C {
        fn check(&self, c: &mut Check) {
            c.non_negative("lr", self.lr);
            c.sub("inner", &self.inner);
        }
    }
    impl Validate for Inner {
        fn check(&self, c: &mut Check) {
            c.at_least("k", self.k, 0);
            if self.j > 100 {
                c.fail("j", "must be at most 100");
            }
        }
    }

    #[test]
    fn out_of_range_values_fail_at_load_with_their_key() {
        let e = load::<C>(None, &["lr=nan".into()]).unwrap_err().to_string();
        assert!(
            e.contains("`lr` must be a finite number >= 0 (got NaN)"),
            "{e}"
        );
        let e = load::<C>(None, &["lr=-1".into(), "inner.j=101".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`lr`") && e.contains("`inner.j` must be at most 100"),
            "{e}"
        );
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

    /// Regression: `--set` with a value of the wrong kind or an unknown enum variant named no key
    /// (the error's `message()` drops it).
    #[test]
    fn type_errors_name_their_dotted_key() {
        let e = load::<C>(None, &["inner.k=\"x\"".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`inner.k`: invalid type"), "{e}");
        let e = load::<C>(None, &["lr=fast".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lr`: invalid type"), "{e}");
        let e = load::<C>(None, &["inner.q=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`inner`: unknown field `q`"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
