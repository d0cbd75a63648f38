//! Calendar conversions for the fixed timestamps of FAT and ISO 9660 entries.

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Civil {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
}

/// Converts seconds since the Unix epoch to UTC (proleptic Gregorian calendar).
pub(crate) fn civil(secs: u64) -> Civil {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 0000-03-01, split into 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem / 60 % 60) as u32,
        second: (rem % 60) as u32,
    }
}

/// FAT (date, time) words, clamped to the FAT range 1980-01-01 … 2107-12-31.
pub(crate) fn fat_datetime(secs: u64) -> (u16, u16) {
    let c = civil(secs);
    if c.year < 1980 {
        return ((1 << 5) | 1, 0);
    }
    if c.year > 2107 {
        return ((127 << 9) | (12 << 5) | 31, (23 << 11) | (59 << 5) | 29);
    }
    let date = (((c.year - 1980) as u16) << 9) | ((c.month as u16) << 5) | c.day as u16;
    let time = ((c.hour as u16) << 11) | ((c.minute as u16) << 5) | (c.second / 2) as u16;
    (date, time)
}

/// The 7-byte ISO 9660 directory-record date (years since 1900, UTC), clamped to 1900–2155.
pub(crate) fn iso_record_date(secs: u64) -> [u8; 7] {
    let c = civil(secs);
    let year = (c.year - 1900).clamp(0, 255) as u8;
    [
        year,
        c.month as u8,
        c.day as u8,
        c.hour as u8,
        c.minute as u8,
        c.second as u8,
        0,
    ]
}

/// The 17-byte ISO 9660 volume-descriptor date ("YYYYMMDDHHMMSScc" and a zone byte).
pub(crate) fn iso_volume_date(secs: u64) -> [u8; 17] {
    let c = civil(secs);
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        c.year.clamp(0, 9999),
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second
    );
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(text.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(
            civil(0),
            Civil {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2024-02-29T12:34:56Z
        assert_eq!(
            civil(1_709_210_096),
            Civil {
                year: 2024,
                month: 2,
                day: 29,
                hour: 12,
                minute: 34,
                second: 56
            }
        );
        assert_eq!(fat_datetime(0), (0x21, 0));
        let (date, time) = fat_datetime(1_709_210_096);
        assert_eq!(date, (44 << 9) | (2 << 5) | 29);
        assert_eq!(time, (12 << 11) | (34 << 5) | 28);
        assert_eq!(&iso_volume_date(1_709_210_096)[..16], b"2024022912345600");
        assert_eq!(iso_record_date(0), [70, 1, 1, 0, 0, 0, 0]);
    }
}
