//! Status conditions: setting one without moving its transition time needlessly, and bounding messages.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const COND_BUILT: &str = "Built";
pub const COND_PROGRESSING: &str = "Progressing";
pub const COND_DEGRADED: &str = "Degraded";

/// Sets a condition, keeping its transition time when its status does not change.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let new = |time| Condition {
        type_: type_.to_string(),
        status: status.clone(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: time,
    };
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => *c = new(c.last_transition_time.clone()),
        Some(c) => *c = new(Time(now)),
        None => conds.push(new(Time(now))),
    }
}

/// Longest condition message written (the API allows 32768 bytes; a long list of errors is cut).
pub const MAX_MESSAGE: usize = 4096;

/// `s` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
pub fn clamp(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
