//! A stand-in for the Hugging Face Hub on 127.0.0.1, for tests of the Hub client (and, through
//! examples/hub_standin.rs, for scripts/hub_cache_golden.py, which runs Python's
//! `huggingface_hub` against it).
//!
//! It serves the routes the clients use, with the Hub's headers:
//! - `GET /api/{models|datasets}/org/name[/revision/REV]`: id, sha, siblings;
//! - `GET|HEAD /[datasets/]org/name/resolve/REV/PATH`: the file, with `X-Repo-Commit`, `ETag`
//!   (the git blob SHA-1) and, for LFS files (.safetensors, .parquet, .gguf, .bin), a 302 to
//!   `http://localhost:PORT/lfs-cdn/SHA256` (another host, as the Hub's CDN is) with `X-Linked-Etag` (the SHA-256) and `X-Linked-Size`, as the Hub does;
//!   `Range: bytes=A-[B]` gives 206 with `Content-Range`.
//!
//! Errors as the Hub gives them: an unknown repository is 401 with `X-Error-Code: RepoNotFound`;
//! a gated one without a token 401 (`X-Error-Code: GatedRepo`), with a wrong token 403; an
//! unknown file 404 (`EntryNotFound`). Every request is logged; faults can be injected (a body
//! cut short after half its bytes, the connection then closed).
#![allow(dead_code)]
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha1::Digest;

/// A repository the stand-in serves.
#[derive(Clone)]
pub struct Repo {
    /// "models" or "datasets".
    pub kind: &'static str,
    pub id: String,
    pub commit: String,
    pub files: Vec<(String, Vec<u8>)>,
    /// A gated repository: requests need `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn git_sha1(body: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", body.len()).as_bytes());
    h.update(body);
    hex(&h.finalize())
}

pub fn sha256(body: &[u8]) -> String {
    hex(&sha2::Sha256::digest(body))
}

pub fn is_lfs(path: &str) -> bool {
    [".safetensors", ".parquet", ".gguf", ".bin"]
        .iter()
        .any(|e| path.ends_with(e))
}

impl Repo {
    /// Every file under `dir` (recursively), at a commit derived from the id and the contents.
    pub fn from_dir(kind: &'static str, id: &str, dir: &Path) -> Repo {
        fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            let mut es: Vec<_> = std::fs::read_dir(d).unwrap().flatten().collect();
            es.sort_by_key(|e| e.path());
            for e in es {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut files = vec![];
        walk(dir, dir, &mut files);
        Repo::new(kind, id, files)
    }

    pub fn new(kind: &'static str, id: &str, files: Vec<(String, Vec<u8>)>) -> Repo {
        let mut h = sha1::Sha1::new();
        h.update(id.as_bytes());
        for (p, b) in &files {
            h.update(p.as_bytes());
            h.update(b);
        }
        Repo {
            kind,
            id: id.into(),
            commit: hex(&h.finalize()),
            files,
            token: None,
        }
    }

    /// The etag a client names the blob by: SHA-256 for LFS files, git SHA-1 otherwise.
    pub fn etag(&self, path: &str) -> Option<String> {
        let (_, b) = self.files.iter().find(|(p, _)| p == path)?;
        Some(if is_lfs(path) { sha256(b) } else { git_sha1(b) })
    }
}

#[derive(Default)]
struct State {
    repos: Vec<Repo>,
    log: Vec<String>,
    /// file path → number of GETs of its body still to cut short
    truncate: HashMap<String, usize>,
}

/// The running stand-in; stopped when dropped.
pub struct Standin {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Standin {
    /// Serve `repos` on 127.0.0.1 (a free port) for at most `limit`.
    pub fn start(repos: Vec<Repo>, limit: Duration) -> Standin {
        Standin::start_on(repos, limit, 0)
    }

