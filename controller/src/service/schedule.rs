//! Cron schedules in a time zone: validation and the next run times. Pure functions, no I/O.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use dg_common::error::FieldError;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Validates a time zone name (IANA).
pub fn time_zone(tz: &str) -> Result<Tz, FieldError> {
    Tz::from_str(tz).map_err(|_| FieldError::new("time_zone", format!("unknown IANA time zone \"{tz}\"")))
}

/// Parses a cron expression (5 fields, or 6 with seconds) read in `tz`. An empty expression means "on demand
/// only" and yields `None`.
pub fn parse(cron: &str, tz: &str) -> Result<Option<Schedule>, FieldError> {
    let tz = time_zone(tz)?;
    let cron = cron.trim();
    if cron.is_empty() {
        return Ok(None);
    }
    if cron.len() > 128 {
        return Err(FieldError::new("cron", "must be at most 128 characters"));
    }
    let parsed = Cron::from_str(cron).map_err(|e| FieldError::new("cron", format!("invalid cron expression: {e}")))?;
    let s = Schedule { cron: parsed, tz };
    if s.next_runs(Utc::now(), 1).is_empty() {
        return Err(FieldError::new("cron", "the expression never fires"));
    }
    Ok(Some(s))
}

impl Schedule {
    /// The next `n` run times strictly after `after`, in UTC.
    pub fn next_runs(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.cron.iter_after(after.with_timezone(&self.tz)).take(n).map(|t| t.with_timezone(&Utc)).collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn next_runs_follow_the_time_zone() {
        let s = parse("0 3 * * *", "Europe/Paris").expect("valid").expect("scheduled");
        let winter = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).single().expect("date");
        let runs = s.next_runs(winter, 5);
        assert_eq!(runs.len(), 5);
        assert!(runs.iter().all(|t| t.format("%H:%M").to_string() == "02:00"), "{runs:?}");
        let summer = Utc.with_ymd_and_hms(2026, 7, 10, 12, 0, 0).single().expect("date");
        assert_eq!(s.next_runs(summer, 1)[0].format("%H:%M").to_string(), "01:00");
        assert!(runs.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn validation_names_the_field() {
        assert!(parse("", "UTC").expect("empty ok").is_none());
        assert_eq!(parse("0 3 * * *", "Mars/Olympus").expect_err("tz").field, "time_zone");
        for bad in ["61 * * * *", "* * *", "not a cron", "0 0 31 2 *"] {
            assert_eq!(parse(bad, "UTC").expect_err(bad).field, "cron", "{bad}");
        }
        assert!(parse("*/15 * * * *", "America/New_York").expect("valid").is_some());
        assert!(parse("0 */5 * * * *", "UTC").expect("seconds field").is_some());
    }
}
