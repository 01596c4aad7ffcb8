//! Business hours in the portal's time zone: when a touch planned for a local day is due.
//!
//! A touch is planned for a calendar day (purchase + 7 days, the day before the next purchase,
//! March 15...). [`Hours::slot`] turns that day and the rule's preferred time into an instant a
//! manager can act on: a non-working day (weekend or holiday) moves to the next working day,
//! and the time is clamped into the working hours. Local times are built with jiff in the
//! portal's zone, so daylight-saving changes are handled by the zone rules; the CRM gets the
//! resulting UTC instant.
//!
//! Flow position: used by the planner ([`crate::plan`]) only; pure, no clock.
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use std::collections::BTreeSet;

/// Working days and hours of a portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    /// Start of the working day (local).
    pub start: Time,
    /// End of the working day (local); a task is due at the latest one hour before it.
    pub end: Time,
    /// Working weekdays, Monday first.
    pub days: [bool; 7],
    /// Non-working dates (public holidays).
    pub holidays: BTreeSet<Date>,
}

impl Default for Hours {
    /// 10:00-18:00, Monday to Friday, no holidays.
    fn default() -> Self {
        Self {
            start: Time::constant(10, 0, 0, 0),
            end: Time::constant(18, 0, 0, 0),
            days: [true, true, true, true, true, false, false],
            holidays: BTreeSet::new(),
        }
    }
}

/// Monday-first index of a weekday.
pub fn weekday_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

impl Hours {
    /// Whether `d` is a working day.
    pub fn is_working(&self, d: Date) -> bool {
        self.days[weekday_index(d.weekday())] && !self.holidays.contains(&d)
    }

    /// The first working day at or after `d` (`d` itself when no day of the week works, so a
    /// misconfigured calendar never loops).
    pub fn working_day_from(&self, d: Date) -> Date {
        let mut day = d;
        // A year covers any holiday list a portal could have.
        for _ in 0..370 {
            if self.is_working(day) {
                return day;
            }
            match day.tomorrow() {
                Ok(t) => day = t,
                Err(_) => return d,
            }
        }
        d
    }

    /// The latest time a task may be due on a working day: one hour before the end (so the
    /// manager still has time to act), never before the start.
    fn last_slot(&self) -> Time {
        let t = self
            .end
            .checked_sub(jiff::SignedDuration::from_hours(1))
            .unwrap_or(self.start);
        if t < self.start { self.start } else { t }
    }

    /// Clamps a preferred time into the working hours.
    pub fn clamp(&self, t: Time) -> Time {
        t.max(self.start).min(self.last_slot())
    }

    /// The due instant of a touch planned for the local day `day` at `time` (the start of the
    /// working day when `None`): moved to the next working day, time clamped into the hours.
    pub fn slot(&self, day: Date, time: Option<Time>, tz: &TimeZone) -> Zoned {
        let day = self.working_day_from(day);
        let t = self.clamp(time.unwrap_or(self.start));
        to_zoned(day, t, tz)
    }

    /// The first working slot at or after the instant `at`, rounded up to the next full hour
    /// (used for touches whose planned day is already past, and for immediate tasks such as
    /// the one of a routed repeat lead).
    pub fn next_open(&self, at: Timestamp, tz: &TimeZone) -> Zoned {
        let z = at.to_zoned(tz.clone());
        let day = z.date();
        let mut hour = z.hour();
        if z.minute() > 0 || z.second() > 0 || z.subsec_nanosecond() > 0 {
            hour += 1;
        }
        if hour <= 23 && self.is_working(day) {
            let t = Time::new(hour, 0, 0, 0).unwrap_or(self.start);
            if t <= self.last_slot() {
                return to_zoned(day, t.max(self.start), tz);
            }
        }
        let next = day.tomorrow().unwrap_or(day);
        to_zoned(self.working_day_from(next), self.start, tz)
    }
}

fn to_zoned(day: Date, t: Time, tz: &TimeZone) -> Zoned {
    // `to_zoned` resolves a local time in a DST gap or fold with the "compatible" strategy
    // (later offset in a gap, earlier in a fold), which is what a person means.
    day.to_datetime(t)
        .to_zoned(tz.clone())
        .unwrap_or_else(|_| Timestamp::UNIX_EPOCH.to_zoned(tz.clone()))
}

