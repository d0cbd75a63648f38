//! The weekly maintenance window: is it open at an instant, and when does it open next. A window whose end is earlier
//! than its start crosses midnight; its hours after midnight belong to the day it opened on.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::nodeimage::{MaintenanceWindow, Weekday};
use kitfleet_api::validate::parse_hhmm;

/// A window the planner cannot read (the API's validation rejects these; they are checked again here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("spec.rollout.window.{field}: {value:?} is not a 24-hour HH:MM time")]
    Time { field: &'static str, value: String },
    #[error("spec.rollout.window.timeZone: {0:?} is not an IANA time zone")]
    Zone(String),
    #[error("spec.rollout.window: start and end are both {0} (an empty window never opens)")]
    Empty(String),
}

struct Parsed {
    start: u32,
    end: u32,
    tz: Tz,
}

fn parse(w: &MaintenanceWindow) -> Result<Parsed, WindowError> {
    let hhmm = |field, v: &String| {
        parse_hhmm(v).ok_or_else(|| WindowError::Time {
            field,
            value: v.clone(),
        })
    };
    let start = hhmm("start", &w.start)?;
    let end = hhmm("end", &w.end)?;
    if start == end {
        return Err(WindowError::Empty(w.start.clone()));
    }
    let tz = match &w.time_zone {
        None => Tz::UTC,
        Some(z) => z.parse::<Tz>().map_err(|_| WindowError::Zone(z.clone()))?,
    };
    Ok(Parsed { start, end, tz })
}

fn weekday(d: chrono::Weekday) -> Weekday {
    use chrono::Weekday as C;
    match d {
        C::Mon => Weekday::Mon,
        C::Tue => Weekday::Tue,
        C::Wed => Weekday::Wed,
        C::Thu => Weekday::Thu,
        C::Fri => Weekday::Fri,
        C::Sat => Weekday::Sat,
        C::Sun => Weekday::Sun,
    }
}

fn opens_on(w: &MaintenanceWindow, day: NaiveDate) -> bool {
    w.days.is_empty() || w.days.contains(&weekday(day.weekday()))
}

fn utc(now: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(now.as_second(), now.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// Whether the window is open at `now`.
pub fn is_open(w: &MaintenanceWindow, now: Timestamp) -> Result<bool, WindowError> {
    let p = parse(w)?;
    let local = utc(now).with_timezone(&p.tz);
    let minute = local.hour() * 60 + local.minute();
    let today = local.date_naive();
    let yesterday = today.pred_opt().unwrap_or(today);
    Ok(if p.start < p.end {
        opens_on(w, today) && (p.start..p.end).contains(&minute)
    } else {
        (opens_on(w, today) && minute >= p.start) || (opens_on(w, yesterday) && minute < p.end)
    })
}

/// The first instant at or after `now` when the window is open.
pub fn next_open(w: &MaintenanceWindow, now: Timestamp) -> Result<Timestamp, WindowError> {
    if is_open(w, now)? {
        return Ok(now);
    }
    let p = parse(w)?;
    let today = utc(now).with_timezone(&p.tz).date_naive();
    let start = NaiveTime::from_hms_opt(p.start / 60, p.start % 60, 0).unwrap_or_default();
    for day in today.iter_days().take(9).filter(|d| opens_on(w, *d)) {
        let at = day.and_time(start);
        // A start inside a daylight-saving gap opens when the clock jumps past it.
        let local = p.tz.from_local_datetime(&at).earliest().or_else(|| {
            p.tz.from_local_datetime(&(at + TimeDelta::hours(1)))
                .earliest()
        });
        if let Some(t) = local.map(|l| l.timestamp())
            && t > now.as_second()
        {
            return Ok(Timestamp::from_second(t).unwrap_or(now));
        }
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(days: &[Weekday], start: &str, end: &str, tz: Option<&str>) -> MaintenanceWindow {
        MaintenanceWindow {
            days: days.to_vec(),
            start: start.into(),
            end: end.into(),
            time_zone: tz.map(Into::into),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn same_day_window() {
        let w = win(&[], "01:00", "03:00", None);
        assert!(!is_open(&w, ts("2026-11-30T00:59:59Z")).unwrap());
        assert!(is_open(&w, ts("2026-11-30T01:00:00Z")).unwrap());
        assert!(is_open(&w, ts("2026-11-30T02:59:59Z")).unwrap());
        assert!(!is_open(&w, ts("2026-11-30T03:00:00Z")).unwrap());
        assert_eq!(
            next_open(&w, ts("2026-11-30T03:00:00Z")).unwrap(),
            ts("2026-12-01T01:00:00Z")
        );
    }

    #[test]
    fn window_crossing_midnight_belongs_to_its_start_day() {
        // Friday 22:00 → Saturday 02:00; 2026-11-27 is a Friday.
        let w = win(&[Weekday::Fri], "22:00", "02:00", None);
        assert!(is_open(&w, ts("2026-11-27T23:00:00Z")).unwrap());
        assert!(is_open(&w, ts("2026-11-28T01:59:00Z")).unwrap());
        assert!(!is_open(&w, ts("2026-11-28T02:00:00Z")).unwrap());
        assert!(
            !is_open(&w, ts("2026-11-28T23:00:00Z")).unwrap(),
            "Saturday night is not Friday's"
        );
        assert!(
            !is_open(&w, ts("2026-11-27T01:00:00Z")).unwrap(),
            "Friday early morning is Thursday's"
        );
        assert_eq!(
            next_open(&w, ts("2026-11-28T02:00:00Z")).unwrap(),
            ts("2026-12-04T22:00:00Z")
        );
    }

    #[test]
    fn time_zone_applies() {
        // 01:00–03:00 in Berlin (UTC+1 in winter) is 00:00–02:00 UTC.
        let w = win(&[], "01:00", "03:00", Some("Europe/Berlin"));
        assert!(is_open(&w, ts("2026-11-30T00:30:00Z")).unwrap());
        assert!(!is_open(&w, ts("2026-11-30T02:30:00Z")).unwrap());
        assert_eq!(
            next_open(&w, ts("2026-11-30T02:30:00Z")).unwrap(),
            ts("2026-12-01T00:00:00Z")
        );
    }

    #[test]
    fn start_in_a_dst_gap_opens_when_the_clock_jumps() {
        // Europe/Berlin skips 02:00–03:00 on 2026-03-29.
        let w = win(&[], "02:30", "04:00", Some("Europe/Berlin"));
        assert_eq!(
            next_open(&w, ts("2026-03-28T23:00:00Z")).unwrap(),
            ts("2026-03-29T01:30:00Z") // 03:30 CEST, one hour after the missing 02:30
        );
    }

    #[test]
    fn bad_windows_name_the_field() {
        let e = is_open(&win(&[], "1:00", "03:00", None), ts("2026-11-30T00:00:00Z")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.rollout.window.start: \"1:00\" is not a 24-hour HH:MM time"
        );
        let e = is_open(
            &win(&[], "01:00", "03:00", Some("Mars/Base")),
            ts("2026-11-30T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.rollout.window.timeZone: \"Mars/Base\" is not an IANA time zone"
        );
        assert!(matches!(
            is_open(
                &win(&[], "01:00", "01:00", None),
                ts("2026-11-30T00:00:00Z")
            ),
            Err(WindowError::Empty(_))
        ));
    }
}
