//! Models, datasets and files by Hugging Face Hub id, in the cache layout Python's
//! `huggingface_hub` uses (`blobs/`, `refs/`, `snapshots/<commit>/`), through the `hf-hub` crate.
//!
//! Names:
//! - a model or dataset: `org/name` or `org/name@revision` (branch, tag or commit), also written
//!   `hf://org/name` (models) and `hf://datasets/org/name`;
//! - one file: `hf://[datasets/]org/name[@revision]/path/in/repo` (HfFileSystem's URLs).
//!
//! A path that exists locally is always local: a Hub name is only tried when no such path
//! exists.
//!
//! Environment, as `huggingface_hub` reads it: the cache is `$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; the
//! token is `$HF_TOKEN`, else the file `$HF_TOKEN_PATH`, else `$HF_HOME/token`; `$HF_ENDPOINT`
//! replaces `https://huggingface.co`; `HF_HUB_OFFLINE=1` reads the cache only.
//!
//! What a call costs: a model or dataset whose snapshot in the cache already holds every file
//! needed is used without a request (a branch such as `main` is not re-checked; name a commit or
//! delete `refs/main` to move on). Otherwise one request lists the repository and each missing
//! file is downloaded. A download goes to `blobs/<etag>.part` (the client's name for it), resumes from there after an
//! interruption, and is published only once complete; its content is then checked against its
//! etag (the SHA-256 of LFS files, the git blob SHA-1 of the others) and removed if it differs,
//! so a truncated transfer never leaves a file that later loads.
use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};
use sha2::Digest;

use crate::error::{Error, HubKind, Result};

/// Model or dataset repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Dataset,
}

/// A repository at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub kind: Kind,
    pub repo: String,
    pub revision: String,
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Model => "",
            Kind::Dataset => "dataset ",
        };
        write!(f, "{kind}{}@{}", self.repo, self.revision)
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && !s.starts_with(['.', '-'])
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_revision(s: &str) -> bool {
    !s.is_empty()
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl HubId {
    /// `org/name[@rev]` (or `hf://org/name[@rev]`, `hf://datasets/org/name[@rev]`) as a
    /// repository of `default` kind; None when `spec` is not of that shape.
    pub fn parse(spec: &str, default: Kind) -> Option<HubId> {
        let (kind, rest) = split_scheme(spec, default);
        let (id, revision) = match rest.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (rest, "main"),
        };
        let (org, name) = id.split_once('/')?;
        (valid_part(org) && valid_part(name) && valid_revision(revision)).then(|| HubId {
            kind,
            repo: format!("{org}/{name}"),
            revision: revision.to_string(),
        })
    }

    /// A file: `hf://[datasets/]org/name[@rev]/path/in/repo`.
    pub fn parse_file(spec: &str) -> Option<(HubId, String)> {
        spec.strip_prefix("hf://")?;
        let (kind, rest) = split_scheme(spec, Kind::Model);
        let mut parts = rest.splitn(3, '/');
        let (org, name_rev, path) = (parts.next()?, parts.next()?, parts.next()?);
        let id = HubId::parse(&format!("{org}/{name_rev}"), kind)?;
        let ok = !path.is_empty()
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        ok.then(|| (HubId { kind, ..id }, path.to_string()))
    }

    fn repo(&self) -> Repo {
        let t = match self.kind {
            Kind::Model => RepoType::Model,
            Kind::Dataset => RepoType::Dataset,
        };
        Repo::with_revision(self.repo.clone(), t, self.revision.clone())
    }

    /// The repository's folder in the cache (`models--org--name`).
    pub fn folder(&self) -> String {
        self.repo().folder_name()
    }

    fn is_commit(&self) -> bool {
        self.revision.len() == 40 && self.revision.chars().all(|c| c.is_ascii_hexdigit())
    }
}

fn split_scheme(spec: &str, default: Kind) -> (Kind, &str) {
    match spec.strip_prefix("hf://") {
        Some(r) => match r.strip_prefix("datasets/") {
            Some(d) => (Kind::Dataset, d),
            None => (Kind::Model, r.strip_prefix("models/").unwrap_or(r)),
        },
        None => (default, spec),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home() -> PathBuf {
    env("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into())
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    env("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
        env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".cache"))
            .join("huggingface")
    })
}

