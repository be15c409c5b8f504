//! Reconciliation: the slice's per-day sums of impressions, clicks and spend
//! compared with the account-level totals fetched alongside (never reach,
//! frequency or ratios, which do not add up). A mismatch is a warning.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sluice_core::source::SourceError;

use super::super::config::Level;
use super::super::entities::data;
use super::rows::value_text;
use super::{plain_insights_pager, JobContext, ReadState};
use crate::incremental::DayWindow;

/// Per-day additive totals for reconciliation.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Totals {
    pub(super) impressions: i64,
    pub(super) clicks: i64,
    pub(super) spend: Decimal,
}

pub(super) fn int(v: Option<&Value>) -> i64 {
    v.and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
    .unwrap_or(0)
}

pub(super) fn money(v: Option<&Value>) -> Decimal {
    v.and_then(|v| match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    })
    .unwrap_or_default()
}

pub(super) fn add_totals(totals: &mut BTreeMap<NaiveDate, Totals>, row: &Map<String, Value>) {
    let Some(day) = row
        .get("date_start")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let t = totals.entry(day).or_default();
    t.impressions += int(row.get("impressions"));
    t.clicks += int(row.get("clicks"));
    t.spend += money(row.get("spend"));
}

/// The account-level totals per day for the slice's window (one request, plus pages).
pub(super) async fn fetch_account_totals(
    ctx: Arc<JobContext>,
    window: DayWindow,
) -> Result<BTreeMap<NaiveDate, Totals>, SourceError> {
    let fields = ["impressions", "clicks", "spend", "date_start"].map(String::from);
    let mut pager = plain_insights_pager(&ctx, &fields, Level::Account, &window)?;
    let mut reported: BTreeMap<NaiveDate, Totals> = BTreeMap::new();
    let mut seen_days = HashSet::new();
    while let Some((_, page)) = pager.next(&ctx.api).await? {
        for row in data(&page) {
            if let Some(obj) = row.as_object() {
                // Account rows can repeat too (duplicate faults): one per day.
                if seen_days.insert(obj.get("date_start").map(value_text).unwrap_or_default()) {
                    add_totals(&mut reported, obj);
                }
            }
        }
    }
    Ok(reported)
}

/// Compares the slice's per-day sums with the account-level totals; warns per differing day.
pub(super) fn reconcile(state: &mut ReadState<'_>, reported: &BTreeMap<NaiveDate, Totals>) {
    let account = &state.params.account;
    let window = state.params.window;
    let mut day = window.since;
    while day <= window.until {
        let ours = state.totals.get(&day).cloned().unwrap_or_default();
        let theirs = reported.get(&day).cloned().unwrap_or_default();
        if ours != theirs {
            state.sink.warn(format!(
                "facebook {account} {day}: {} rows add up to impressions {}, clicks {}, spend {} but the account totals are impressions {}, clicks {}, spend {}",
                state.config.level.as_str(),
                ours.impressions,
                ours.clicks,
                ours.spend.normalize(),
                theirs.impressions,
                theirs.clicks,
                theirs.spend.normalize()
            ));
        }
        match day.succ_opt() {
            Some(d) => day = d,
            None => break,
        }
    }
}
