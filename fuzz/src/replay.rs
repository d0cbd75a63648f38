//! Stable replay of the checked-in corpus: every file of `fuzz/corpus/<target>/` through the same
//! function the fuzz target calls. Included with `#[path]` by each owning crate's
//! `tests/fuzz_corpus.rs`, so `cargo test --workspace` checks the corpus without nightly.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// `fuzz/corpus/<target>` of this repository, from the including crate's manifest directory.
pub fn corpus_dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir).join("../fuzz/corpus").join(target)
}

/// Runs every file of `target`'s corpus through `check`; panics naming each file that panicked.
/// An empty or missing corpus is a failure too (the corpus is part of the repository).
pub fn replay(manifest_dir: &str, target: &str, check: fn(&[u8])) -> usize {
    let dir = corpus_dir(manifest_dir, target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("reading the corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files fail: {}",
        failed.len(),
        files.len(),
        failed.join(", ")
    );
    files.len()
}

/// A fuzz target: its name and its check (as each `fuzz/src/<crate>.rs` lists them in `TARGETS`).
pub type Target = (&'static str, fn(&[u8]));

/// Replays every target of `targets` (an owning crate's `TARGETS`), printing how many corpus files each passed.
pub fn replay_all(manifest_dir: &str, targets: &[Target]) {
    for (target, check) in targets {
        let n = replay(manifest_dir, target, *check);
        eprintln!("{target}: {n} corpus files pass");
    }
}
