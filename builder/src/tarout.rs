//! Deterministic tar writing of filesystem entries (GNU format, every header field set).

use std::io::Write;

use crate::tree::{Entry, Kind};

/// Writes entries as a tar stream. Hard links are written last, after every entry they can point
/// at: entries come in path order, where a link may sort before its target (`bin/ash` before
/// `bin/busybox`), and an extractor refuses a link to a name it has not seen yet.
pub struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
    links: Vec<Entry>,
}

impl<W: Write> std::fmt::Debug for TarWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TarWriter")
    }
}

impl<W: Write> TarWriter<W> {
    /// Wraps a writer.
    pub fn new(w: W) -> Self {
        let mut builder = tar::Builder::new(w);
        builder.mode(tar::HeaderMode::Complete);
        TarWriter {
            builder,
            links: Vec::new(),
        }
    }

    /// Appends one entry (a hard link is held back until [`TarWriter::finish`]).
    pub fn append(&mut self, e: &Entry) -> std::io::Result<()> {
        if matches!(e.kind, Kind::Hardlink(_)) {
            self.links.push(e.clone());
            return Ok(());
        }
        self.write(e)
    }

    fn write(&mut self, e: &Entry) -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode & 0o7777);
        h.set_uid(e.uid.into());
        h.set_gid(e.gid.into());
        h.set_mtime(e.mtime);
        h.set_size(0);
        let path = e.path.as_str();
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                self.builder
                    .append_data(&mut h, format!("{path}/"), std::io::empty())
            }
            Kind::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                self.builder.append_data(&mut h, path, &data[..])
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                self.builder.append_link(&mut h, path, t)
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(tar::EntryType::Link);
                self.builder.append_link(&mut h, path, t)
            }
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                h.set_entry_type(if matches!(e.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*ma)?;
                h.set_device_minor(*mi)?;
                self.builder.append_data(&mut h, path, std::io::empty())
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                self.builder.append_data(&mut h, path, std::io::empty())
            }
        }
    }

    /// Writes the held-back hard links and the end-of-archive blocks, and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        for e in std::mem::take(&mut self.links) {
            self.write(&e)?;
        }
        self.builder.into_inner()
    }
}

/// Serialises entries as a complete tar archive.
pub fn to_tar(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut w = TarWriter::new(Vec::new());
    for e in entries {
        w.append(e)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Limits, Tree};

    #[test]
    fn tar_round_trips_through_tree() {
        let entries = vec![
            Entry::dir("bin", 0o755, 1),
            Entry::file("bin/busybox", b"elf".to_vec(), 0o755, 2),
            Entry::symlink("bin/sh", "busybox", 3),
            Entry {
                path: "bin/ash".into(),
                kind: Kind::Hardlink("bin/busybox".into()),
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 2,
            },
            Entry {
                path: "dev/null".into(),
                kind: Kind::Char(1, 3),
                mode: 0o666,
                uid: 0,
                gid: 0,
                mtime: 0,
            },
        ];
        let tar = to_tar(&entries).unwrap();
        let mut t = Tree::new();
        t.apply_layer("test", &tar[..], Limits::default()).unwrap();
        let got: Vec<_> = t.into_entries();
        assert_eq!(got.len(), 6); // + implicit "dev"
        assert_eq!(
            got.iter().find(|e| e.path == "bin/sh").unwrap().kind,
            Kind::Symlink("busybox".into())
        );
        assert_eq!(
            got.iter().find(|e| e.path == "dev/null").unwrap().kind,
            Kind::Char(1, 3)
        );
        assert_eq!(to_tar(&entries).unwrap(), tar);
    }

    // Found writing the oci_layer fuzz target (its tar round trip): a tree's entries come in path
    // order, where `bin/ash` (a hard link) sorts before its target `bin/busybox`; written in that
    // order, the `tar` output held a link to a name not yet extracted, which extractors (and our
    // own reader) refuse.
    #[test]
    fn hard_links_follow_their_targets_in_path_order() {
        let mut t = Tree::new();
        t.insert(Entry::dir("bin", 0o755, 0));
        t.insert(Entry::file("bin/busybox", b"elf".to_vec(), 0o755, 0));
        t.insert(Entry {
            path: "bin/ash".into(),
            kind: Kind::Hardlink("bin/busybox".into()),
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
        });
        let entries: Vec<Entry> = t.entries().cloned().collect();
        assert_eq!(entries[1].path, "bin/ash");
        let tar = to_tar(&entries).unwrap();
        let mut again = Tree::new();
        again
            .apply_layer("test", &tar[..], Limits::default())
            .unwrap();
        assert_eq!(again.into_entries(), entries);
    }
}
