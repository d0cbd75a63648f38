//! Unified kernel image (UKI) assembly: a systemd-stub PE32+ image extended with
//! `.osrel`, `.cmdline`, `.linux` and `.initrd` sections.
//!
//! The stub (Debian's `systemd-boot-efi` `linuxx64.efi.stub`) is input data. Its headers are
//! rewritten: new section headers go into the header slack, the COFF timestamp and symbol
//! table pointer are zeroed (the trailing COFF symbol table is dropped), a signature is
//! dropped (it could not cover the new sections), and `SizeOfImage`,
//! `SizeOfInitializedData` and `CheckSum` are recomputed. Section virtual addresses follow
//! the stub's `SectionAlignment`, file offsets its `FileAlignment`.

use super::content::{Parts, align_up};
use super::error::{Error, Result};

/// Where Debian's systemd-boot-efi installs the x86-64 UKI stub.
pub const DEFAULT_STUB_PATH: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

const IMAGE_FILE_MACHINE_AMD64: u16 = 0x8664;
const PE32_PLUS_MAGIC: u16 = 0x20b;
const SECTION_HEADER_LEN: usize = 40;
/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
const DATA_SECTION_FLAGS: u32 = 0x0000_0040 | 0x4000_0000;
/// Offset of `CheckSum` inside the optional header.
const OPT_CHECKSUM: usize = 64;
/// Largest SectionAlignment accepted.
const MAX_ALIGNMENT: u64 = 1 << 20;
/// Names of the sections this module adds, in file order.
pub(crate) const UKI_SECTIONS: [&str; 4] = [".osrel", ".cmdline", ".linux", ".initrd"];

/// The parsed headers of a stub.
#[derive(Debug, Clone)]
pub(crate) struct StubInfo {
    coff: usize,
    opt: usize,
    section_table: usize,
    sections: u16,
    section_alignment: u64,
    file_alignment: u64,
    size_of_headers: u64,
    /// End of the last section's raw data: everything after it is dropped.
    raw_end: u64,
    /// First virtual address past every existing section and `SizeOfImage`.
    va_end: u64,
}

/// Placement of one new section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SectionPlan {
    pub(crate) name: [u8; 8],
    pub(crate) virtual_address: u64,
    pub(crate) virtual_size: u64,
    pub(crate) raw_pointer: u64,
    pub(crate) raw_size: u64,
}

/// Where the new sections go, and the resulting sizes.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) sections: Vec<SectionPlan>,
    pub(crate) size_of_image: u64,
    pub(crate) file_len: u64,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn stub_err(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Stub {
        field,
        reason: reason.into(),
    }
}

