//! Fuzz checks for `kitfleet-builder`: OCI layer tar streams (hostile input) into the in-memory
//! tree, and what the builder then writes from that tree (LinuxKit's image filters, the newc
//! initrd, the `tar` output format).

use std::collections::BTreeMap;

use kitfleet_builder::assemble::{Mtime, image_entries};
use kitfleet_builder::cpio::NewcWriter;
use kitfleet_builder::tarout::to_tar;
use kitfleet_builder::tree::{Entry, Kind, Limits, Tree, normalize};

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this file, for the corpus replay.
pub const TARGETS: &[Target] = &[("oci_layer", oci_layer)];

const LAYER: &str = "sha256:f0220000000000000000000000000000000000000000000000000000000000fe";

/// The input is one uncompressed layer; it is applied twice (a layer over itself: whiteouts and
/// hard links then meet entries of a lower layer). Whatever is accepted must satisfy the tree's
/// invariants, and the builder's own `tar` output of it must read back into the same tree.
pub fn oci_layer(data: &[u8]) {
    let mut tree = Tree::new();
    for _ in 0..2 {
        if tree.apply_layer(LAYER, data, Limits::default()).is_err() {
            return;
        }
    }
    check_tree(&tree);
    let entries = image_entries(
        &tree,
        "",
        None,
        Mtime {
            generated: 0,
            clamp: None,
        },
    );
    let mut cpio = NewcWriter::new();
    for e in &entries {
        cpio.append(e).expect("a tree entry fits a newc archive");
    }
    cpio.finish().expect("a small newc archive finishes");
    let ours: Vec<Entry> = tree.entries().cloned().collect();
    let tar = to_tar(&ours).expect("writing a tar to memory");
    let mut again = Tree::new();
    again
        .apply_layer(LAYER, &tar[..], Limits::default())
        .unwrap_or_else(|e| panic!("the builder's own tar output is refused: {e}"));
    let back: Vec<Entry> = again.into_entries();
    assert_eq!(back, ours, "tar output does not read back as the same tree");
}

/// Paths normalised, every ancestor a directory, hard links pointing at regular files of the
/// tree, `total_size` the sum of file contents.
fn check_tree(tree: &Tree) {
    let mut total = 0u64;
    let by_path: BTreeMap<&str, &Entry> = tree.entries().map(|e| (e.path.as_str(), e)).collect();
    for e in tree.entries() {
        assert_eq!(
            normalize(&e.path).ok().flatten().as_deref(),
            Some(e.path.as_str()),
            "path {:?}",
            e.path
        );
        let mut anc = e.path.as_str();
        while let Some(i) = anc.rfind('/') {
            anc = &anc[..i];
            let kind = by_path.get(anc).map(|a| &a.kind);
            assert_eq!(
                kind,
                Some(&Kind::Dir),
                "{:?}: ancestor {anc:?} is {kind:?}",
                e.path
            );
        }
        match &e.kind {
            Kind::File(b) => total += b.len() as u64,
            Kind::Hardlink(t) => {
                let kind = by_path.get(t.as_str()).map(|a| &a.kind);
                assert!(
                    matches!(kind, Some(Kind::File(_))),
                    "{:?}: hard link to {t:?}, which is {kind:?}",
                    e.path
                );
            }
            _ => {}
        }
    }
    assert_eq!(tree.total_size(), total, "total_size");
}
