//! Content hashes (SHA-256, the hash the Hugging Face Hub names its LFS files by) of the inputs a
//! result depends on: recorded in run.json, and the key under which cached evaluations are
//! reused, so that an edited file at the same path is never mistaken for the old one.
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Hashes already computed by this process, by (path, length, modification time, inode): a
/// model is hashed for run.json and again for the evaluation's cache key, but read once.
type Memo =
    std::collections::HashMap<(std::path::PathBuf, u64, std::time::SystemTime, u64), String>;
static MEMO: std::sync::Mutex<Option<Memo>> = std::sync::Mutex::new(None);

fn memo_key(
    path: &Path,
    f: &std::fs::File,
) -> Option<(std::path::PathBuf, u64, std::time::SystemTime, u64)> {
    let m = f.metadata().ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((path.canonicalize().ok()?, m.len(), m.modified().ok()?, ino))
}

/// SHA-256 of a file's bytes, as lowercase hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let key = memo_key(path, &f);
    if let (Some(k), Ok(m)) = (&key, MEMO.lock()) {
        if let Some(h) = m.as_ref().and_then(|m| m.get(k)) {
            return Ok(h.clone());
        }
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let out = hex(&h.finalize());
    if let (Some(k), Ok(mut m)) = (key, MEMO.lock()) {
        m.get_or_insert_with(Default::default)
            .insert(k, out.clone());
    }
    Ok(out)
}

/// SHA-256 of bytes, as lowercase hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hashes of the files of a directory (recursively; hidden temporaries and lock files skipped),
/// as sorted `(relative path, sha256)` pairs.
pub fn dir_hashes(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = vec![];
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let p = e.path();
        let t = std::fs::metadata(&p).map_err(|err| Error::io(&p, err))?;
        if t.is_dir() {
            walk(root, &p, out)?;
        } else if t.is_file() {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push((rel, file_sha256(&p)?));
        }
    }
    Ok(())
}

/// One hash of a file or directory's content (a directory: of its sorted (name, hash) pairs).
pub fn path_sha256(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let mut pairs = dir_hashes(path)?;
        // a LoRA adapter computes with its base model: a changed base changes the adapter's hash
        if crate::model::lora::is_adapter_dir(path) {
            if let Ok(base) = crate::model::Lora::base_of(path) {
                // one level only: a base that is an adapter is refused by the loader
                if base.is_dir() && !crate::model::lora::is_adapter_dir(&base) {
                    pairs.push(("<adapter base>".into(), path_sha256(&base)?));
                }
            }
        }
        let text: String = pairs.iter().map(|(n, h)| format!("{n}\t{h}\n")).collect();
        Ok(sha256(text.as_bytes()))
    } else {
        file_sha256(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_and_directory_changes() {
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"1").unwrap();
        let h1 = path_sha256(d.path()).unwrap();
        std::fs::write(d.path().join(".a.tmp-1"), b"x").unwrap();
        assert_eq!(path_sha256(d.path()).unwrap(), h1, "temporaries count");
        std::fs::write(d.path().join("a"), b"2").unwrap();
        assert_ne!(path_sha256(d.path()).unwrap(), h1);
    }
}
