//! Byte streams assembled from borrowed slices, owned buffers and runs of zeros.
//!
//! Disk images are mostly the caller's kernel and initrd plus padding. Instead of copying
//! them into one large buffer, the writers describe an output as a list of [`Part`]s and
//! stream it to a file.

use std::borrow::Cow;
use std::io::{self, Write};

use sha2::{Digest, Sha256};

/// Size of the static buffer used to write runs of zeros.
const ZERO_CHUNK: usize = 64 * 1024;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// One piece of a byte stream.
#[derive(Debug, Clone)]
pub(crate) enum Part<'a> {
    /// Literal bytes, borrowed or owned.
    Bytes(Cow<'a, [u8]>),
    /// A run of zero bytes.
    Zeros(u64),
}

/// A byte stream made of parts, with its total length.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parts<'a> {
    parts: Vec<Part<'a>>,
    len: u64,
}

impl<'a> Parts<'a> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn push_borrowed(&mut self, bytes: &'a [u8]) {
        if !bytes.is_empty() {
            self.len += bytes.len() as u64;
            self.parts.push(Part::Bytes(Cow::Borrowed(bytes)));
        }
    }

    pub(crate) fn push_owned(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.len += bytes.len() as u64;
            self.parts.push(Part::Bytes(Cow::Owned(bytes)));
        }
    }

    pub(crate) fn push_zeros(&mut self, count: u64) {
        if count > 0 {
            self.len += count;
            self.parts.push(Part::Zeros(count));
        }
    }

    /// Calls `f` with every chunk of the stream in order (zeros in chunks of at most 64 KiB).
    pub(crate) fn for_each_chunk<E>(
        &self,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for part in &self.parts {
            match part {
                Part::Bytes(bytes) => f(bytes)?,
                Part::Zeros(count) => {
                    let mut remaining = *count;
                    while remaining > 0 {
                        let n = remaining.min(ZERO_CHUNK as u64) as usize;
                        f(&ZEROS[..n])?;
                        remaining -= n as u64;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the whole stream.
    pub(crate) fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        self.for_each_chunk(|chunk| w.write_all(chunk))
    }

    /// SHA-256 of the stream.
    pub(crate) fn sha256(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let _ = self.for_each_chunk::<()>(|chunk| {
            hasher.update(chunk);
            Ok(())
        });
        hasher.finalize().into()
    }
}

/// Writes `count` zero bytes.
pub(crate) fn write_zeros(w: &mut dyn Write, mut count: u64) -> io::Result<()> {
    while count > 0 {
        let n = count.min(ZERO_CHUNK as u64) as usize;
        w.write_all(&ZEROS[..n])?;
        count -= n as u64;
    }
    Ok(())
}

/// Rounds `value` up to a multiple of `align` (`align` > 0).
pub(crate) fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// A writer that counts bytes and hashes them with SHA-256 on the way through.
#[derive(Debug)]
pub(crate) struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Returns the inner writer, the byte count and the SHA-256 digest.
    pub(crate) fn finish(self) -> (W, u64, [u8; 32]) {
        (self.inner, self.written, self.hasher.finalize().into())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stream_in_order_with_padding() {
        let mut parts = Parts::new();
        parts.push_borrowed(b"abc");
        parts.push_zeros(5);
        parts.push_owned(b"xy".to_vec());
        parts.push_zeros(ZERO_CHUNK as u64 + 3);
        let mut out = Vec::new();
        parts.write_to(&mut out).unwrap();
        assert_eq!(parts.len(), out.len() as u64);
        assert_eq!(&out[..10], b"abc\0\0\0\0\0xy");
        assert!(out[10..].iter().all(|&b| b == 0));
        assert_eq!(parts.sha256(), <[u8; 32]>::from(Sha256::digest(&out)));
    }

    #[test]
    fn hashing_writer_counts_and_hashes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello").unwrap();
        write_zeros(&mut w, 100_000).unwrap();
        let (inner, n, digest) = w.finish();
        assert_eq!(n, 100_005);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&inner)));
    }
}