/// Parses `HH:MM` (or `HH:MM:SS`).
pub fn parse_time(s: &str) -> Option<Time> {
    let s = s.trim();
    let mut parts = s.split(':');
    let h: i8 = parts.next()?.parse().ok()?;
    let m: i8 = parts.next()?.parse().ok()?;
    let sec: i8 = match parts.next() {
        Some(x) => x.parse().ok()?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    Time::new(h, m, sec, 0).ok()
}

/// Parses a weekday name (`mon`, `monday`, `пн`), case-insensitive.
pub fn parse_weekday(s: &str) -> Option<usize> {
    let s = s.trim().to_lowercase();
    let names: [&[&str]; 7] = [
        &["mon", "monday", "пн"],
        &["tue", "tuesday", "вт"],
        &["wed", "wednesday", "ср"],
        &["thu", "thursday", "чт"],
        &["fri", "friday", "пт"],
        &["sat", "saturday", "сб"],
        &["sun", "sunday", "вс"],
    ];
    names.iter().position(|n| n.contains(&s.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn msk() -> TimeZone {
        TimeZone::get("Europe/Moscow").unwrap()
    }

    #[test]
    fn weekend_moves_to_monday_and_time_is_clamped() {
        let h = Hours::default();
        // 2026-11-28 is a Saturday.
        let z = h.slot(date(2026, 11, 28), Some(Time::constant(8, 0, 0, 0)), &msk());
        assert_eq!(z.date(), date(2026, 11, 30));
        assert_eq!((z.hour(), z.minute()), (10, 0));
        let z = h.slot(
            date(2026, 11, 30),
            Some(Time::constant(19, 30, 0, 0)),
            &msk(),
        );
        assert_eq!((z.hour(), z.minute()), (17, 0));
        // Moscow is UTC+3: 10:00 local is 07:00 UTC.
        let z = h.slot(date(2026, 12, 1), None, &msk());
        assert_eq!(z.timestamp().to_string(), "2026-12-01T07:00:00Z");
    }

    #[test]
    fn holidays_are_skipped() {
        let mut h = Hours::default();
        h.holidays.insert(date(2027, 1, 1));
        h.holidays.insert(date(2027, 1, 4));
        // Fri Jan 1 (holiday) -> Mon Jan 4 (holiday) -> Tue Jan 5.
        assert_eq!(
            h.slot(date(2027, 1, 1), None, &msk()).date(),
            date(2027, 1, 5)
        );
    }

    #[test]
    fn next_open_rounds_up_and_rolls_over() {
        let h = Hours::default();
        let tz = msk();
        let at = date(2026, 11, 23)
            .at(12, 15, 0, 0)
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp();
        let z = h.next_open(at, &tz);
        assert_eq!((z.date(), z.hour()), (date(2026, 11, 23), 13));
        // After the last slot on Friday: Monday 10:00.
        let at = date(2026, 11, 27)
            .at(17, 30, 0, 0)
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp();
        let z = h.next_open(at, &tz);
        assert_eq!((z.date(), z.hour()), (date(2026, 11, 30), 10));
        // Early morning: the start of the same day.
        let at = date(2026, 11, 24)
            .at(6, 0, 0, 0)
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp();
        assert_eq!(h.next_open(at, &tz).hour(), 10);
    }

    #[test]
    fn dst_gap_resolves_forward() {
        // Berlin springs forward on 2027-03-28 at 02:00; a business day there is a Sunday, so
        // use a calendar where Sunday works and the hours start inside the gap.
        let h = Hours {
            start: Time::constant(2, 30, 0, 0),
            end: Time::constant(18, 0, 0, 0),
            days: [true; 7],
            holidays: BTreeSet::new(),
        };
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let z = h.slot(date(2027, 3, 28), None, &tz);
        assert_eq!((z.hour(), z.minute()), (3, 30));
    }

    #[test]
    fn parses_times_and_weekdays() {
        assert_eq!(parse_time("09:30"), Some(Time::constant(9, 30, 0, 0)));
        assert_eq!(parse_time("25:00"), None);
        assert_eq!(parse_weekday("Sat"), Some(5));
        assert_eq!(parse_weekday("пн"), Some(0));
        assert_eq!(parse_weekday("x"), None);
    }
}
