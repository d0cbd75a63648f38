//! A deterministic newc (`070701`) cpio writer and the compressed initrd members built from it.
//!
//! The kernel accepts concatenated compressed cpio archives, so an initrd is a sequence of gzip
//! members, each holding a complete newc archive. Splitting an image's entries into chunks at
//! fixed, content-determined points lets the chunks compress in parallel while the output stays
//! byte-identical whatever the thread count.

use std::io::Write;

use flate2::{Compression, GzBuilder};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tree::{Entry, Kind};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

/// Largest newc archive the builder writes: the format's 32-bit fields cannot describe more.
pub const MAX_NEWC: u64 = u32::MAX as u64;

/// Version of the member format (chunking and level rules); part of every member's cache key.
pub const MEMBER_FORMAT: &str = "m3";

/// Uncompressed bytes per chunk (one gzip member each).
pub const CHUNK_BYTES: u64 = 4 << 20;

/// Writes newc archives into a byte buffer.
#[derive(Debug, Default)]
pub struct NewcWriter {
    buf: Vec<u8>,
    ino: u32,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl NewcWriter {
    /// A new, empty archive.
    pub fn new() -> Self {
        NewcWriter::default()
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        e: &Entry,
        size: u64,
        dev: (u32, u32),
    ) -> Result<()> {
        if size > MAX_NEWC {
            return Err(Error::Cpio {
                reason: format!(
                    "{}: {size} bytes exceed newc's 4 GiB file-size field",
                    e.path
                ),
            });
        }
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let mtime = u32::try_from(e.mtime).unwrap_or(u32::MAX);
        write!(
            self.buf,
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            e.uid,
            e.gid,
            nlink,
            mtime,
            size,
            0,
            0,
            dev.0,
            dev.1,
            name.len() + 1,
            0
        )
        .expect("writing to a Vec cannot fail");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        pad4(&mut self.buf);
        Ok(())
    }

    /// Appends one entry. Hard links become relative symlinks, as LinuxKit's initrd writer does
    /// (linuxkit `src/cmd/linuxkit/initrd/initrd.go` `typeconv`).
    pub fn append(&mut self, e: &Entry) -> Result<()> {
        let perm = e.mode & 0o7777;
        match &e.kind {
            Kind::Dir => self.header(&e.path, S_IFDIR | perm, e, 0, (0, 0)),
            Kind::File(data) => {
                self.header(&e.path, S_IFREG | perm, e, data.len() as u64, (0, 0))?;
                self.buf.extend_from_slice(data);
                pad4(&mut self.buf);
                Ok(())
            }
            Kind::Symlink(t) => self.symlink(e, t),
            Kind::Hardlink(t) => {
                let rel = relative_link(&e.path, t);
                self.symlink(e, &rel)
            }
            Kind::Char(ma, mi) => self.header(&e.path, S_IFCHR | perm, e, 0, (*ma, *mi)),
            Kind::Block(ma, mi) => self.header(&e.path, S_IFBLK | perm, e, 0, (*ma, *mi)),
            Kind::Fifo => self.header(&e.path, S_IFIFO | perm, e, 0, (0, 0)),
        }
    }

    fn symlink(&mut self, e: &Entry, target: &str) -> Result<()> {
        self.header(&e.path, S_IFLNK | 0o777, e, target.len() as u64, (0, 0))?;
        self.buf.extend_from_slice(target.as_bytes());
        pad4(&mut self.buf);
        Ok(())
    }

    /// Writes the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let trailer = Entry::file("TRAILER!!!", Vec::new(), 0, 0);
        self.ino = u32::MAX - 1; // trailer ino is irrelevant; keep it fixed
        self.header("TRAILER!!!", 0, &trailer, 0, (0, 0))?;
        if self.buf.len() as u64 > MAX_NEWC {
            return Err(Error::Cpio {
                reason: format!("archive of {} bytes exceeds 4 GiB", self.buf.len()),
            });
        }
        Ok(self.buf)
    }
}

/// The path of `target` relative to the directory of `path` (both relative to one root).
pub fn relative_link(path: &str, target: &str) -> String {
    let from: Vec<&str> = path.split('/').collect();
    let from = &from[..from.len() - 1];
    let to: Vec<&str> = target.split('/').collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend_from_slice(&to[common..]);
    parts.join("/")
}

/// Files at least this large are sampled for compressibility.
const SAMPLE_MIN: usize = 64 << 10;

/// Whether `data` looks incompressible (already compressed, encrypted or random): the byte
/// distribution of 16 evenly spaced 4 KiB samples is within 6.25% of uniform by the collision
/// measure `256·Σc² ≤ 1.0625·n²`. Integer arithmetic only, so the decision (and therefore the
/// output) is the same on every machine.
pub fn incompressible(data: &[u8]) -> bool {
    const BLOCKS: usize = 16;
    const BS: usize = 4096;
    if data.len() < SAMPLE_MIN {
        return false;
    }
    let mut hist = [0u64; 256];
    let step = (data.len() - BS) / (BLOCKS - 1);
    for i in 0..BLOCKS {
        for &b in &data[i * step..i * step + BS] {
            hist[b as usize] += 1;
        }
    }
    let n = (BLOCKS * BS) as u64;
    let collisions: u64 = hist.iter().map(|c| c * c).sum();
    256 * collisions <= n * n + n * n / 16
}

/// A run of entries compressed as one gzip member.
#[derive(Debug)]
pub struct Chunk<'a> {
    /// The entries.
    pub entries: &'a [Entry],
    /// Whether its large files are incompressible (stored (gzip level 0): deflate's match search
    /// costs time there and saves nothing).
    pub incompressible: bool,
}

