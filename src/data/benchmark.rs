//! Benchmarks by name: a local directory of `{split}.jsonl` files, or a TOFU-layout dataset
//! repository on the Hugging Face Hub (`locuslab/TOFU` for `tofu`), normalised into that layout.
//!
//! A Hub dataset stores its splits as JSON (an array or JSON lines; TOFU's `*.json` files are
//! JSON lines) or parquet, in any of the layouts `datasets` reads: `{split}.json[l]` or
//! `{split}.parquet` at the root, files inside a `{split}/` folder (`{split}/train-00000-of-00001.parquet`),
//! or `data/{split}-00000-of-00001.parquet`. Each split becomes `{split}.jsonl` with the fields the
//! evaluation reads ([`QaItem`]), in `$UNLEARN_CACHE/benchmarks/datasets--org--name/<commit>/`
//! (see [`crate::util::hub::own_cache_dir`]), written once per commit and reused without a request.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::qa::{items_from_values, read_qa, write_qa, QaItem};
use crate::error::{Error, Result};
use crate::util::hub::{self, Hub, HubId, Kind};

/// The Hub dataset `--benchmark tofu` names when `$UNLEARN_TOFU_DIR` is not set.
pub const TOFU_REPO: &str = "locuslab/TOFU";

/// A benchmark name, directory or Hub dataset: `tofu` is `$UNLEARN_TOFU_DIR` when set, else
/// [`TOFU_REPO`]; an existing directory is read as it is; `org/name[@rev]` (or
/// `hf://datasets/org/name`) is a Hub dataset. Returns a directory of `{split}.jsonl` files.
pub fn resolve(name: &str) -> Result<PathBuf> {
    if name == "tofu" {
        if let Some(d) = std::env::var_os("UNLEARN_TOFU_DIR").filter(|v| !v.is_empty()) {
            let d = PathBuf::from(d);
            return if d.is_dir() {
                Ok(d)
            } else {
                Err(Error::Invalid(format!(
                    "UNLEARN_TOFU_DIR={}: not a directory",
                    d.display()
                )))
            };
        }
        return from_hub(&HubId::parse(TOFU_REPO, Kind::Dataset).expect("valid id"));
    }
    let p = Path::new(name);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    match HubId::parse(name, Kind::Dataset) {
        Some(id) => from_hub(&id),
        None => Err(Error::Invalid(format!(
            "benchmark {name:?}: not `tofu`, not a directory and not a Hub dataset id (org/name)"
        ))),
    }
}

/// The split a data file holds, by the layouts in the module doc; None for other files.
fn split_of(file: &str) -> Option<String> {
    let ext = [".jsonl", ".json", ".parquet"]
        .into_iter()
        .find(|e| file.ends_with(e))?;
    let stem = &file[..file.len() - ext.len()];
    let parts: Vec<&str> = stem.split('/').collect();
    let base = |s: &str| {
        // `forget01-00000-of-00001` → `forget01`
        match s.rsplitn(4, '-').collect::<Vec<_>>().as_slice() {
            [n, "of", i, rest]
                if n.chars().all(|c| c.is_ascii_digit())
                    && i.chars().all(|c| c.is_ascii_digit()) =>
            {
                rest.to_string()
            }
            _ => s.to_string(),
        }
    };
    let split = match parts.as_slice() {
        [f] => base(f),
        ["data", f] => base(f),
        [dir, _] => dir.to_string(),
        _ => return None,
    };
    let ok = !split.is_empty()
        && !split.starts_with('.')
        && split
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then_some(split)
}

