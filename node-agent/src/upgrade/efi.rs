//! EFI boot-variable encoding, pure: `EFI_LOAD_OPTION` (UEFI spec 2.10, §3.1.3) with a device path of a
//! Hard Drive media node for a GPT partition (§10.3.5.1: type 4, subtype 1, 42 bytes), a File Path media
//! node (type 4, subtype 4) and the End of Entire Device Path node (0x7f, 0xff); `BootOrder` edits.
#![forbid(unsafe_code)]

use super::{Result, UpgradeError};

/// `LOAD_OPTION_ACTIVE`: the firmware may boot the option.
pub const LOAD_OPTION_ACTIVE: u32 = 0x0000_0001;
/// EFI_GLOBAL_VARIABLE, the vendor GUID of `Boot####`, `BootNext`, `BootOrder`, `BootCurrent`.
pub const GLOBAL_VARIABLE_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

const MEDIA_DEVICE_PATH: u8 = 0x04;
const MEDIA_HARDDRIVE_DP: u8 = 0x01;
const MEDIA_FILEPATH_DP: u8 = 0x04;
const END_DEVICE_PATH_TYPE: u8 = 0x7f;
const END_ENTIRE_DEVICE_PATH_SUBTYPE: u8 = 0xff;
/// `MBRType` 0x02: a GPT partition table.
const MBR_TYPE_GPT: u8 = 0x02;
/// `SignatureType` 0x02: the signature is the partition's GUID.
const SIGNATURE_TYPE_GUID: u8 = 0x02;

/// A GPT partition as the Hard Drive media node names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HdPartition {
    /// 1-based partition number (entry index + 1).
    pub number: u32,
    /// First LBA.
    pub start_lba: u64,
    /// Size in LBAs.
    pub size_lba: u64,
    /// The partition's unique GUID exactly as stored in the GPT entry (EFI GUID byte order).
    pub guid: [u8; 16],
}

fn node(kind: u8, subtype: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + body.len()).expect("device path nodes here are short");
    let mut v = vec![kind, subtype];
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// The Hard Drive media device path node for `p` (42 bytes).
pub fn hd_node(p: &HdPartition) -> Vec<u8> {
    let mut b = Vec::with_capacity(38);
    b.extend_from_slice(&p.number.to_le_bytes());
    b.extend_from_slice(&p.start_lba.to_le_bytes());
    b.extend_from_slice(&p.size_lba.to_le_bytes());
    b.extend_from_slice(&p.guid);
    b.push(MBR_TYPE_GPT);
    b.push(SIGNATURE_TYPE_GUID);
    node(MEDIA_DEVICE_PATH, MEDIA_HARDDRIVE_DP, &b)
}

/// UCS-2 little-endian with a terminating NUL; refuses characters outside the BMP and NULs.
fn ucs2(field: &'static str, s: &str) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(2 * s.len() + 2);
    for c in s.chars() {
        let u = u32::from(c);
        if u == 0 || u > 0xffff || (0xd800..=0xdfff).contains(&u) {
            return Err(UpgradeError::Invalid {
                field,
                reason: format!("{c:?} in {s:?} is not a UCS-2 character"),
            });
        }
        v.extend_from_slice(&(u as u16).to_le_bytes());
    }
    v.extend_from_slice(&[0, 0]);
    Ok(v)
}

/// The File Path media node for `path` on the ESP (`/` become `\`, a leading `\` is added).
pub fn file_node(path: &str) -> Result<Vec<u8>> {
    let p = format!(
        "\\{}",
        path.trim_start_matches(['/', '\\']).replace('/', "\\")
    );
    Ok(node(
        MEDIA_DEVICE_PATH,
        MEDIA_FILEPATH_DP,
        &ucs2("path", &p)?,
    ))
}

/// The whole device path: HD(…)/File(…)/End.
pub fn device_path(p: &HdPartition, path: &str) -> Result<Vec<u8>> {
    let mut v = hd_node(p);
    v.extend(file_node(path)?);
    v.extend(node(
        END_DEVICE_PATH_TYPE,
        END_ENTIRE_DEVICE_PATH_SUBTYPE,
        &[],
    ));
    Ok(v)
}

