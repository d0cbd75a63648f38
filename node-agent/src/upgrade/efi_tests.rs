//! Byte layouts checked by hand against the UEFI specification's tables (field order, sizes, type codes).

use super::*;

fn part() -> HdPartition {
    HdPartition {
        number: 1,
        start_lba: 0x800,
        size_lba: 0x1_0000,
        guid: std::array::from_fn(|i| i as u8),
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[test]
fn hard_drive_node_is_42_bytes_in_spec_order() {
    let mut want = vec![0x04, 0x01, 0x2a, 0x00]; // media, HD, length 42
    want.extend([0x01, 0, 0, 0]); // PartitionNumber
    want.extend([0x00, 0x08, 0, 0, 0, 0, 0, 0]); // PartitionStart
    want.extend([0x00, 0x00, 0x01, 0, 0, 0, 0, 0]); // PartitionSize
    want.extend(0u8..16); // PartitionSignature
    want.extend([0x02, 0x02]); // MBRType GPT, SignatureType GUID
    assert_eq!(hd_node(&part()), want);
}

#[test]
fn load_option_bytes() {
    let got = load_option("A", &part(), "EFI/x.efi").unwrap();
    let mut want = vec![0x01, 0, 0, 0]; // LOAD_OPTION_ACTIVE
    want.extend([0x48, 0x00]); // FilePathListLength 42 + 26 + 4 = 72
    want.extend([0x41, 0x00, 0x00, 0x00]); // "A\0"
    want.extend(hd_node(&part()));
    want.extend([0x04, 0x04, 0x1a, 0x00]); // media, file path, 4 + 22
    want.extend(utf16("\\EFI\\x.efi\0"));
    want.extend([0x7f, 0xff, 0x04, 0x00]); // end of entire device path
    assert_eq!(got, want);
    assert_eq!(got.len(), 4 + 2 + 4 + 72);
}

#[test]
fn load_option_round_trips_and_bad_input_is_named() {
    let bytes = load_option("Kitfleet ab12", &part(), "\\EFI\\kitfleet\\x.efi").unwrap();
    let info = parse_load_option("Boot0003", &bytes).unwrap();
    assert_eq!(info.attributes, LOAD_OPTION_ACTIVE);
    assert_eq!(info.description, "Kitfleet ab12");
    assert_eq!(info.file.as_deref(), Some("\\EFI\\kitfleet\\x.efi"));
    let e = load_option("a\u{1F600}", &part(), "x")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("description:"), "{e}");
    let e = parse_load_option("Boot0003", &bytes[..40])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Boot0003") && e.contains("FilePathListLength"),
        "{e}"
    );
    let e = parse_load_option("Boot0009", &[1, 0, 0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("Boot0009"), "{e}");
}

#[test]
fn boot_order_edits() {
    assert_eq!(encode_boot_order(&[0x0001, 0x0a0b]), vec![1, 0, 0x0b, 0x0a]);
    assert_eq!(
        parse_boot_order(&[1, 0, 0x0b, 0x0a]).unwrap(),
        vec![1, 0x0a0b]
    );
    assert!(
        parse_boot_order(&[1, 0, 2])
            .unwrap_err()
            .to_string()
            .contains("BootOrder")
    );
    assert_eq!(boot_order_with_first(&[1, 2, 3], 3), vec![3, 1, 2]);
    assert_eq!(boot_order_with_first(&[1, 2], 7), vec![7, 1, 2]);
    assert_eq!(boot_order_with_first(&[], 4), vec![4]);
    assert_eq!(boot_order_with_first(&[4, 4, 1], 4), vec![4, 1]);
}

#[test]
fn boot_names() {
    assert_eq!(boot_name(0x1a), "Boot001A");
    assert_eq!(parse_boot_name("Boot001A"), Some(0x1a));
    for n in ["BootOrder", "BootNext", "Boot001a", "Boot01", "Boot0000x"] {
        assert_eq!(parse_boot_name(n), None, "{n}");
    }
}