/// The Hub cache directory (see the module doc).
pub fn cache_dir() -> PathBuf {
    env("HF_HUB_CACHE")
        .or_else(|| env("HUGGINGFACE_HUB_CACHE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("hub"))
}

/// Our own cache for derived files (normalised benchmarks): `$UNLEARN_CACHE`, else
/// `$XDG_CACHE_HOME/unlearn`, else `~/.cache/unlearn`.
pub fn own_cache_dir() -> PathBuf {
    env("UNLEARN_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".cache"))
            .join("unlearn")
    })
}

fn token() -> Option<String> {
    if let Some(t) = env("HF_TOKEN").or_else(|| env("HUGGING_FACE_HUB_TOKEN")) {
        return Some(t.trim().to_string());
    }
    let file = env("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"));
    let t = std::fs::read_to_string(file).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// `HF_HUB_OFFLINE` set to 1/true/yes/on.
pub fn offline() -> bool {
    env("HF_HUB_OFFLINE")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn endpoint() -> String {
    env("HF_ENDPOINT")
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

fn hub_err(id: &HubId, kind: HubKind, msg: impl Into<String>) -> Error {
    Error::Hub {
        repo: id.to_string(),
        kind,
        msg: msg.into(),
    }
}

/// The Hub client with the environment's settings.
pub struct Hub {
    cache: PathBuf,
    endpoint: String,
    token: Option<String>,
    offline: bool,
    api: std::sync::OnceLock<Api>,
}

/// A repository listed by the Hub at one commit.
pub struct Remote<'h> {
    hub: &'h Hub,
    id: HubId,
    api: ApiRepo,
    /// The commit the revision points at.
    pub sha: String,
    /// Every file in the repository (paths relative to its root).
    pub files: Vec<String>,
}

impl Hub {
    pub fn from_env() -> Hub {
        Hub {
            cache: cache_dir(),
            endpoint: endpoint(),
            token: token(),
            offline: offline(),
            api: std::sync::OnceLock::new(),
        }
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    fn repo_dir(&self, id: &HubId) -> PathBuf {
        self.cache.join(id.folder())
    }

    /// The cached snapshot of `id` (commit from `refs/<revision>`, or the revision itself when
    /// it is a commit), if there is one. Makes no request.
    pub fn cached_snapshot(&self, id: &HubId) -> Option<PathBuf> {
        let dir = self.repo_dir(id);
        let commit = if id.is_commit() {
            id.revision.clone()
        } else {
            std::fs::read_to_string(dir.join("refs").join(&id.revision))
                .ok()?
                .trim()
                .to_string()
        };
        let snap = dir.join("snapshots").join(commit);
        snap.is_dir().then_some(snap)
    }

    fn api(&self) -> Result<&Api> {
        if let Some(a) = self.api.get() {
            return Ok(a);
        }
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(self.cache.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(true)
            .with_retries(3)
            .with_user_agent("unlearn", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| Error::Invalid(format!("Hub client: {e}")))?;
        Ok(self.api.get_or_init(|| api))
    }

    /// The error for work that needs the network while `HF_HUB_OFFLINE` is set.
    pub fn offline_error(&self, id: &HubId, missing: &str) -> Error {
        hub_err(
            id,
            HubKind::Offline,
            format!(
                "HF_HUB_OFFLINE is set and the cache ({}) lacks {missing}; download it once \
                 without HF_HUB_OFFLINE",
                self.repo_dir(id).display()
            ),
        )
    }

    /// List the repository at its revision (one request).
    pub fn remote(&self, id: &HubId) -> Result<Remote<'_>> {
        if self.offline {
            return Err(self.offline_error(id, "it"));
        }
        let api = self.api()?.repo(id.repo());
        let info = api.info().map_err(|e| self.error(id, None, e))?;
        Ok(Remote {
            hub: self,
            id: id.clone(),
            api,
            sha: info.sha,
            files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
        })
    }

    /// One file of a repository: from the cache when its snapshot has it, else downloaded.
    pub fn file(&self, id: &HubId, path: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached_snapshot(id).map(|s| s.join(path)) {
            if p.is_file() {
                return Ok(p);
            }
        }
        if self.offline {
            return Err(self.offline_error(id, path));
        }
        let r = self.remote(id)?;
        if !r.files.iter().any(|f| f == path) {
            return Err(hub_err(
                id,
                HubKind::NotFound,
                format!("has no file {path:?} (it has {})", preview(&r.files)),
            ));
        }
        r.fetch(path)
    }

    /// Turn a client error into one line that says what to do.
    fn error(&self, id: &HubId, file: Option<&str>, e: ApiError) -> Error {
        let what = file.map(|f| format!(" file {f:?}")).unwrap_or_default();
        match e {
            ApiError::RequestError(b) => match *b {
                ureq::Error::Status(code, resp) => {
                    let code_hdr = resp.header("X-Error-Code").unwrap_or("").to_string();
                    let gated = code_hdr == "GatedRepo";
                    match (code, code_hdr.as_str()) {
                        (401, "RepoNotFound") | (404, "RepoNotFound") => hub_err(
                            id,
                            HubKind::NotFound,
                            format!(
                                "repository not found on {} (HTTP {code}); check the name, or \
                                 set HF_TOKEN if it is private",
                                self.endpoint
                            ),
                        ),
                        (401, _) | (403, _) => hub_err(
                            id,
                            HubKind::Auth,
                            format!(
                                "the Hub refused access{what} (HTTP {code}{}): {}",
                                if gated { ", gated repository" } else { "" },
                                if self.token.is_some() {
                                    "the token in HF_TOKEN (or the saved token) has no access; \
                                     accept the repository's terms on its page with that account"
                                } else {
                                    "the repository is gated or private; set HF_TOKEN to a token \
                                     of an account with access (https://huggingface.co/settings/tokens)"
                                }
                            ),
                        ),
                        (404, _) => hub_err(
                            id,
                            HubKind::NotFound,
                            format!("not found{what} on {} (HTTP 404)", self.endpoint),
                        ),
                        _ => hub_err(
                            id,
                            HubKind::Network,
                            format!("the Hub answered HTTP {code}{what}"),
                        ),
                    }
                }
                ureq::Error::Transport(t) => hub_err(
                    id,
                    HubKind::Network,
                    format!(
                        "cannot reach {}{what}: {t}; with the files already cached, \
                         HF_HUB_OFFLINE=1 uses the cache only",
                        self.endpoint
                    ),
                ),
            },
            ApiError::TooManyRetries(inner) => match self.error(id, file, *inner) {
                Error::Hub { repo, kind, msg } => Error::Hub {
                    repo,
                    kind,
                    msg: format!("{msg} (after 3 retries; run again to resume the download)"),
                },
                other => other,
            },
            other => hub_err(
                id,
                HubKind::Network,
                format!("download{what} failed: {}; run again to resume", other),
            ),
        }
    }
}

fn preview(files: &[String]) -> String {
    let mut s: Vec<&str> = files.iter().take(8).map(String::as_str).collect();
    if files.len() > 8 {
        s.push("…");
    }
    if s.is_empty() {
        "no files".into()
    } else {
        s.join(", ")
    }
}

impl Remote<'_> {
    /// The snapshot folder of this commit.
    pub fn snapshot(&self) -> PathBuf {
        self.hub
            .repo_dir(&self.id)
            .join("snapshots")
            .join(&self.sha)
    }

    /// A file of this commit: the cached copy when there is one, else downloaded and checked.
    pub fn fetch(&self, path: &str) -> Result<PathBuf> {
        let local = self.snapshot().join(path);
        if local.is_file() {
            return Ok(local);
        }
        eprintln!("downloading {path} from {}", self.id);
        let got = self
            .api
            .download(path)
            .map_err(|e| self.hub.error(&self.id, Some(path), e))?;
        verify(&got)
            .map_err(|msg| hub_err(&self.id, HubKind::Corrupt, format!("{path}: {msg}")))?;
        // the client's lock file beside the blob (huggingface_hub keeps its locks in .locks/)
        if let Ok(blob) = std::fs::canonicalize(&got) {
            let _ = std::fs::remove_file(blob.with_file_name(format!(
                "{}.lock",
                blob.file_name().unwrap_or_default().to_string_lossy()
            )));
        }
        if self.id.is_commit() {
            // huggingface_hub writes no ref for a commit; the client does: keep the layout theirs.
            let r = self
                .hub
                .repo_dir(&self.id)
                .join("refs")
                .join(&self.id.revision);
            let _ = std::fs::remove_file(r);
        }
        if got != local && !local.is_file() {
            return Err(hub_err(
                &self.id,
                HubKind::Other,
                format!(
                    "{path}: the revision moved while downloading (listed at {}, served from {}); \
                     run again",
                    self.sha,
                    got.display()
                ),
            ));
        }
        Ok(local)
    }
}

/// Check a downloaded file against its blob name (the etag): SHA-256 for LFS files (64 hex
/// digits), the git blob SHA-1 otherwise (40). A mismatching blob and its snapshot link are
/// removed.
fn verify(pointer: &Path) -> std::result::Result<(), String> {
    let blob = std::fs::canonicalize(pointer).map_err(|e| e.to_string())?;
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let got = match etag.len() {
        64 => hex(&hash_file::<sha2::Sha256>(&blob, None)?),
        40 => {
            let len = std::fs::metadata(&blob).map_err(|e| e.to_string())?.len();
            hex(&hash_file::<sha1::Sha1>(
                &blob,
                Some(format!("blob {len}\0").as_bytes()),
            )?)
        }
        _ => return Ok(()), // an etag that is no content hash: nothing to check against
    };
    if got == etag.to_ascii_lowercase() {
        return Ok(());
    }
    let _ = std::fs::remove_file(&blob);
    let _ = std::fs::remove_file(pointer);
    Err(format!(
        "the downloaded content does not match its hash (expected {etag}, got {got}): removed; \
         run again"
    ))
}

fn hash_file<D: Digest>(
    path: &Path,
    prefix: Option<&[u8]>,
) -> std::result::Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut h = D::new();
    if let Some(p) = prefix {
        h.update(p);
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_vec())
}

/// The files of a model a loader reads, at the repository root.
const MODEL_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "model.safetensors",
    "model.safetensors.index.json",
];