fn section_name(name: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

/// Parses and checks the headers of a PE32+ x86-64 EFI stub.
pub(crate) fn parse_stub(stub: &[u8]) -> Result<StubInfo> {
    let (info, names) = parse_pe(stub)?;
    for wanted in UKI_SECTIONS {
        if names.contains(&section_name(wanted)) {
            return Err(stub_err(
                "section table",
                format!("the stub already has a {wanted} section"),
            ));
        }
    }
    Ok(info)
}

/// Checks that prebuilt bytes are a PE32+ x86-64 image with a `.linux` section (a UKI).
pub(crate) fn check_uki(uki: &[u8]) -> Result<()> {
    let uki_err = |e: Error| match e {
        Error::Stub { field, reason } => Error::Uki { field, reason },
        other => other,
    };
    let (_, names) = parse_pe(uki).map_err(uki_err)?;
    if !names.contains(&section_name(".linux")) {
        return Err(Error::Uki {
            field: "section table",
            reason: "no .linux section: not a unified kernel image".into(),
        });
    }
    Ok(())
}

fn parse_pe(stub: &[u8]) -> Result<(StubInfo, Vec<[u8; 8]>)> {
    let truncated = |field| stub_err(field, format!("file is truncated ({} bytes)", stub.len()));
    if stub.get(..2) != Some(b"MZ") {
        return Err(stub_err("e_magic", "no MZ signature: not a PE image"));
    }
    let pe = u32_at(stub, 0x3c).ok_or_else(|| truncated("e_lfanew"))? as usize;
    if stub.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(stub_err(
            "e_lfanew",
            format!("no PE signature at offset {pe:#x}"),
        ));
    }
    let coff = pe + 4;
    let machine = u16_at(stub, coff).ok_or_else(|| truncated("Machine"))?;
    if machine != IMAGE_FILE_MACHINE_AMD64 {
        return Err(stub_err(
            "Machine",
            format!("{machine:#06x} is not x86-64 (0x8664)"),
        ));
    }
    let sections = u16_at(stub, coff + 2).ok_or_else(|| truncated("NumberOfSections"))?;
    let opt_size = u16_at(stub, coff + 16).ok_or_else(|| truncated("SizeOfOptionalHeader"))?;
    let opt = coff + 20;
    let magic = u16_at(stub, opt).ok_or_else(|| truncated("Magic"))?;
    if magic != PE32_PLUS_MAGIC {
        return Err(stub_err(
            "Magic",
            format!("{magic:#06x} is not PE32+ (0x20b)"),
        ));
    }
    if (opt_size as usize) < 112 + 5 * 8 {
        return Err(stub_err(
            "SizeOfOptionalHeader",
            format!("{opt_size} is too small"),
        ));
    }
    let section_alignment =
        u64::from(u32_at(stub, opt + 32).ok_or_else(|| truncated("SectionAlignment"))?);
    let file_alignment =
        u64::from(u32_at(stub, opt + 36).ok_or_else(|| truncated("FileAlignment"))?);
    for (field, value) in [
        ("SectionAlignment", section_alignment),
        ("FileAlignment", file_alignment),
    ] {
        // The PE format allows FileAlignment up to 64 KiB; larger section alignments than
        // 1 MiB only waste memory and would make a corrupt stub allocate without bound.
        if !value.is_power_of_two() || !(16..=MAX_ALIGNMENT).contains(&value) {
            return Err(stub_err(
                field,
                format!("{value:#x} is not a power of two from 16 to {MAX_ALIGNMENT:#x}"),
            ));
        }
    }
    if file_alignment > 0x10000 {
        return Err(stub_err(
            "FileAlignment",
            format!("{file_alignment:#x} exceeds the PE maximum of 0x10000"),
        ));
    }
    let size_of_image = u64::from(u32_at(stub, opt + 56).ok_or_else(|| truncated("SizeOfImage"))?);
    let size_of_headers =
        u64::from(u32_at(stub, opt + 60).ok_or_else(|| truncated("SizeOfHeaders"))?);
    let section_table = opt + opt_size as usize;
    let mut raw_end = size_of_headers;
    let mut va_end = size_of_image;
    let mut names = Vec::with_capacity(sections as usize);
    for i in 0..sections as usize {
        let h = section_table + i * SECTION_HEADER_LEN;
        let hdr = stub
            .get(h..h + SECTION_HEADER_LEN)
            .ok_or_else(|| truncated("section table"))?;
        let mut name = [0u8; 8];
        name.copy_from_slice(&hdr[..8]);
        let vsize = u64::from(u32_at(hdr, 8).unwrap_or(0));
        let va = u64::from(u32_at(hdr, 12).unwrap_or(0));
        let raw_size = u64::from(u32_at(hdr, 16).unwrap_or(0));
        let raw_ptr = u64::from(u32_at(hdr, 20).unwrap_or(0));
        if raw_size > 0 {
            raw_end = raw_end.max(raw_ptr + raw_size);
        }
        va_end = va_end.max(va + vsize.max(raw_size));
        names.push(name);
    }
    if raw_end > stub.len() as u64 {
        return Err(truncated("section data"));
    }
    let info = StubInfo {
        coff,
        opt,
        section_table,
        sections,
        section_alignment,
        file_alignment,
        size_of_headers,
        raw_end,
        va_end,
    };
    Ok((info, names))
}

