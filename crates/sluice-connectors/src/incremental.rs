//! Day windows for the API sources: which dates a run fetches.
//!
//! Ad platforms and event APIs are read by day in the account's time zone.
//! A run fetches from the stored cursor minus a look-back (recent days still
//! change: attribution, late conversions) up to the run's "today"; the first
//! run starts at `start_date`; `--since/--until` override both and leave the
//! cursor alone (the executor skips `cursor_after` for backfills).
//!
//! The keys (`start_date`, `lookback_days`, `slice_days`) are declared in each
//! API connector's config struct rather than in one `#[serde(flatten)]` struct:
//! serde's flatten with `deny_unknown_fields` drops the list of valid keys from
//! "unknown key" errors (so no "did you mean `lookback_days`?") and the key path
//! from errors inside the flattened values (so no file:line at the bad value).
//! The defaults differ on purpose, by how long each platform keeps changing recent
//! days: Facebook 28 (Meta restates ~28 days for attribution and invalid clicks),
//! Google Ads 30 (late conversions within the default 30-day conversion window),
//! CleverTap 3 (late-arriving events). After parsing, every connector goes
//! through [`Incremental`] and [`plan_window`] here.

use chrono::{Days, NaiveDate};
use serde_json::{json, Value};
use sluice_core::source::RunWindow;

/// An inclusive range of days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayWindow {
    pub since: NaiveDate,
    pub until: NaiveDate,
}

impl DayWindow {
    pub fn days(&self) -> i64 {
        (self.until - self.since).num_days() + 1
    }

    /// `2024-07-01..2024-07-31`, used in slice keys.
    pub fn key(&self) -> String {
        format!("{}..{}", self.since, self.until)
    }

    /// Consecutive windows of at most `days` days covering this one.
    pub fn chunks(&self, days: i64) -> Vec<DayWindow> {
        let days = days.max(1) as u64;
        let mut out = Vec::new();
        let mut since = self.since;
        while since <= self.until {
            let until = since
                .checked_add_days(Days::new(days - 1))
                .unwrap_or(self.until)
                .min(self.until);
            out.push(DayWindow { since, until });
            match until.succ_opt() {
                Some(next) => since = next,
                None => break,
            }
        }
        out
    }

    /// Two halves (the first one longer when odd); `None` for a single day.
    pub fn halves(&self) -> Option<(DayWindow, DayWindow)> {
        if self.days() < 2 {
            return None;
        }
        let first_len = (self.days() + 1) / 2;
        let first_until = self.since + chrono::Duration::days(first_len - 1);
        Some((
            DayWindow {
                since: self.since,
                until: first_until,
            },
            DayWindow {
                since: first_until.succ_opt()?,
                until: self.until,
            },
        ))
    }

    pub fn contains(&self, day: NaiveDate) -> bool {
        self.since <= day && day <= self.until
    }

    pub fn to_json(&self) -> Value {
        json!({"since": self.since.to_string(), "until": self.until.to_string()})
    }

    pub fn from_json(value: &Value) -> Option<DayWindow> {
        let since = value.get("since")?.as_str()?.parse().ok()?;
        let until = value.get("until")?.as_str()?.parse().ok()?;
        Some(DayWindow { since, until })
    }
}

/// How a source's incremental window is configured.
#[derive(Debug, Clone, Copy)]
pub struct Incremental {
    /// First-run start; `None` = `default_history_days` before today.
    pub start_date: Option<NaiveDate>,
    pub default_history_days: u64,
    pub lookback_days: u64,
}

/// The days this run fetches, and the cursor to store when they are loaded.
/// `None` when there is nothing to fetch (e.g. `--until` before the start).
pub fn plan_window(
    incremental: &Incremental,
    cursor: Option<&Value>,
    window: &RunWindow,
) -> (Option<DayWindow>, Value) {
    let today = window.today;
    let start = incremental.start_date.unwrap_or_else(|| {
        today
            .checked_sub_days(Days::new(incremental.default_history_days))
            .unwrap_or(today)
    });
    let until = window.until.unwrap_or(today);
    let since = match (window.since, cursor_until(cursor), window.full_refresh) {
        (Some(since), _, _) => since,
        (None, Some(last), false) => {
            let back = last
                .checked_sub_days(Days::new(incremental.lookback_days.saturating_sub(1)))
                .unwrap_or(last);
            back.max(start)
        }
        _ => start,
    };
    let cursor_after = json!({"until": until.to_string()});
    let window = (since <= until).then_some(DayWindow { since, until });
    (window, cursor_after)
}

fn cursor_until(cursor: Option<&Value>) -> Option<NaiveDate> {
    cursor?.get("until")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn run(today: &str) -> RunWindow {
        RunWindow {
            since: None,
            until: None,
            today: d(today),
            full_refresh: false,
        }
    }

    #[test]
    fn first_run_then_lookback_then_backfill() {
        let inc = Incremental {
            start_date: None,
            default_history_days: 90,
            lookback_days: 28,
        };
        let (w, c) = plan_window(&inc, None, &run("2024-09-30"));
        assert_eq!(
            w.unwrap(),
            DayWindow {
                since: d("2024-07-02"),
                until: d("2024-09-30")
            }
        );
        assert_eq!(c, json!({"until": "2024-09-30"}));
        let (w, _) = plan_window(&inc, Some(&c), &run("2024-10-01"));
        assert_eq!(
            w.unwrap(),
            DayWindow {
                since: d("2024-09-03"),
                until: d("2024-10-01")
            }
        );
        let mut backfill = run("2024-10-01");
        backfill.since = Some(d("2024-01-01"));
        backfill.until = Some(d("2024-01-31"));
        let (w, _) = plan_window(&inc, Some(&c), &backfill);
        assert_eq!(w.unwrap().days(), 31);
    }

    #[test]
    fn chunks_and_halves_cover_exactly() {
        let w = DayWindow {
            since: d("2024-07-01"),
            until: d("2024-09-30"),
        };
        let chunks = w.chunks(31);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.iter().map(DayWindow::days).sum::<i64>(), 92);
        let (a, b) = w.halves().unwrap();
        assert_eq!(a.days() + b.days(), 92);
        assert_eq!(a.until.succ_opt().unwrap(), b.since);
        assert!(DayWindow {
            since: w.since,
            until: w.since
        }
        .halves()
        .is_none());
    }
}
