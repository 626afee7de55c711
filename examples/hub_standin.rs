//! The tests' Hub stand-in (tests/common/hub.rs) as a program, for scripts/hub_cache_golden.py:
//! `cargo run --release --example hub_standin -- --seconds 300 models:org/tiny=DIR datasets:org/data=DIR`
//! serves every file under each DIR as that repository on 127.0.0.1 and prints its URL.
#[path = "../tests/common/hub.rs"]
mod hub;

fn main() {
    let mut repos = vec![];
    let mut secs = 300u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seconds" {
            secs = args
                .next()
                .and_then(|s| s.parse().ok())
                .expect("--seconds N");
            continue;
        }
        let (spec, dir) = a.split_once('=').expect("KIND:org/name=DIR");
        let (kind, id) = spec.split_once(':').expect("KIND:org/name=DIR");
        let kind = match kind {
            "models" => "models",
            "datasets" => "datasets",
            k => panic!("kind {k}: models or datasets"),
        };
        repos.push(hub::Repo::from_dir(kind, id, std::path::Path::new(dir)));
    }
    let s = hub::Standin::start(repos, std::time::Duration::from_secs(secs));
    println!("{}", s.url);
    std::thread::sleep(std::time::Duration::from_secs(secs));
}
