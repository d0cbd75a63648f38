//! The checked-in fuzz corpus of kitfleet-cni-wg's targets (`fuzz/corpus/<target>/`), replayed on stable
//! through the very checks the fuzz targets run (`fuzz/src/cni.rs`), so CI keeps every corpus file
//! (and every past finding in it) passing without nightly. Fuzzing itself: `bash scripts/fuzz.sh`.

#[path = "../../fuzz/src/cni.rs"]
mod checks;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn fuzz_corpus_replays() {
    replay::replay_all(env!("CARGO_MANIFEST_DIR"), checks::TARGETS);
}
