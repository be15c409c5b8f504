//! Ground truth: the exact data a correct connector extracts.
//!
//! Computed from the same [`crate::data`] functions the server uses, so it
//! agrees with a full paged read by construction. Faults never enter here:
//! duplicates are de-duplicated, retries succeed, and on the
//! inconsistent-day fault truth keeps the ad-level sums.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::data::{self, classify_address, AddressProblem, FbMetrics, GMetrics, World, CT_EVENTS};
use crate::SandboxOptions;

/// The expected data for `since..=until` (inclusive) as served on `opts.today`.
pub fn truth(opts: &SandboxOptions, since: NaiveDate, until: NaiveDate) -> Value {
    let w = World::new(opts.seed, opts.scale);
    json!({
        "seed": opts.seed,
        "scale": opts.scale,
        "today": opts.today.to_string(),
        "since": since.to_string(),
        "until": until.to_string(),
        "facebook": facebook(&w, opts.today, since, until),
        "google": google(&w, opts.today, since, until),
        "clevertap": clevertap(&w, opts.today, since, until),
    })
}

fn facebook(w: &World, today: NaiveDate, since: NaiveDate, until: NaiveDate) -> Value {
    let mut days = Vec::new();
    let mut rows = 0u64;
    for (a, acc) in w.fb_accounts.iter().enumerate() {
        for day in data::days(since, until) {
            let mut sum = FbMetrics::default();
            let mut n = 0;
            for (i, _) in w
                .fb_ads
                .iter()
                .enumerate()
                .filter(|(_, ad)| ad.account == a)
            {
                if let Some(m) = w.fb_ad_day(i, day, today) {
                    sum.add(&m);
                    n += 1;
                }
            }
            if n > 0 {
                rows += n;
                days.push(
                    json!({"account_id": format!("act_{}", acc.id), "date": day.to_string(),
                    "currency": acc.currency, "impressions": sum.impressions, "clicks": sum.clicks,
                    "spend": Decimal::new(sum.spend_minor, 2).to_string(), "rows": n}),
                );
            }
        }
    }
    let existing = |created: chrono::NaiveDateTime| created.date() <= today;
    json!({
        "accounts": w.fb_accounts.iter().map(|a| json!({"account_id": format!("act_{}", a.id),
            "currency": a.currency, "timezone_name": a.timezone})).collect::<Vec<_>>(),
        "days": days,
        "rows": {"insights_ad": rows,
            "campaigns": w.fb_campaigns.iter().filter(|c| existing(c.created)).count(),
            "adsets": w.fb_adsets.iter().filter(|c| existing(c.created)).count(),
            "ads": w.fb_ads.iter().filter(|c| existing(c.created)).count()},
    })
}

fn google(w: &World, today: NaiveDate, since: NaiveDate, until: NaiveDate) -> Value {
    let mut days = Vec::new();
    let (mut campaign_rows, mut group_rows, mut ad_rows) = (0u64, 0u64, 0u64);
    for (c, cust) in w.g_clients.iter().enumerate() {
        for day in data::days(since, until) {
            let mut sum = GMetrics::default();
            let mut campaigns = BTreeMap::new();
            let mut groups = BTreeMap::new();
            for (i, ad) in w
                .g_ads
                .iter()
                .enumerate()
                .filter(|(_, ad)| ad.customer == c)
            {
                if let Some(m) = w.google_ad_day(i, day, today) {
                    sum.add(&m);
                    ad_rows += 1;
                    campaigns.insert(ad.campaign, ());
                    groups.insert(ad.ad_group, ());
                }
            }
            campaign_rows += campaigns.len() as u64;
            group_rows += groups.len() as u64;
            if sum.impressions > 0 {
                days.push(json!({"customer_id": cust.id, "date": day.to_string(), "currency": cust.currency,
                    "impressions": sum.impressions, "clicks": sum.clicks, "cost_micros": sum.cost_micros,
                    "conversions": sum.conversions_centi as f64 / 100.0}));
            }
        }
    }
    json!({
        "manager_customer_id": w.g_manager.id,
        "customers": w.g_clients.iter().map(|c| json!({"customer_id": c.id, "currency": c.currency,
            "time_zone": c.timezone})).collect::<Vec<_>>(),
        "days": days,
        "rows": {"campaign_daily": campaign_rows, "ad_group_daily": group_rows, "ad_group_ad_daily": ad_rows,
            "campaigns": w.g_campaigns.len(), "ad_groups": w.g_ad_groups.len(), "ads": w.g_ads.len()},
    })
}

fn clevertap(w: &World, today: NaiveDate, since: NaiveDate, until: NaiveDate) -> Value {
    let mut events = Map::new();
    for (name, _) in CT_EVENTS {
        let n: u64 = data::days(since, until)
            .map(|d| w.ct_event_count(name, d, today))
            .sum();
        events.insert(name.to_string(), json!(n));
    }
    // `Charged` per day: how many and the sum of their `Amount` (whatever the
    // property is called that day), exact in cents.
    let charged: Vec<Value> = data::days(since, until)
        .map(|day| {
            let count = w.ct_event_count("Charged", day, today);
            let cents: u64 = (0..count)
                .map(|i| w.ct_charged_minor(day, &w.ct_event("Charged", day, i, count)))
                .sum();
            json!({"date": day.to_string(), "count": count,
                "amount": Decimal::new(cents as i64, 2).to_string()})
        })
        .collect();
    let active = crate::clevertap::window_profiles_of(w, today, "App Launched", since, until);
    let (mut empty, mut digits, mut ssn) = (0, 0, 0);
    for &p in &active {
        match classify_address(&w.ct_profiles[p].address) {
            Some(AddressProblem::Empty) => empty += 1,
            Some(AddressProblem::AllDigits) => digits += 1,
            Some(AddressProblem::SsnShaped) => ssn += 1,
            None => {}
        }
    }
    json!({
        "events": events,
        "charged_days": charged,
        "profiles": active.len(),
        "profiles_event": "App Launched",
        "profiles_total": w.ct_profiles.len(),
        "invalid_addresses": {"empty": empty, "all_digits": digits, "ssn_shaped": ssn},
    })
}
