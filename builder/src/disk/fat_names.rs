//! FAT names: 8.3 short names, `~N` aliases and VFAT long-name (LFN) entries.

use std::collections::HashSet;

use super::error::{Error, Result};

const ATTR_LFN: u8 = 0x0f;
const LFN_CHARS: usize = 13;

fn fat_err(reason: impl Into<String>) -> Error {
    Error::Fat {
        reason: reason.into(),
    }
}

/// Characters allowed in a short (8.3) name besides A-Z and 0-9.
fn short_char_ok(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || b"!#$%&'()-@^_`{}~".contains(&c)
}

/// Checks one component of `path` against the VFAT long-name rules.
pub(super) fn check_component(path: &str, name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.encode_utf16().count() > 255
        || name.ends_with('.')
        || name.ends_with(' ')
        || name.chars().any(|c| c < ' ' || "\"*/:<>?\\|".contains(c));
    if bad {
        return Err(fat_err(format!(
            "{path:?}: {name:?} is not a valid FAT long name"
        )));
    }
    Ok(())
}

/// The 8.3 form of `name` if its upper-case form is one already.
pub(super) fn plain_short(name: &str) -> Option<[u8; 11]> {
    let upper = name.to_ascii_uppercase();
    let (base, ext) = match upper.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (upper.as_str(), ""),
    };
    let ok = !base.is_empty()
        && base.len() <= 8
        && ext.len() <= 3
        && base.bytes().chain(ext.bytes()).all(short_char_ok);
    ok.then(|| {
        let mut out = [b' '; 11];
        out[..base.len()].copy_from_slice(base.as_bytes());
        out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
        out
    })
}

/// Generates a unique short name (`BASE~N.EXT`) for a long name that is not plain 8.3.
pub(super) fn tailed_short(name: &str, taken: &HashSet<[u8; 11]>) -> Result<[u8; 11]> {
    let clean = |s: &str| -> Vec<u8> {
        s.to_ascii_uppercase()
            .bytes()
            .filter(|&c| c != b' ' && c != b'.')
            .map(|c| if short_char_ok(c) { c } else { b'_' })
            .collect()
    };
    let (base, ext) = match name.trim_start_matches('.').rsplit_once('.') {
        Some((b, e)) => (clean(b), clean(e)),
        None => (clean(name), Vec::new()),
    };
    let base = if base.is_empty() { b"_".to_vec() } else { base };
    for n in 1..1_000_000u32 {
        let tail = format!("~{n}");
        let keep = base.len().min(8 - tail.len());
        let mut out = [b' '; 11];
        out[..keep].copy_from_slice(&base[..keep]);
        out[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        let e = ext.len().min(3);
        out[8..8 + e].copy_from_slice(&ext[..e]);
        if !taken.contains(&out) {
            return Ok(out);
        }
    }
    Err(fat_err(format!("no free short name for {name:?}")))
}

/// The checksum of a short name that each of its LFN entries carries.
pub(super) fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &c| {
        (sum >> 1).wrapping_add(sum << 7).wrapping_add(c)
    })
}

/// Number of LFN entries a long name takes (13 UTF-16 units each).
pub(super) fn lfn_entries(long: &str) -> usize {
    long.encode_utf16().count().div_ceil(LFN_CHARS)
}

/// Appends the LFN entries of `long` (last part first) that precede its short entry.
pub(super) fn push_lfn(out: &mut Vec<u8>, long: &str, short: &[u8; 11]) {
    let mut units: Vec<u16> = long.encode_utf16().collect();
    let count = units.len().div_ceil(LFN_CHARS);
    if !units.len().is_multiple_of(LFN_CHARS) {
        units.push(0);
    }
    units.resize(count * LFN_CHARS, 0xffff);
    let sum = lfn_checksum(short);
    for seq in (1..=count).rev() {
        let chunk = &units[(seq - 1) * LFN_CHARS..seq * LFN_CHARS];
        let mut e = [0u8; 32];
        e[0] = seq as u8 | if seq == count { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = sum;
        let slots = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (slot, unit) in slots.zip(chunk) {
            e[slot..slot + 2].copy_from_slice(&unit.to_le_bytes());
        }
        out.extend(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(&plain_short("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert_eq!(&plain_short("kitfleet").unwrap(), b"KITFLEET   ");
        assert!(plain_short("0123456789abcdef.efi").is_none());
        let taken = HashSet::new();
        assert_eq!(
            &tailed_short("0123456789abcdef.efi", &taken).unwrap(),
            b"012345~1EFI"
        );
        let taken: HashSet<_> = [*b"012345~1EFI"].into();
        assert_eq!(
            &tailed_short("0123456789abcdef.efi", &taken).unwrap(),
            b"012345~2EFI"
        );
    }

    #[test]
    fn lfn_checksum_matches_the_specification_example() {
        // Sum over "BOOTX64 EFI" computed by hand with the rotate-right-and-add rule.
        let mut sum = 0u8;
        for &c in b"BOOTX64 EFI" {
            sum = (if sum & 1 != 0 { 0x80u8 } else { 0 })
                .wrapping_add(sum >> 1)
                .wrapping_add(c);
        }
        assert_eq!(lfn_checksum(b"BOOTX64 EFI"), sum);
    }
}