/// Places sections of the given sizes after the stub's own. Pure: only sizes go in, so
/// the 32-bit limits can be checked (and tested) without the data.
pub(crate) fn plan_layout(info: &StubInfo, new: &[(&str, u64)]) -> Result<Layout> {
    let table_end = info.section_table + (info.sections as usize + new.len()) * SECTION_HEADER_LEN;
    if table_end as u64 > info.size_of_headers {
        return Err(stub_err(
            "SizeOfHeaders",
            format!(
                "{:#x} bytes of headers leave no room for {} more section headers (need {table_end:#x})",
                info.size_of_headers,
                new.len()
            ),
        ));
    }
    let mut va = align_up(info.va_end, info.section_alignment);
    let mut raw = align_up(info.raw_end, info.file_alignment);
    let mut sections = Vec::with_capacity(new.len());
    for &(name, size) in new {
        let raw_size = align_up(size, info.file_alignment);
        sections.push(SectionPlan {
            name: section_name(name),
            virtual_address: va,
            virtual_size: size,
            raw_pointer: raw,
            raw_size,
        });
        va = align_up(va + size.max(1), info.section_alignment);
        raw += raw_size;
    }
    let layout = Layout {
        sections,
        size_of_image: va,
        file_len: raw,
    };
    let limit = u64::from(u32::MAX);
    if layout.size_of_image > limit || layout.file_len > limit {
        let size_of = |n: &str| {
            new.iter()
                .find(|(name, _)| *name == n)
                .map_or(0, |(_, s)| *s)
        };
        return Err(Error::UkiTooLarge {
            size: layout.size_of_image.max(layout.file_len),
            stub: info.raw_end,
            kernel: size_of(".linux"),
            initrd: size_of(".initrd"),
            limit,
        });
    }
    Ok(layout)
}

/// The PE checksum (ImageHlp's algorithm): 16-bit one's-complement-style sum of the file
/// with the CheckSum field taken as zero, plus the file length.
#[derive(Debug, Default)]
pub(crate) struct PeChecksum {
    sum: u32,
    pending: Option<u8>,
}