/// Splits entries into chunks of about [`CHUNK_BYTES`] at entry boundaries, also cutting where a
/// large file's compressibility differs from the chunk's. Depends only on the entries.
pub fn chunk(entries: &[Entry]) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    let (mut start, mut acc, mut class) = (0, 0u64, None::<bool>);
    for (i, e) in entries.iter().enumerate() {
        let this = match &e.kind {
            Kind::File(d) if d.len() >= SAMPLE_MIN => Some(incompressible(d)),
            _ => None,
        };
        if let (Some(t), Some(c)) = (this, class)
            && t != c
            && i > start
        {
            out.push(Chunk {
                entries: &entries[start..i],
                incompressible: c,
            });
            start = i;
            acc = 0;
            class = None;
        }
        if class.is_none() {
            class = this;
        }
        acc += e.size() + 110 + e.path.len() as u64;
        if acc >= CHUNK_BYTES {
            out.push(Chunk {
                entries: &entries[start..=i],
                incompressible: class.unwrap_or(false),
            });
            start = i + 1;
            acc = 0;
            class = None;
        }
    }
    if start < entries.len() {
        out.push(Chunk {
            entries: &entries[start..],
            incompressible: class.unwrap_or(false),
        });
    }
    out
}

/// Gzip-compresses `data` deterministically (no name, mtime 0) at `level`.
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzBuilder::new()
        .mtime(0)
        .write(Vec::with_capacity(data.len() / 2), Compression::new(level));
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Builds the compressed initrd member(s) for `entries`: one newc archive + gzip member per
/// chunk, compressed in parallel, concatenated in order. `total_newc` accumulates the
/// uncompressed size so the caller can enforce the 4 GiB bound over the whole initrd.
pub fn compressed_members(entries: &[Entry], level: u32) -> Result<(Vec<u8>, u64)> {
    let parts: Vec<Result<(Vec<u8>, u64)>> = chunk(entries)
        .into_par_iter()
        .map(|c| {
            let mut w = NewcWriter::new();
            for e in c.entries {
                w.append(e)?;
            }
            let raw = w.finish()?;
            let level = if c.incompressible { 0 } else { level };
            Ok((gzip(&raw, level), raw.len() as u64))
        })
        .collect();
    let mut out = Vec::new();
    let mut total = 0u64;
    for p in parts {
        let (gz, raw) = p?;
        out.extend_from_slice(&gz);
        total += raw;
    }
    Ok((out, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn compressibility_probe() {
        assert!(incompressible(&pseudo_random(1 << 20, 7)));
        let text: Vec<u8> = b"kernel initrd container namespace "
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect();
        assert!(!incompressible(&text));
        assert!(
            !incompressible(&pseudo_random(1000, 7)),
            "small files are not sampled"
        );
    }

    #[test]
    fn chunks_split_where_compressibility_changes() {
        let entries = vec![
            Entry::file("a", vec![b'x'; 100_000], 0o644, 0),
            Entry::file("b", pseudo_random(200_000, 3), 0o644, 0),
            Entry::file("c", pseudo_random(200_000, 4), 0o644, 0),
            Entry::file("d", vec![b'y'; 100_000], 0o644, 0),
        ];
        let c = chunk(&entries);
        let shape: Vec<(usize, bool)> = c
            .iter()
            .map(|c| (c.entries.len(), c.incompressible))
            .collect();
        assert_eq!(shape, vec![(1, false), (2, true), (1, false)]);
    }

    #[test]
    fn relative_links() {
        assert_eq!(relative_link("bin/sh", "bin/busybox"), "busybox");
        assert_eq!(
            relative_link("usr/bin/x", "bin/busybox"),
            "../../bin/busybox"
        );
        assert_eq!(relative_link("x", "a/b"), "a/b");
    }

    #[test]
    fn newc_layout_is_exact() {
        let mut w = NewcWriter::new();
        w.append(&Entry::file("a", b"hi".to_vec(), 0o644, 5))
            .unwrap();
        let out = w.finish().unwrap();
        let hdr = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(&hdr[..6], "070701");
        assert_eq!(&hdr[14..22], "000081A4"); // S_IFREG|0644
        assert_eq!(&hdr[54..62], "00000002"); // size
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..114], b"hi"); // name padded 110+2=112, data at 112
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn oversized_file_is_an_error_not_a_truncation() {
        let mut w = NewcWriter::new();
        let e = Entry::file("big", Vec::new(), 0o644, 0);
        let err = w
            .header("big", S_IFREG, &e, MAX_NEWC + 1, (0, 0))
            .unwrap_err();
        assert!(err.to_string().contains("exceed newc's 4 GiB"), "{err}");
    }

    #[test]
    fn chunking_is_deterministic_and_covers_everything() {
        let entries: Vec<Entry> = (0..50)
            .map(|i| Entry::file(format!("f{i:03}"), vec![i as u8; 300_000], 0o644, 0))
            .collect();
        let chunks = chunk(&entries);
        assert!(chunks.len() > 2);
        assert_eq!(chunks.iter().map(|c| c.entries.len()).sum::<usize>(), 50);
        assert!(chunks.iter().all(|c| !c.incompressible));
        let (a, _) = compressed_members(&entries, 6).unwrap();
        let (b, _) = compressed_members(&entries, 6).unwrap();
        assert_eq!(a, b);
        // The result decompresses (multi-member) to concatenated archives.
        let mut d = flate2::read::MultiGzDecoder::new(&a[..]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
        assert_eq!(
            raw.windows(10).filter(|w| *w == b"TRAILER!!!").count(),
            chunks.len()
        );
    }
}
