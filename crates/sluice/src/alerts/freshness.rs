//! Freshness alerts: a table not loaded for longer than it should be.
//!
//! ```yaml
//! alerts:
//!   freshness:
//!     warn_after: 26h                 # every table
//!     tables: { d2b.channel_spend_daily: 2h }
//! ```
//!
//! A table breaches once its last successful load is older than its limit; it is
//! announced once when it breaches and once when it is fresh again. `sluice serve`
//! checks every quarter of the smallest limit (between 1 s and 1 min), since a
//! breach happens while nothing runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{parse_duration, Alert};

/// `alerts.freshness`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessConfig {
    /// The limit of every table (`26h`), unless `tables` names its own.
    #[serde(default)]
    pub warn_after: Option<String>,
    /// Limits of single tables (`d2b.channel_spend_daily: 2h`).
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
}

/// The limits, parsed, and which tables are stale now.
#[derive(Debug)]
pub struct Watch {
    default: Option<Duration>,
    tables: BTreeMap<String, Duration>,
    stale: tokio::sync::Mutex<BTreeSet<String>>,
}

impl Watch {
    /// The limits of `config`, or the key and message of one that is not a duration.
    pub fn new(config: &FreshnessConfig) -> Result<Watch, (Vec<String>, String)> {
        let parse = |key: Vec<String>, text: &str| {
            parse_duration(text).ok_or_else(|| {
                (
                    key,
                    format!("`{text}` is not a duration (write e.g. `30m`, `26h`, `2d`)"),
                )
            })
        };
        let default = config
            .warn_after
            .as_deref()
            .map(|t| parse(vec!["warn_after".into()], t))
            .transpose()?;
        let mut tables = BTreeMap::new();
        for (table, text) in &config.tables {
            tables.insert(
                table.clone(),
                parse(vec!["tables".into(), table.clone()], text)?,
            );
        }
        Ok(Watch {
            default,
            tables,
            stale: Default::default(),
        })
    }

    /// How often to look: a quarter of the smallest limit, within 1 s … 60 s.
    pub fn check_every(&self) -> Duration {
        self.default
            .iter()
            .chain(self.tables.values())
            .min()
            .map_or(Duration::from_secs(60), |d| *d / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    fn limit(&self, table: &str) -> Option<Duration> {
        self.tables.get(table).copied().or(self.default)
    }

    /// The alerts for tables that became stale or fresh again since the last check.
    /// `tables` are (table, last successful load); never-loaded tables are left to
    /// the run-failure alerts.
    pub async fn check(
        &self,
        pipeline: &str,
        dashboard: &str,
        tables: &[(String, Option<DateTime<Utc>>)],
        now: DateTime<Utc>,
    ) -> Vec<Alert> {
        let mut stale = self.stale.lock().await;
        let mut alerts = Vec::new();
        for (table, last) in tables {
            let (Some(limit), Some(last)) = (self.limit(table), last) else {
                continue;
            };
            let age = (now - *last).to_std().unwrap_or_default();
            let last_text = last.format("%Y-%m-%d %H:%M:%S UTC");
            if age > limit && stale.insert(table.clone()) {
                alerts.push(Alert {
                    subject: format!("[sluice] {pipeline}: {table} is stale"),
                    body: format!(
                        "Pipeline `{pipeline}`: table {table} was last loaded at {last_text}, {} s ago (limit {} s).\nStale since {}.\nDashboard: {dashboard}/",
                        age.as_secs(),
                        limit.as_secs(),
                        (*last + chrono::Duration::from_std(limit).unwrap_or_default())
                            .format("%Y-%m-%d %H:%M:%S UTC"),
                    ),
                });
            } else if age <= limit && stale.remove(table) {
                alerts.push(Alert {
                    subject: format!("[sluice] {pipeline}: {table} is fresh again"),
                    body: format!(
                        "Pipeline `{pipeline}`: table {table} was loaded at {last_text}; it is fresh again.\nDashboard: {dashboard}/"
                    ),
                });
            }
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_breach_is_announced_once_and_so_is_the_recovery() {
        let watch = Watch::new(&FreshnessConfig {
            warn_after: Some("26h".into()),
            tables: BTreeMap::from([("d2b.spend".to_string(), "2h".to_string())]),
        })
        .unwrap();
        assert_eq!(watch.check_every(), Duration::from_secs(60));
        let now = Utc::now();
        let tables = |spend_age_h: i64| {
            vec![
                (
                    "d1.orders".to_string(),
                    Some(now - chrono::Duration::hours(3)),
                ),
                (
                    "d2b.spend".to_string(),
                    Some(now - chrono::Duration::hours(spend_age_h)),
                ),
                ("d1.never".to_string(), None),
            ]
        };
        let alerts = watch.check("p", "http://d", &tables(3), now).await;
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].subject, "[sluice] p: d2b.spend is stale");
        assert!(watch
            .check("p", "http://d", &tables(3), now)
            .await
            .is_empty());
        let alerts = watch.check("p", "http://d", &tables(1), now).await;
        assert_eq!(alerts[0].subject, "[sluice] p: d2b.spend is fresh again");
        assert!(Watch::new(&FreshnessConfig {
            warn_after: Some("soon".into()),
            tables: BTreeMap::new()
        })
        .is_err());
    }
}