impl PeChecksum {
    fn add_word(&mut self, word: u16) {
        self.sum += u32::from(word);
        self.sum = (self.sum & 0xffff) + (self.sum >> 16);
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        if let Some(low) = self.pending.take() {
            match data.split_first() {
                Some((&high, rest)) => {
                    self.add_word(u16::from_le_bytes([low, high]));
                    data = rest;
                }
                None => {
                    self.pending = Some(low);
                    return;
                }
            }
        }
        let mut words = data.chunks_exact(2);
        for w in &mut words {
            self.add_word(u16::from_le_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            self.pending = Some(*last);
        }
    }

    pub(crate) fn finish(mut self, file_len: u64) -> u32 {
        if let Some(low) = self.pending.take() {
            self.add_word(u16::from(low));
        }
        let folded = (self.sum & 0xffff) + (self.sum >> 16);
        folded.wrapping_add(file_len as u32)
    }
}

/// Assembles a UKI from the stub and the four sections (in [`UKI_SECTIONS`] order). An
/// empty section (no initrd, no command line) is left out, as ukify does.
pub(crate) fn assemble<'a>(stub: &'a [u8], contents: [&'a [u8]; 4]) -> Result<Parts<'a>> {
    let info = parse_stub(stub)?;
    let present: Vec<(&str, &[u8])> = UKI_SECTIONS
        .iter()
        .zip(contents)
        .filter(|(_, c)| !c.is_empty())
        .map(|(n, c)| (*n, c))
        .collect();
    let sizes: Vec<(&str, u64)> = present.iter().map(|(n, c)| (*n, c.len() as u64)).collect();
    let layout = plan_layout(&info, &sizes)?;

    let mut head = stub[..info.raw_end as usize].to_vec();
    head.resize(align_up(info.raw_end, info.file_alignment) as usize, 0);
    rewrite_headers(&mut head, &info, &layout)?;

    // Zero padding adds nothing to the checksum; every section starts at an even offset,
    // so an odd-length section only needs its last byte paired with a zero.
    let mut sum = PeChecksum::default();
    sum.update(&head);
    for (_, content) in &present {
        sum.update(content);
        if content.len() % 2 == 1 {
            sum.update(&[0]);
        }
    }
    put_u32(
        &mut head,
        info.opt + OPT_CHECKSUM,
        sum.finish(layout.file_len),
    );

    let mut parts = Parts::new();
    parts.push_owned(head);
    for (plan, (_, content)) in layout.sections.iter().zip(present) {
        debug_assert_eq!(parts.len(), plan.raw_pointer);
        parts.push_borrowed(content);
        parts.push_zeros(plan.raw_size - plan.virtual_size);
    }
    debug_assert_eq!(parts.len(), layout.file_len);
    Ok(parts)
}

fn rewrite_headers(head: &mut [u8], info: &StubInfo, layout: &Layout) -> Result<()> {
    let coff = info.coff;
    let opt = info.opt;
    let total = info.sections as usize + layout.sections.len();
    let total =
        u16::try_from(total).map_err(|_| stub_err("NumberOfSections", "too many sections"))?;
    put_u16(head, coff + 2, total);
    put_u32(head, coff + 4, 0); // TimeDateStamp
    put_u32(head, coff + 8, 0); // PointerToSymbolTable (the table is dropped)
    put_u32(head, coff + 12, 0); // NumberOfSymbols
    let added: u64 = layout.sections.iter().map(|s| s.raw_size).sum();
    let init_data = u64::from(u32_at(head, opt + 8).unwrap_or(0)) + added;
    put_u32(head, opt + 8, u32::try_from(init_data).unwrap_or(u32::MAX));
    put_u32(head, opt + 56, layout.size_of_image as u32);
    put_u32(head, opt + OPT_CHECKSUM, 0);
    // Data directory 4 (certificate table): a signature cannot cover the new sections.
    let security = opt + 112 + 4 * 8;
    put_u32(head, security, 0);
    put_u32(head, security + 4, 0);
    for (i, plan) in layout.sections.iter().enumerate() {
        let h = info.section_table + (info.sections as usize + i) * SECTION_HEADER_LEN;
        let hdr = &mut head[h..h + SECTION_HEADER_LEN];
        hdr.fill(0);
        hdr[..8].copy_from_slice(&plan.name);
        put_u32(hdr, 8, plan.virtual_size as u32);
        put_u32(hdr, 12, plan.virtual_address as u32);
        put_u32(hdr, 16, plan.raw_size as u32);
        put_u32(hdr, 20, plan.raw_pointer as u32);
        put_u32(hdr, 36, DATA_SECTION_FLAGS);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub() -> Option<Vec<u8>> {
        match std::fs::read(DEFAULT_STUB_PATH) {
            Ok(s) => Some(s),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{DEFAULT_STUB_PATH}: {e}")
            }
            Err(e) => {
                eprintln!("skipping: {DEFAULT_STUB_PATH}: {e} (apt-get install systemd-boot-efi)");
                None
            }
        }
    }

    fn checksum_of(file: &[u8], opt: usize) -> u32 {
        let mut copy = file.to_vec();
        put_u32(&mut copy, opt + OPT_CHECKSUM, 0);
        let mut sum = PeChecksum::default();
        // Feed in uneven pieces to exercise the carried byte.
        for piece in copy.chunks(333) {
            sum.update(piece);
        }
        sum.finish(copy.len() as u64)
    }

    #[test]
    fn checksum_matches_the_one_the_stub_was_linked_with() {
        let Some(stub) = stub() else { return };
        let info = parse_stub(&stub).unwrap();
        let stored = u32_at(&stub, info.opt + OPT_CHECKSUM).unwrap();
        assert_ne!(
            stored, 0,
            "the Debian stub carries a linker-computed checksum"
        );
        assert_eq!(checksum_of(&stub, info.opt), stored);
    }

    #[test]
    fn assembled_sections_are_aligned_and_headers_consistent() {
        let Some(stub) = stub() else { return };
        let info = parse_stub(&stub).unwrap();
        let osrel = b"ID=kitfleet\n";
        let cmdline = b"console=ttyS0";
        let linux = vec![0xabu8; 10_001];
        let initrd = vec![0xcdu8; 77];
        let parts = assemble(&stub, [osrel, cmdline, &linux, &initrd]).unwrap();
        let mut out = Vec::new();
        parts.write_to(&mut out).unwrap();
        assert_eq!(out.len() as u64, parts.len());
        let coff = info.coff;
        assert_eq!(u32_at(&out, coff + 4), Some(0), "TimeDateStamp");
        assert_eq!(u32_at(&out, coff + 8), Some(0), "PointerToSymbolTable");
        assert_eq!(u16_at(&out, coff + 2), Some(info.sections + 4));
        let stored = u32_at(&out, info.opt + OPT_CHECKSUM).unwrap();
        assert_eq!(checksum_of(&out, info.opt), stored);
        let size_of_image = u64::from(u32_at(&out, info.opt + 56).unwrap());
        for (i, expected) in [&osrel[..], cmdline, &linux, &initrd]
            .into_iter()
            .enumerate()
        {
            let h = info.section_table + (info.sections as usize + i) * SECTION_HEADER_LEN;
            let vsize = u32_at(&out, h + 8).unwrap() as usize;
            let va = u64::from(u32_at(&out, h + 12).unwrap());
            let raw_size = u64::from(u32_at(&out, h + 16).unwrap());
            let ptr = u32_at(&out, h + 20).unwrap() as usize;
            assert_eq!(&out[h..h + 8], &section_name(UKI_SECTIONS[i]));
            assert_eq!(va % info.section_alignment, 0);
            assert_eq!(ptr as u64 % info.file_alignment, 0);
            assert_eq!(raw_size % info.file_alignment, 0);
            assert!(va + vsize as u64 <= size_of_image);
            assert_eq!(&out[ptr..ptr + vsize], expected);
        }
        assert_eq!(size_of_image % info.section_alignment, 0);
    }

    #[test]
    fn empty_sections_are_left_out() {
        let Some(stub) = stub() else { return };
        let info = parse_stub(&stub).unwrap();
        let linux = vec![7u8; 4096];
        let parts = assemble(&stub, [b"ID=x\n", b"", &linux, b""]).unwrap();
        let mut out = Vec::new();
        parts.write_to(&mut out).unwrap();
        assert_eq!(u16_at(&out, info.coff + 2), Some(info.sections + 2));
        let name = |i: usize| {
            let h = info.section_table + (info.sections as usize + i) * SECTION_HEADER_LEN;
            out[h..h + 8].to_vec()
        };
        assert_eq!(name(0), section_name(".osrel"));
        assert_eq!(name(1), section_name(".linux"));
        assert_eq!(
            checksum_of(&out, info.opt),
            u32_at(&out, info.opt + OPT_CHECKSUM).unwrap()
        );
    }

    /// Corrupting any header byte or truncating the stub gives an error or a UKI, never a panic.
    #[test]
    fn corrupt_or_truncated_stubs_never_panic() {
        let Some(stub) = stub() else { return };
        let linux = vec![1u8; 100];
        for offset in 0..0x400 {
            for value in [0x00u8, 0xff] {
                let mut bad = stub.clone();
                bad[offset] = value;
                let _ = assemble(&bad, [b"ID=x", b"", &linux, b""]);
            }
        }
        for len in (0..stub.len()).step_by(97) {
            let _ = assemble(&stub[..len], [b"ID=x", b"", &linux, b""]);
        }
    }

    #[test]
    fn sizes_beyond_32_bits_are_refused_with_the_sizes() {
        let Some(stub) = stub() else { return };
        let info = parse_stub(&stub).unwrap();
        let kernel = 14 << 20;
        let initrd = 4u64 << 30;
        let err = plan_layout(
            &info,
            &[
                (".osrel", 10),
                (".cmdline", 10),
                (".linux", kernel),
                (".initrd", initrd),
            ],
        )
        .unwrap_err();
        match err {
            Error::UkiTooLarge {
                size,
                kernel: k,
                initrd: i,
                limit,
                ..
            } => {
                assert_eq!((k, i, limit), (kernel, initrd, u64::from(u32::MAX)));
                assert!(size > limit);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn rejects_what_is_not_a_pe32_plus_stub() {
        assert!(matches!(
            parse_stub(b"hello"),
            Err(Error::Stub {
                field: "e_magic",
                ..
            })
        ));
        let Some(mut stub) = stub() else { return };
        let info = parse_stub(&stub).unwrap();
        put_u16(&mut stub, info.opt, 0x10b);
        assert!(matches!(
            parse_stub(&stub),
            Err(Error::Stub { field: "Magic", .. })
        ));
    }
}