/// Data files grouped by split (files of a split in name order).
fn splits(files: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in files {
        if let Some(s) = split_of(f) {
            out.entry(s).or_default().push(f.clone());
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Rows of a parquet file as QA items (errors name the file and the row).
fn read_parquet(path: &Path) -> Result<Vec<QaItem>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |msg: String| Error::Data {
        path: path.to_path_buf(),
        line: 0,
        msg,
    };
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let r = SerializedFileReader::new(f).map_err(|e| bad(format!("not a parquet file: {e}")))?;
    let rows = r
        .get_row_iter(None)
        .map_err(|e| bad(format!("cannot read rows: {e}")))?;
    let values = rows
        .enumerate()
        .map(|(i, row)| {
            row.map(|r| r.to_json_value())
                .map_err(|e| bad(format!("row {i}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    items_from_values(values, path, "row")
}

/// Rows of a data file (parquet, a JSON array or JSON lines) as JSON objects, for tasks whose
/// fields are not QA items (multiple choice, lists of aliases). Errors name the file and the row
/// or line.
pub fn read_rows(path: &Path) -> Result<Vec<serde_json::Value>> {
    let bad = |line: usize, msg: String| Error::Data {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let rows = if path.extension().is_some_and(|e| e == "parquet") {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let r =
            SerializedFileReader::new(f).map_err(|e| bad(0, format!("not a parquet file: {e}")))?;
        let rows = r
            .get_row_iter(None)
            .map_err(|e| bad(0, format!("cannot read rows: {e}")))?;
        rows.enumerate()
            .map(|(i, row)| {
                row.map(|r| r.to_json_value())
                    .map_err(|e| bad(0, format!("row {i}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let text = crate::error::read_to_string(path)?;
        if text.trim_start().starts_with('[') {
            serde_json::from_str::<Vec<serde_json::Value>>(&text)
                .map_err(|e| bad(e.line(), format!("not a JSON array: {e}")))?
        } else {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str(l).map_err(|e| bad(i + 1, format!("not JSON: {e}")))
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    if let Some(i) = rows.iter().position(|r| !r.is_object()) {
        return Err(bad(0, format!("row {i} is not a JSON object")));
    }
    Ok(rows)
}

/// The rows of the QA file `path` beside its `n_items` items, one JSON object per item, for a
/// setting (`what`) that reads a field the items do not keep (`task_id`, `golden_answer`).
pub fn rows_beside_items(
    path: &Path,
    n_items: usize,
    what: &str,
) -> Result<Vec<serde_json::Value>> {
    let rows = read_rows(path)?;
    if rows.len() != n_items {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 0,
            msg: format!(
                "{what} needs one JSON object per item ({} rows, {n_items} items)",
                rows.len()
            ),
        });
    }
    Ok(rows)
}

/// A dataset in its own Hub layout, as a local directory: an existing directory as it is, or a
/// Hub dataset id (`org/name[@revision]`, `hf://datasets/org/name`) whose data files
/// (`.parquet`, `.json`, `.jsonl`, in every folder) are fetched into the Hugging Face cache
/// (once per commit; offline mode uses the cached snapshot). Returns the snapshot directory.
pub fn dataset_dir(spec: &Path) -> Result<PathBuf> {
    if spec.is_dir() {
        return Ok(spec.to_path_buf());
    }
    let s = spec.to_string_lossy();
    let id = HubId::parse(&s, Kind::Dataset).ok_or_else(|| {
        Error::Invalid(format!(
            "{s}: not a directory and not a Hub dataset id (org/name[@revision])"
        ))
    })?;
    let hub = Hub::from_env();
    let is_data = |f: &str| {
        [".parquet", ".json", ".jsonl"]
            .iter()
            .any(|e| f.ends_with(e))
    };
    if let Some(snap) = hub.cached_snapshot(&id) {
        if hub.is_offline() {
            return Ok(snap);
        }
    } else if hub.is_offline() {
        return Err(hub.offline_error(&id, "the dataset"));
    }
    let r = hub.remote(&id)?;
    let data: Vec<&String> = r.files.iter().filter(|f| is_data(f)).collect();
    if data.is_empty() {
        return Err(Error::Hub {
            repo: id.to_string(),
            kind: crate::error::HubKind::NotFound,
            msg: "has no data files (.parquet, .json or .jsonl)".into(),
        });
    }
    for f in data {
        r.fetch(f)?;
    }
    Ok(r.snapshot())
}

/// The files of each split under `dir` (any layout of the module doc), by split name.
pub fn local_splits(dir: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    let files = listing(dir);
    Ok(splits(&files)
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|f| dir.join(f)).collect()))
        .collect())
}

fn read_any(path: &Path) -> Result<Vec<QaItem>> {
    if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet(path)
    } else {
        read_qa(path)
    }
}

/// Files of a cached snapshot, relative to it (no request).
fn listing(snap: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = vec![];
    walk(snap, snap, &mut out);
    out.sort();
    out
}

/// A Hub dataset normalised to `{split}.jsonl` files (see the module doc).
pub fn from_hub(id: &HubId) -> Result<PathBuf> {
    let hub = Hub::from_env();
    let out_root = hub::own_cache_dir().join("benchmarks").join(id.folder());
    // Cache first: a normalised copy of the cached commit is used without a request.
    if let Some(snap) = hub.cached_snapshot(id) {
        let commit = snap.file_name().unwrap().to_string_lossy().into_owned();
        let out = out_root.join(&commit);
        if out.join(".complete").is_file() {
            return Ok(out);
        }
        if hub.is_offline() {
            let files = listing(&snap);
            return normalise(id, &snap, &files, &out);
        }
    } else if hub.is_offline() {
        return Err(hub.offline_error(id, "the dataset"));
    }
    let r = hub.remote(id)?;
    let data: Vec<String> = splits(&r.files).into_values().flatten().collect();
    if data.is_empty() {
        return Err(Error::Hub {
            repo: id.to_string(),
            kind: crate::error::HubKind::NotFound,
            msg: "has no data files (.json, .jsonl or .parquet) in a layout `datasets` reads"
                .into(),
        });
    }
    for f in &data {
        r.fetch(f)?;
    }
    normalise(id, &r.snapshot(), &data, &out_root.join(&r.sha))
}

/// Write every split of `files` (in `snap`) as `{split}.jsonl` into `out`, atomically.
fn normalise(id: &HubId, snap: &Path, files: &[String], out: &Path) -> Result<PathBuf> {
    let groups = splits(files);
    if groups.is_empty() {
        return Err(hub::Hub::from_env().offline_error(id, "data files"));
    }
    let mut sets = vec![];
    for (split, parts) in &groups {
        let mut items = vec![];
        for f in parts {
            items.extend(read_any(&snap.join(f))?);
        }
        sets.push((split.clone(), items));
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    crate::util::fs::atomic_dir(out, |tmp| {
        for (split, items) in &sets {
            write_qa(items, &tmp.join(format!("{split}.jsonl")))?;
        }
        crate::util::fs::write_synced(
            &tmp.join(".complete"),
            format!(
                "{id}\n{}\n",
                groups.keys().cloned().collect::<Vec<_>>().join(" ")
            )
            .as_bytes(),
        )
    })?;
    eprintln!(
        "benchmark {id}: {} splits in {}",
        groups.len(),
        out.display()
    );
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_splits_in_every_layout() {
        let files: Vec<String> = [
            "README.md",
            "forget01.json",
            "retain90.jsonl",
            "holdout01/train-00000-of-00001.parquet",
            "data/world_facts-00000-of-00002.parquet",
            "data/world_facts-00001-of-00002.parquet",
            "real_authors.parquet",
            ".gitattributes",
            "a/b/c.json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = splits(&files);
        let keys: Vec<&str> = s.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "forget01",
                "holdout01",
                "real_authors",
                "retain90",
                "world_facts"
            ]
        );
        assert_eq!(s["world_facts"].len(), 2);
    }
}
