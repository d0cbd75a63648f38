//! Byte streams assembled from borrowed slices, owned buffers and runs of zeros.
//!
//! Disk images are mostly the caller's kernel and initrd plus padding. Instead of copying
//! them into one large buffer, the writers describe an output as a list of [`Part`]s and
//! stream it to a file.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};

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
    pub(crate) fn write_to(&self, w: &mut dyn Sink) -> io::Result<()> {
        for part in &self.parts {
            match part {
                Part::Bytes(bytes) => w.write_all(bytes)?,
                Part::Zeros(count) => w.zeros(*count)?,
            }
        }
        Ok(())
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

/// Where the disk writers stream to: a writer that may store runs of zeros as holes.
pub(crate) trait Sink: Write {
    /// Appends `count` zero bytes.
    fn zeros(&mut self, count: u64) -> io::Result<()> {
        write_plain_zeros(self, count)
    }
}

impl Sink for Vec<u8> {}

fn write_plain_zeros<W: Write + ?Sized>(w: &mut W, mut count: u64) -> io::Result<()> {
    while count > 0 {
        let n = count.min(ZERO_CHUNK as u64) as usize;
        w.write_all(&ZEROS[..n])?;
        count -= n as u64;
    }
    Ok(())
}

/// Appends `count` zero bytes.
pub(crate) fn write_zeros(w: &mut dyn Sink, count: u64) -> io::Result<()> {
    w.zeros(count)
}

/// Rounds `value` up to a multiple of `align` (`align` > 0).
pub(crate) fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// Zero runs at least this long become holes in the output file.
const HOLE_MIN: u64 = 1 << 20;

/// A file sink that hashes (SHA-256) and counts everything on the way through and leaves
/// long runs of zeros as holes (sparse file). The digest covers the zeros all the same.
#[derive(Debug)]
pub(crate) struct FileSink<'f> {
    out: BufWriter<&'f File>,
    hasher: Sha256,
    written: u64,
}

impl<'f> FileSink<'f> {
    pub(crate) fn new(file: &'f File) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Flushes, gives the file its full length (a trailing hole has none yet) and returns
    /// the byte count and the SHA-256 digest.
    pub(crate) fn finish(mut self) -> io::Result<(u64, [u8; 32])> {
        self.out.flush()?;
        self.out.get_ref().set_len(self.written)?;
        Ok((self.written, self.hasher.finalize().into()))
    }
}

impl Write for FileSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Sink for FileSink<'_> {
    fn zeros(&mut self, count: u64) -> io::Result<()> {
        if count < HOLE_MIN {
            return write_plain_zeros(self, count);
        }
        let mut remaining = count;
        while remaining > 0 {
            let n = remaining.min(ZERO_CHUNK as u64) as usize;
            self.hasher.update(&ZEROS[..n]);
            remaining -= n as u64;
        }
        self.out.flush()?;
        let offset = i64::try_from(count).map_err(io::Error::other)?;
        self.out.get_mut().seek(SeekFrom::Current(offset))?;
        self.written += count;
        Ok(())
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
    fn file_sink_hashes_zeros_and_leaves_holes() {
        let file = tempfile::tempfile().unwrap();
        let mut sink = FileSink::new(&file);
        sink.write_all(b"hello").unwrap();
        sink.zeros(100).unwrap();
        sink.zeros(3 * HOLE_MIN).unwrap();
        sink.write_all(b"middle").unwrap();
        sink.zeros(2 * HOLE_MIN).unwrap();
        let (n, digest) = sink.finish().unwrap();
        let mut expected = b"hello".to_vec();
        expected.resize(105 + 3 * HOLE_MIN as usize, 0);
        expected.extend_from_slice(b"middle");
        expected.resize(expected.len() + 2 * HOLE_MIN as usize, 0);
        assert_eq!(n, expected.len() as u64);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&expected)));
        let mut back = Vec::new();
        (&file).seek(SeekFrom::Start(0)).unwrap();
        io::Read::read_to_end(&mut &file, &mut back).unwrap();
        assert!(back == expected, "file content differs");
        use std::os::unix::fs::MetadataExt;
        let allocated = file.metadata().unwrap().blocks() * 512;
        assert!(
            allocated < 2 * HOLE_MIN,
            "{allocated} bytes allocated: zero runs were written"
        );
    }
}