/// The shards a `model.safetensors.index.json` names.
fn shards(index: &Path) -> Result<Vec<String>> {
    let v: serde_json::Value = crate::error::read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config {
            path: index.to_path_buf(),
            msg: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// What a cached model snapshot lacks (empty when it is complete).
fn model_missing(snap: &Path) -> Vec<String> {
    let mut miss: Vec<String> = ["config.json", "tokenizer.json"]
        .iter()
        .filter(|f| !snap.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    let index = snap.join("model.safetensors.index.json");
    if snap.join("model.safetensors").is_file() {
    } else if index.is_file() {
        match shards(&index) {
            Ok(s) => miss.extend(s.into_iter().filter(|f| !snap.join(f).is_file())),
            Err(_) => miss.push("model.safetensors.index.json".into()),
        }
    } else {
        miss.push("model.safetensors".into());
    }
    miss
}

/// A model given as a local directory or a Hub id: the local path, or the snapshot folder
/// holding its config, tokenizer and safetensors weights (downloaded if needed).
pub fn model(spec: &Path) -> Result<PathBuf> {
    let s = spec.to_string_lossy();
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(id) = HubId::parse(&s, Kind::Model) else {
        return Ok(spec.to_path_buf()); // the loader reports the missing path
    };
    let hub = Hub::from_env();
    model_from(&hub, &id).map_err(|e| match e {
        Error::Hub {
            repo,
            kind: HubKind::NotFound,
            msg,
        } if !s.starts_with("hf://") => Error::Hub {
            repo,
            kind: HubKind::NotFound,
            msg: format!("no local directory of that name, and on the Hub: {msg}"),
        },
        e => e,
    })
}

/// [`model`] with an explicit client.
pub fn model_from(hub: &Hub, id: &HubId) -> Result<PathBuf> {
    if let Some(snap) = hub.cached_snapshot(id) {
        let missing = model_missing(&snap);
        if missing.is_empty() {
            return Ok(snap);
        }
        if hub.offline {
            return Err(hub.offline_error(id, &missing.join(", ")));
        }
    } else if hub.offline {
        return Err(hub.offline_error(id, "the model"));
    }
    let r = hub.remote(id)?;
    let has = |f: &str| r.files.iter().any(|x| x == f);
    if !has("model.safetensors") && !has("model.safetensors.index.json") {
        let gguf: Vec<&String> = r.files.iter().filter(|f| f.ends_with(".gguf")).collect();
        let hint = match gguf.first() {
            Some(g) => format!(
                "; for its GGUF files, `unlearn import hf://{}@{}/{g}`",
                id.repo, id.revision
            ),
            None => String::new(),
        };
        return Err(hub_err(
            id,
            HubKind::NotFound,
            format!(
                "has no safetensors weights (model.safetensors or model.safetensors.index.json; \
                 it has {}){hint}",
                preview(&r.files)
            ),
        ));
    }
    for f in MODEL_FILES.iter().filter(|f| has(f)) {
        r.fetch(f)?;
    }
    let index = r.snapshot().join("model.safetensors.index.json");
    if !has("model.safetensors") && index.is_file() {
        for s in shards(&index)? {
            r.fetch(&s)?;
        }
    }
    Ok(r.snapshot())
}

/// A file given as a local path or `hf://…` (see the module doc).
pub fn file(spec: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    match HubId::parse_file(&spec.to_string_lossy()) {
        Some((id, path)) => Hub::from_env().file(&id, &path),
        None => Ok(spec.to_path_buf()),
    }
}

/// A model in the cache only (no request): for defaults such as the sentence encoder.
pub fn cached_model(repo: &str) -> Option<PathBuf> {
    let id = HubId::parse(repo, Kind::Model)?;
    let snap = Hub::from_env().cached_snapshot(&id)?;
    model_missing(&snap).is_empty().then_some(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        let m = HubId::parse("HuggingFaceTB/SmolLM2-135M-Instruct", Kind::Model).unwrap();
        assert_eq!(
            (m.repo.as_str(), m.revision.as_str()),
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "main")
        );
        assert_eq!(m.folder(), "models--HuggingFaceTB--SmolLM2-135M-Instruct");
        let d = HubId::parse(
            "hf://datasets/locuslab/TOFU@refs/convert/parquet",
            Kind::Model,
        )
        .unwrap();
        assert_eq!(d.kind, Kind::Dataset);
        assert_eq!(d.revision, "refs/convert/parquet");
        assert_eq!(d.folder(), "datasets--locuslab--TOFU");
        for bad in [
            "model",
            "a/b/c",
            "../x",
            "./m",
            "/abs/path",
            "a/",
            "a/b@",
            "a/..@x",
            "a b/c",
        ] {
            assert!(HubId::parse(bad, Kind::Model).is_none(), "{bad}");
        }
        let (id, p) =
            HubId::parse_file("hf://datasets/open-unlearning/eval@v1/tofu/TOFU_EVAL.json").unwrap();
        assert_eq!(
            (id.kind, id.repo.as_str(), id.revision.as_str()),
            (Kind::Dataset, "open-unlearning/eval", "v1")
        );
        assert_eq!(p, "tofu/TOFU_EVAL.json");
        assert!(HubId::parse_file("org/name/file.json").is_none());
        assert!(HubId::parse_file("hf://org/name/../x").is_none());
        assert!(HubId::parse_file("hf://org/name").is_none());
    }

    #[test]
    fn verify_checks_git_and_lfs_hashes() {
        let d = tempfile::tempdir().unwrap();
        let body = b"{\"a\": 1}\n";
        // git blob SHA-1 of `body`, as `git hash-object` gives it
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", body.len()).as_bytes());
        h.update(body);
        let git: String = h.finalize().iter().map(|x| format!("{x:02x}")).collect();
        let lfs = crate::util::hash::sha256(body);
        for etag in [git, lfs] {
            let blob = d.path().join(&etag);
            std::fs::write(&blob, body).unwrap();
            let link = d.path().join("link");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&blob, &link).unwrap();
            assert!(verify(&link).is_ok());
            std::fs::write(&blob, &body[..4]).unwrap(); // truncated
            let e = verify(&link).unwrap_err();
            assert!(e.contains("does not match"), "{e}");
            assert!(!blob.exists() && !link.exists());
        }
    }
}
