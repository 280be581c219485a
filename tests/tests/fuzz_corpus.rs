//! Replays the fuzz targets' committed inputs with plain `cargo test`: every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` (crash reproducers, kept once
//! fixed), and the generated seeds, through the same checks the cargo-fuzz targets run
//! (`fuzz/src/checks.rs`, included here). The fuzz crate itself is its own workspace, so
//! `cargo test --workspace` would not build it.
//!
//! `PIPE_RPC_WRITE_SEEDS=1 cargo test -p pipe-rpc-tests --test fuzz_corpus` (re)writes the
//! generated seeds into `fuzz/corpus/<target>/seed-*`.

use std::path::{Path, PathBuf};

#[allow(unreachable_pub, dead_code, missing_docs)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

#[global_allocator]
static ALLOC: checks::Counting = checks::Counting;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted (none if the folder is missing).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.expect("a directory entry").path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `check` on every committed input of `target` and on its seeds; fails naming every
/// input that fails.
fn replay(target: &str, check: fn(&[u8])) {
    assert!(checks::counting_installed(), "the counting allocator measures this binary");
    let mut failed = Vec::new();
    let mut ran = 0;
    let seeds: Vec<(String, Vec<u8>)> =
        checks::seeds().into_iter().filter(|(t, ..)| *t == target).map(|(_, name, bytes)| (name, bytes)).collect();
    assert!(!seeds.is_empty(), "{target} has seeds");
    let mut named: Vec<(String, Vec<u8>)> =
        seeds.into_iter().map(|(name, bytes)| (format!("generated seed {name}"), bytes)).collect();
    for kind in ["corpus", "regressions"] {
        for path in inputs(kind, target) {
            let bytes = std::fs::read(&path).expect("readable input");
            named.push((path.display().to_string(), bytes));
        }
    }
    for (name, bytes) in &named {
        ran += 1;
        if std::panic::catch_unwind(|| check(bytes)).is_err() {
            failed.push(name.clone());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {ran} {target} inputs failed (panics above):\n{}",
        failed.len(),
        failed.join("\n")
    );
    println!("{target}: {ran} inputs replayed");
}

#[test]
fn server_frames_corpus_and_regressions() {
    replay("server_frames", checks::server_frames);
}

#[test]
fn client_frames_corpus_and_regressions() {
    replay("client_frames", checks::client_frames);
}

#[test]
fn engine_pair_corpus_and_regressions() {
    replay("engine_pair", checks::engine_pair);
}

/// The seeds are in the corpus, so the fuzzer starts from them; with
/// `PIPE_RPC_WRITE_SEEDS=1` they are written there.
#[test]
fn seeds_are_in_the_corpus() {
    let write = std::env::var_os("PIPE_RPC_WRITE_SEEDS").is_some_and(|v| v == "1");
    let mut missing = Vec::new();
    for (target, name, bytes) in checks::seeds() {
        let path = fuzz_dir().join("corpus").join(target).join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("corpus folder");
            std::fs::write(&path, &bytes).expect("seed written");
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "seeds missing or stale (PIPE_RPC_WRITE_SEEDS=1 cargo test -p pipe-rpc-tests --test fuzz_corpus):\n{}",
        missing.join("\n")
    );
}