    pub fn start_on(repos: Vec<Repo>, limit: Duration, port: u16) -> Standin {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repos,
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, base) = (state.clone(), stop.clone(), url.clone());
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !sp.load(Ordering::Relaxed) && t0.elapsed() < limit {
                match l.accept() {
                    Ok((s, _)) => {
                        let (st, base) = (st.clone(), base.clone());
                        std::thread::spawn(move || {
                            let _ = serve(s, &st, &base);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Standin {
            url,
            state,
            stop,
            handle: Some(handle),
        }
    }

    /// Requests so far ("GET /path"), and clear the log.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }

    /// Cut the next `times` body transfers of `path` short.
    pub fn truncate(&self, path: &str, times: usize) {
        self.state
            .lock()
            .unwrap()
            .truncate
            .insert(path.to_string(), times);
    }

    pub fn add_repo(&self, repo: Repo) {
        self.state.lock().unwrap().repos.push(repo);
    }

    pub fn set_token(&self, repo: &str, token: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        for r in s.repos.iter_mut().filter(|r| r.id == repo) {
            r.token = token.map(String::from);
        }
    }

    pub fn repo(&self, id: &str) -> Repo {
        let s = self.state.lock().unwrap();
        s.repos.iter().find(|r| r.id == id).unwrap().clone()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Req {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
}

fn read_req(s: &TcpStream) -> Option<Req> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut it = line.split_whitespace();
    let (method, target) = (it.next()?.to_string(), it.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Some(Req {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
    })
}

fn respond(
    mut s: &TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
    head_only: bool,
    cut: bool,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    out += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(out.as_bytes())?;
    if !head_only {
        let n = if cut { body.len() / 2 } else { body.len() };
        s.write_all(&body[..n])?;
    }
    s.flush()?;
    if cut {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

fn h(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn error(s: &TcpStream, status: &str, code: &str, head: bool) -> std::io::Result<()> {
    let body = format!("{{\"error\":\"{code}\"}}");
    respond(
        s,
        status,
        &[
            h("X-Error-Code", code),
            h("X-Error-Message", code),
            h("Content-Type", "application/json"),
        ],
        body.as_bytes(),
        head,
        false,
    )
}

/// `bytes=A-[B]` → (A, B inclusive).
fn range(hdr: Option<&String>, len: usize) -> Option<(usize, usize)> {
    let r = hdr?.strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        b.parse::<usize>().ok()?.min(len.saturating_sub(1))
    };
    Some((a, b))
}

fn serve(s: TcpStream, st: &Mutex<State>, base: &str) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let Some(req) = read_req(&s) else {
        return Ok(());
    };
    st.lock()
        .unwrap()
        .log
        .push(format!("{} {}", req.method, req.path));
    let head = req.method == "HEAD";
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    // LFS content by hash
    if parts.len() == 2 && parts[0] == "lfs-cdn" {
        let found = {
            let g = st.lock().unwrap();
            g.repos
                .iter()
                .flat_map(|r| r.files.iter())
                .find(|(p, b)| is_lfs(p) && sha256(b) == parts[1])
                .cloned()
        };
        return match found {
            Some((p, b)) => send_body(&s, st, &req, &p, &b, vec![], head),
            None => error(&s, "404 Not Found", "EntryNotFound", head),
        };
    }
    // /api/{kind}/org/name[/revision/REV]
    if parts.first() == Some(&"api") && parts.len() >= 4 {
        let (kind, id) = (parts[1], format!("{}/{}", parts[2], parts[3]));
        let (rev, tree) = match parts.get(4..) {
            Some(["revision", rest @ ..]) if !rest.is_empty() => (rest.join("/"), None),
            // /tree/REV[/PATH] (huggingface_hub >= 1.0 lists a snapshot with it)
            Some(["tree", rev, rest @ ..]) => (rev.replace("%2F", "/"), Some(rest.join("/"))),
            _ => ("main".into(), None),
        };
        let repo = match find(st, kind, &id, &rev, &req) {
            Ok(r) => r,
            Err((status, code)) => return error(&s, status, code, head),
        };
        if let Some(under) = tree {
            let body = tree_listing(
                &repo,
                &under,
                req.query.contains("recursive=True") || req.query.contains("recursive=true"),
            );
            return respond(
                &s,
                "200 OK",
                &[h("Content-Type", "application/json")],
                body.to_string().as_bytes(),
                head,
                false,
            );
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|(p, _)| serde_json::json!({ "rfilename": p }))
            .collect();
        let body = serde_json::json!({
            "_id": repo.commit[..24],
            "id": repo.id,
            "modelId": repo.id,
            "sha": repo.commit,
            "private": false,
            "gated": repo.token.is_some().then_some("manual"),
            "disabled": false,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": siblings,
        });
        return respond(
            &s,
            "200 OK",
            &[h("Content-Type", "application/json")],
            body.to_string().as_bytes(),
            head,
            false,
        );
    }
    // [datasets/]org/name/resolve/REV/PATH
    let (kind, rest) = if parts.first() == Some(&"datasets") {
        ("datasets", &parts[1..])
    } else {
        ("models", &parts[..])
    };
    if rest.len() >= 5 && rest[2] == "resolve" {
        let id = format!("{}/{}", rest[0], rest[1]);
        let rev = rest[3].replace("%2F", "/");
        let file = rest[4..].join("/");
        let repo = match find(st, kind, &id, &rev, &req) {
            Ok(r) => r,
            Err((status, code)) => return error(&s, status, code, head),
        };
        let Some((_, body)) = repo.files.iter().find(|(p, _)| *p == file) else {
            return error(&s, "404 Not Found", "EntryNotFound", head);
        };
        let mut hdrs = vec![
            h("X-Repo-Commit", &repo.commit),
            h("ETag", format!("\"{}\"", git_sha1(body))),
        ];
        if is_lfs(&file) {
            let sha = sha256(body);
            hdrs.push(h("X-Linked-Etag", format!("\"{sha}\"")));
            hdrs.push(h("X-Linked-Size", body.len()));
            // another host name for the same server, as the Hub's CDN is another host
            let cdn = base.replace("127.0.0.1", "localhost");
            hdrs.push(h("Location", format!("{cdn}/lfs-cdn/{sha}")));
            return respond(&s, "302 Found", &hdrs, b"", head, false);
        }
        return send_body(&s, st, &req, &file, body, hdrs, head);
    }
    error(&s, "404 Not Found", "NotFound", head)
}

/// `/api/…/tree/REV/PATH`: the files (and folders) under PATH, as the Hub lists them.
fn tree_listing(repo: &Repo, under: &str, recursive: bool) -> serde_json::Value {
    let prefix = if under.is_empty() {
        String::new()
    } else {
        format!("{under}/")
    };
    let mut out = vec![];
    let mut dirs = std::collections::BTreeSet::new();
    for (p, b) in &repo.files {
        let Some(rel) = p.strip_prefix(&prefix) else {
            continue;
        };
        let comps: Vec<&str> = rel.split('/').collect();
        for i in 1..comps.len() {
            if recursive || i == 1 {
                dirs.insert(format!("{prefix}{}", comps[..i].join("/")));
            }
        }
        if comps.len() > 1 && !recursive {
            continue;
        }
        let mut e =
            serde_json::json!({ "type": "file", "oid": git_sha1(b), "size": b.len(), "path": p });
        if is_lfs(p) {
            e["lfs"] = serde_json::json!({ "oid": sha256(b), "size": b.len(), "pointerSize": 134 });
        }
        out.push(e);
    }
    for d in dirs {
        out.push(serde_json::json!({ "type": "directory", "oid": git_sha1(d.as_bytes()), "size": 0, "path": d }));
    }
    serde_json::Value::Array(out)
}

fn find(
    st: &Mutex<State>,
    kind: &str,
    id: &str,
    rev: &str,
    req: &Req,
) -> Result<Repo, (&'static str, &'static str)> {
    let g = st.lock().unwrap();
    let Some(r) = g.repos.iter().find(|r| r.kind == kind && r.id == id) else {
        return Err(("401 Unauthorized", "RepoNotFound"));
    };
    if let Some(t) = &r.token {
        match req.headers.get("authorization") {
            None => return Err(("401 Unauthorized", "GatedRepo")),
            Some(a) if a != &format!("Bearer {t}") => return Err(("403 Forbidden", "GatedRepo")),
            _ => {}
        }
    }
    if rev != "main" && rev != r.commit {
        return Err(("404 Not Found", "RevisionNotFound"));
    }
    Ok(r.clone())
}

fn send_body(
    s: &TcpStream,
    st: &Mutex<State>,
    req: &Req,
    file: &str,
    body: &[u8],
    mut hdrs: Vec<(String, String)>,
    head: bool,
) -> std::io::Result<()> {
    hdrs.push(h("Accept-Ranges", "bytes"));
    hdrs.push(h("Content-Type", "application/octet-stream"));
    let r = range(req.headers.get("range"), body.len());
    let whole = r.is_none_or(|(a, b)| b + 1 - a > 1);
    let cut = !head && whole && {
        let mut g = st.lock().unwrap();
        match g.truncate.get_mut(file) {
            Some(n) if *n > 0 && body.len() > 1 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    match r {
        Some((a, b)) if a < body.len() => {
            hdrs.push(h("Content-Range", format!("bytes {a}-{b}/{}", body.len())));
            respond(s, "206 Partial Content", &hdrs, &body[a..=b], head, cut)
        }
        Some(_) => respond(s, "416 Range Not Satisfiable", &hdrs, b"", head, false),
        None => respond(s, "200 OK", &hdrs, body, head, cut),
    }
}
