//! `schedule:` — when `sluice serve` (and the exported Airflow DAG / CronJob) runs the
//! pipeline: a cron expression, the time zone it is read in, and what to do about
//! times missed while nothing was running.
//!
//! Either a plain string (`schedule: "0 6 * * *"`, UTC, missed times skipped) or a
//! mapping (`schedule: {cron: "0 6 * * *", timezone: Europe/Berlin, catch_up: latest}`).
//! Cron expressions have five fields, or six with seconds first (`*/10 * * * * *`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::{ConfigDocument, ConfigError};

/// What to do about scheduled times that passed while sluice was down (or a run overran).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed times are not run; the next time on the clock is.
    #[default]
    Skip,
    /// One run for the most recent missed time, then back on the clock.
    Latest,
    /// One run per missed time, oldest first.
    All,
}

impl CatchUp {
    pub fn as_str(&self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
        }
    }
}

/// A validated `schedule:`.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expression as written, e.g. `0 6 * * *`.
    pub expression: String,
    /// The parsed expression (seconds optional, as the first of six fields).
    pub cron: croner::Cron,
    /// The zone the expression is read in; DST changes follow it (default UTC).
    pub timezone: chrono_tz::Tz,
    pub catch_up: CatchUp,
}

/// The mapping form of `schedule:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleMapping {
    /// The cron expression.
    cron: String,
    /// An IANA time zone name such as `Europe/Berlin` (default `UTC`).
    #[serde(default)]
    timezone: Option<String>,
    /// `skip` (default), `latest` or `all`.
    #[serde(default)]
    catch_up: CatchUp,
}

impl Schedule {
    /// Parses `schedule:` (a string or a mapping), pointing errors at the offending key.
    pub(super) fn parse(doc: &ConfigDocument, value: Value) -> Result<Schedule, ConfigError> {
        let base = vec!["schedule".to_string()];
        let (mapping, cron_path) = match value {
            Value::String(cron) => (
                ScheduleMapping {
                    cron,
                    timezone: None,
                    catch_up: CatchUp::Skip,
                },
                base.clone(),
            ),
            Value::Mapping(_) => (
                doc.deserialize_at::<ScheduleMapping>(value, &base)?,
                vec!["schedule".to_string(), "cron".to_string()],
            ),
            _ => {
                return Err(doc.error_at(
                    &base,
                    "expected a cron expression (\"0 6 * * *\") or a mapping {cron, timezone, catch_up}",
                ))
            }
        };
        let cron = croner::Cron::from_str(&mapping.cron).map_err(|e| {
            let mut error = doc.error_at(
                &cron_path,
                format!("`{}` is not a valid cron expression: {e}", mapping.cron),
            );
            error.help = Some(
                "five fields `minute hour day-of-month month day-of-week` (e.g. \"0 6 * * *\"), or six with seconds first".into(),
            );
            error
        })?;
        let timezone = match &mapping.timezone {
            None => chrono_tz::UTC,
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| {
                let mut error = doc.error_at(
                    &["schedule".to_string(), "timezone".to_string()],
                    format!("unknown time zone `{name}`"),
                );
                error.help = Some("use an IANA name such as `Europe/Berlin` or `UTC`".into());
                error
            })?,
        };
        Ok(Schedule {
            expression: mapping.cron.trim().to_string(),
            cron,
            timezone,
            catch_up: mapping.catch_up,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Lookup, PipelineConfig};

    struct NoEnv;
    impl Lookup for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn parse(text: &str) -> Result<PipelineConfig, crate::config::ConfigError> {
        PipelineConfig::parse("pipeline.yaml".into(), text.into(), Path::new("."), &NoEnv)
    }

    #[test]
    fn a_plain_string_is_a_utc_schedule_that_skips_missed_times() {
        let config = parse("name: m\nschedule: \"0 6 * * *\"\n").unwrap();
        let schedule = config.schedule.unwrap();
        assert_eq!(schedule.expression, "0 6 * * *");
        assert_eq!(schedule.timezone, chrono_tz::UTC);
        assert_eq!(schedule.catch_up, super::CatchUp::Skip);
    }

    #[test]
    fn the_mapping_form_takes_a_zone_and_a_catch_up_policy() {
        let config = parse(
            "name: m\nschedule:\n  cron: \"*/5 * * * * *\"\n  timezone: Europe/Berlin\n  catch_up: latest\n",
        )
        .unwrap();
        let schedule = config.schedule.unwrap();
        assert_eq!(schedule.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(schedule.catch_up, super::CatchUp::Latest);
    }

    #[test]
    fn nonsense_is_reported_at_its_line() {
        let err = parse("name: m\nschedule: banana\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.line), Some(2));
        assert!(
            err.message
                .contains("`banana` is not a valid cron expression"),
            "{err}"
        );

        let err = parse("name: m\nschedule:\n  cron: \"0 6 * * *\"\n  timezone: Mars/Olympus\n")
            .unwrap_err();
        assert_eq!(err.path, "schedule.timezone");
        assert_eq!(err.position.map(|p| p.line), Some(4));

        let err = parse("name: m\nschedule:\n  cron: \"0 6 * * *\"\n  catch_up: sometimes\n")
            .unwrap_err();
        assert!(err.path.starts_with("schedule.catch_up"), "{}", err.path);
        assert!(err.message.contains("sometimes"), "{err}");
    }

    #[test]
    fn berlin_mornings_follow_daylight_saving_time() {
        use chrono::TimeZone;
        let config =
            parse("name: m\nschedule: {cron: \"0 6 * * *\", timezone: Europe/Berlin}\n").unwrap();
        let schedule = config.schedule.unwrap();
        let tz = schedule.timezone;
        // The clocks go forward on 2026-03-29: 06:00 in Berlin is 05:00 UTC before, 04:00 after.
        let before = tz.with_ymd_and_hms(2026, 3, 28, 0, 0, 0).unwrap();
        let first = schedule.cron.find_next_occurrence(&before, false).unwrap();
        let second = schedule.cron.find_next_occurrence(&first, false).unwrap();
        assert_eq!(first.naive_utc().to_string(), "2026-03-28 05:00:00");
        assert_eq!(second.naive_utc().to_string(), "2026-03-29 04:00:00");
    }
}