/// An active `EFI_LOAD_OPTION` booting `path` on partition `p`, described as `description`, no optional data.
pub fn load_option(description: &str, p: &HdPartition, path: &str) -> Result<Vec<u8>> {
    let dp = device_path(p, path)?;
    let len = u16::try_from(dp.len()).map_err(|_| UpgradeError::Invalid {
        field: "path",
        reason: format!(
            "a device path of {} bytes does not fit FilePathListLength",
            dp.len()
        ),
    })?;
    let mut v = LOAD_OPTION_ACTIVE.to_le_bytes().to_vec();
    v.extend_from_slice(&len.to_le_bytes());
    v.extend(ucs2("description", description)?);
    v.extend(dp);
    Ok(v)
}

/// The parts of a load option this executor needs: its description and the File() path, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptionInfo {
    pub attributes: u32,
    pub description: String,
    /// The path of the first File Path node (with `\`), if the device path has one.
    pub file: Option<String>,
}

fn u16s_to_string(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// Decodes an `EFI_LOAD_OPTION` (for example an existing `Boot####`); errors name what is malformed.
pub fn parse_load_option(name: &str, data: &[u8]) -> Result<LoadOptionInfo> {
    let bad = |reason: String| UpgradeError::BadVariable {
        name: name.to_string(),
        reason,
    };
    if data.len() < 6 {
        return Err(bad(format!(
            "{} bytes is shorter than a load option header",
            data.len()
        )));
    }
    let attributes = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes"));
    let dp_len = usize::from(u16::from_le_bytes([data[4], data[5]]));
    let rest = &data[6..];
    let nul = rest
        .chunks_exact(2)
        .position(|c| c == [0, 0])
        .ok_or_else(|| bad("the description has no terminating NUL".into()))?;
    let description = u16s_to_string(&rest[..2 * nul]);
    let dp = rest
        .get(2 * nul + 2..2 * nul + 2 + dp_len)
        .ok_or_else(|| bad(format!("FilePathListLength {dp_len} runs past the end")))?;
    let mut file = None;
    let mut at = 0;
    while at + 4 <= dp.len() {
        let (t, s) = (dp[at], dp[at + 1]);
        let l = usize::from(u16::from_le_bytes([dp[at + 2], dp[at + 3]]));
        if l < 4 || at + l > dp.len() {
            return Err(bad(format!("device path node at byte {at} has length {l}")));
        }
        if t == MEDIA_DEVICE_PATH && s == MEDIA_FILEPATH_DP && file.is_none() {
            let body = &dp[at + 4..at + l];
            file = Some(u16s_to_string(body).trim_end_matches('\0').to_string());
        }
        if t == END_DEVICE_PATH_TYPE && s == END_ENTIRE_DEVICE_PATH_SUBTYPE {
            break;
        }
        at += l;
    }
    Ok(LoadOptionInfo {
        attributes,
        description,
        file,
    })
}

/// `BootOrder` bytes → entry numbers (refuses an odd length).
pub fn parse_boot_order(data: &[u8]) -> Result<Vec<u16>> {
    if !data.len().is_multiple_of(2) {
        return Err(UpgradeError::BadVariable {
            name: "BootOrder".into(),
            reason: format!("{} bytes is not a list of UINT16", data.len()),
        });
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Entry numbers → `BootOrder` bytes.
pub fn encode_boot_order(order: &[u16]) -> Vec<u8> {
    order.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// `order` with `first` moved (or added) to the front, every other entry kept in its order, once.
pub fn boot_order_with_first(order: &[u16], first: u16) -> Vec<u16> {
    let mut v = vec![first];
    for &n in order {
        if !v.contains(&n) {
            v.push(n);
        }
    }
    v
}

/// The variable name of boot entry `n`: `Boot0001` (four upper-case hex digits).
pub fn boot_name(n: u16) -> String {
    format!("Boot{n:04X}")
}

/// The entry number of a `Boot####` variable name (`None` for `BootOrder`, `BootNext`, lower-case…).
pub fn parse_boot_name(name: &str) -> Option<u16> {
    let hex = name.strip_prefix("Boot")?;
    if hex.len() != 4
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
#[path = "efi_tests.rs"]
mod tests;
