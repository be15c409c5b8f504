//! The sandbox's insights: a query parsed from a request (level, fields, breakdowns,
//! time range and increment, filtering), its size, and its rows computed from the
//! world's ad-level metrics (every level sums the ad rows). Sync insights and the
//! async report runs (`report_runs.rs`) both answer from here.

use std::collections::BTreeMap;

use chrono::{Datelike, Duration, NaiveDate};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use super::{bad_param, error, filter_values, list_param, Scope};
use crate::data::{self, FbMetrics, World};
use crate::{AppState, Reply, Req};

/// How far back insights go.
const MAX_MONTHS_BACK: u32 = 37;

const INSIGHT_FIELDS: [&str; 24] = [
    "account_id",
    "account_name",
    "account_currency",
    "campaign_id",
    "campaign_name",
    "adset_id",
    "adset_name",
    "ad_id",
    "ad_name",
    "date_start",
    "date_stop",
    "impressions",
    "clicks",
    "spend",
    "reach",
    "frequency",
    "cpc",
    "cpm",
    "ctr",
    "actions",
    "action_values",
    "conversions",
    "objective",
    "inline_link_clicks",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Account,
    Campaign,
    Adset,
    Ad,
}

#[derive(Clone, Debug)]
pub(super) struct Query {
    pub(super) scope: Scope,
    level: Level,
    pub(super) fields: Vec<String>,
    breakdowns: Vec<String>,
    windows: Vec<String>,
    pub(super) since: NaiveDate,
    pub(super) until: NaiveDate,
    /// Days per time bucket; `None` = one bucket for the whole range.
    increment: Option<i64>,
    monthly: bool,
    id_filters: Vec<(String, Vec<String>)>,
    pub(super) limit: usize,
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

pub(super) fn parse_query(st: &AppState, r: &Req, scope: Scope) -> Result<Query, Reply> {
    let today = st.opts.today;
    let level = match r.param("level") {
        None => match scope {
            Scope::Account(_) => Level::Account,
            Scope::Campaign(_) => Level::Campaign,
            Scope::Adset(_) => Level::Adset,
            Scope::Ad(_) => Level::Ad,
        },
        Some("account") => Level::Account,
        Some("campaign") => Level::Campaign,
        Some("adset") => Level::Adset,
        Some("ad") => Level::Ad,
        Some(other) => {
            return Err(bad_param(r.seq, &format!("level must be one of the following values: ad, adset, campaign, account (got {other})")))
        }
    };
    let fields =
        list_param(r.param("fields")).unwrap_or_else(|| vec!["impressions".into(), "spend".into()]);
    for f in &fields {
        if !INSIGHT_FIELDS.contains(&f.as_str()) {
            return Err(bad_param(r.seq, &format!("{f} is not valid for fields param. please check https://developers.facebook.com/docs/marketing-api/reference/ads-insights/ for all valid values")));
        }
    }
    let breakdowns = list_param(r.param("breakdowns")).unwrap_or_default();
    for b in &breakdowns {
        if data::fb_breakdown_values(b).is_none() {
            return Err(bad_param(r.seq, &format!("breakdowns[0] must be one of the following values: age, gender, country, publisher_platform (got {b})")));
        }
    }
    let windows = list_param(r.param("action_attribution_windows")).unwrap_or_default();
    for wdw in &windows {
        if ![
            "1d_click",
            "7d_click",
            "28d_click",
            "1d_view",
            "7d_view",
            "default",
        ]
        .contains(&wdw.as_str())
        {
            return Err(bad_param(r.seq, &format!("action_attribution_windows[0] must be one of the following values: 1d_click, 7d_click, 28d_click, 1d_view, 7d_view (got {wdw})")));
        }
    }
    let (since, until) = if let Some(tr) = r.param("time_range") {
        let v: Value = serde_json::from_str(tr).map_err(|_| {
            bad_param(
                r.seq,
                "Param time_range must be a JSON object {\"since\":…,\"until\":…}",
            )
        })?;
        let s = v.get("since").and_then(Value::as_str).and_then(parse_date);
        let u = v.get("until").and_then(Value::as_str).and_then(parse_date);
        match (s, u) {
            (Some(s), Some(u)) if s <= u => (s, u),
            _ => return Err(bad_param(
                r.seq,
                "Param time_range has an invalid since/until (expected yyyy-mm-dd, since <= until)",
            )),
        }
    } else {
        let preset = r.param("date_preset").unwrap_or("last_30d");
        let y = today - Duration::days(1);
        match preset {
            "today" => (today, today),
            "yesterday" => (y, y),
            "last_3d" => (today - Duration::days(3), y),
            "last_7d" => (today - Duration::days(7), y),
            "last_14d" => (today - Duration::days(14), y),
            "last_28d" => (today - Duration::days(28), y),
            "last_30d" => (today - Duration::days(30), y),
            "last_90d" => (today - Duration::days(90), y),
            "this_month" => (today.with_day(1).unwrap_or(today), today),
            "maximum" => (today - chrono::Months::new(MAX_MONTHS_BACK) + Duration::days(1), today),
            other => return Err(bad_param(r.seq, &format!("date_preset must be one of the following values: today, yesterday, last_3d, last_7d, last_14d, last_28d, last_30d, last_90d, this_month, maximum (got {other})"))),
        }
    };
    if since < today - chrono::Months::new(MAX_MONTHS_BACK) {
        return Err(error(
            400,
            3018,
            None,
            "The start date of the time range cannot be beyond 37 months from the current date",
            false,
            r.seq,
        ));
    }
    let (increment, monthly) = match r.param("time_increment") {
        None | Some("all_days") => (None, false),
        Some("monthly") => (None, true),
        Some(n) => match n.parse::<i64>() {
            Ok(n) if (1..=90).contains(&n) => (Some(n), false),
            _ => {
                return Err(bad_param(
                    r.seq,
                    "time_increment must be an integer 1..90, 'monthly' or 'all_days'",
                ))
            }
        },
    };
    let mut id_filters = Vec::new();
    if let Some(fl) = r.param("filtering") {
        let v: Vec<Value> = serde_json::from_str(fl).map_err(|_| {
            bad_param(
                r.seq,
                "filtering must be a JSON array of {field, operator, value}",
            )
        })?;
        for f in v {
            let field = f.get("field").and_then(Value::as_str).unwrap_or_default();
            let op = f
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !["campaign.id", "adset.id", "ad.id"].contains(&field)
                || !["IN", "EQUAL"].contains(&op)
            {
                return Err(bad_param(r.seq, &format!("Filtering field {field} with operation {op} is not supported (sandbox: campaign.id/adset.id/ad.id with IN/EQUAL)")));
            }
            let vals = f.get("value").map(filter_values).unwrap_or_default();
            id_filters.push((field.to_string(), vals));
        }
    }
    let limit = r
        .param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25usize)
        .clamp(1, 10_000);
    Ok(Query {
        scope,
        level,
        fields,
        breakdowns,
        windows,
        since,
        until,
        increment,
        monthly,
        id_filters,
        limit,
    })
}

/// Time buckets of a query: (start, stop) pairs.
fn buckets(q: &Query) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out = Vec::new();
    let mut start = q.since;
    while start <= q.until {
        let stop = if q.monthly {
            let next =
                (start.with_day(1).unwrap_or(start) + chrono::Months::new(1)) - Duration::days(1);
            next.min(q.until)
        } else if let Some(n) = q.increment {
            (start + Duration::days(n - 1)).min(q.until)
        } else {
            q.until
        };
        out.push((start, stop));
        start = stop + Duration::days(1);
    }
    out
}

fn combos(q: &Query) -> Vec<Vec<&'static str>> {
    let mut out: Vec<Vec<&'static str>> = vec![vec![]];
    for b in &q.breakdowns {
        let vals = data::fb_breakdown_values(b).unwrap_or(&[]);
        out = out
            .into_iter()
            .flat_map(|prefix| {
                vals.iter()
                    .map(move |v| [prefix.clone(), vec![*v]].concat())
            })
            .collect();
    }
    out
}

fn ads_in_scope(w: &World, q: &Query) -> Vec<usize> {
    (0..w.fb_ads.len())
        .filter(|&i| {
            let ad = &w.fb_ads[i];
            let in_scope = match q.scope {
                Scope::Account(a) => ad.account == a,
                Scope::Campaign(c) => ad.campaign == c,
                Scope::Adset(s) => ad.adset == s,
                Scope::Ad(x) => i == x,
            };
            in_scope
                && q.id_filters.iter().all(|(field, vals)| {
                    let id = match field.as_str() {
                        "campaign.id" => &w.fb_campaigns[ad.campaign].id,
                        "adset.id" => &w.fb_adsets[ad.adset].id,
                        _ => &ad.id,
                    };
                    vals.contains(id)
                })
        })
        .collect()
}

pub(super) fn query_size(w: &World, q: &Query) -> u64 {
    let ads = ads_in_scope(w, q);
    let mut objects: Vec<usize> = ads.iter().map(|&a| object_of(w, q.level, a)).collect();
    objects.sort();
    objects.dedup();
    (objects.len() * buckets(q).len() * combos(q).len()) as u64
}

fn object_of(w: &World, level: Level, ad: usize) -> usize {
    let a = &w.fb_ads[ad];
    match level {
        Level::Account => a.account,
        Level::Campaign => a.campaign,
        Level::Adset => a.adset,
        Level::Ad => ad,
    }
}

#[derive(Default, Clone, Copy)]
struct Agg {
    m: FbMetrics,
    rows: u32,
    max_reach: i64,
}

/// The full result of an insights query, in a stable order (object, time, breakdown).
pub(super) fn insights(st: &AppState, q: &Query) -> Vec<Value> {
    let w = &st.world;
    let today = st.opts.today;
    let bks = buckets(q);
    let cmb = combos(q);
    let mut acc: BTreeMap<(usize, usize, usize), Agg> = BTreeMap::new();
    for ad in ads_in_scope(w, q) {
        let obj = object_of(w, q.level, ad);
        for (bi, (start, stop)) in bks.iter().enumerate() {
            for day in data::days(*start, *stop) {
                let Some(m) = w.fb_ad_day(ad, day, today) else {
                    continue;
                };
                let parts = if cmb.len() > 1 {
                    data::fb_split(
                        &m,
                        data::h(&[w.seed, 77, ad as u64, day.num_days_from_ce() as u64]),
                        cmb.len(),
                    )
                } else {
                    vec![m]
                };
                for (ci, p) in parts.iter().enumerate() {
                    if p.impressions == 0 && p.spend_minor == 0 {
                        continue;
                    }
                    let e = acc.entry((obj, bi, ci)).or_default();
                    e.m.add(p);
                    e.rows += 1;
                    e.max_reach = e.max_reach.max(p.reach);
                }
            }
        }
    }
    let f = &st.opts.faults;
    acc.into_iter()
        .map(|((obj, bi, ci), mut agg)| {
            let (start, stop) = bks[bi];
            if let Some(bad) = f.inconsistent_day {
                if q.level != Level::Ad && start <= bad && bad <= stop {
                    // Deleted objects / rounding: totals no longer equal the ad rows.
                    agg.m.impressions += 17;
                    agg.m.clicks += 1;
                    agg.m.spend_minor += 123;
                }
            }
            row_json(st, q, obj, start, stop, &cmb[ci], &agg)
        })
        .collect()
}

fn money(minor: i64) -> String {
    Decimal::new(minor, 2).to_string()
}

fn ratio(num: f64, den: f64) -> Option<String> {
    (den > 0.0).then(|| format!("{:.6}", num / den))
}

fn row_json(
    st: &AppState,
    q: &Query,
    obj: usize,
    start: NaiveDate,
    stop: NaiveDate,
    combo: &[&str],
    agg: &Agg,
) -> Value {
    let w = &st.world;
    let m = &agg.m;
    // Reach is not additive: an aggregate reaches fewer people than the sum.
    let reach = if agg.rows <= 1 {
        m.reach
    } else {
        (m.reach * 7 / 10).max(agg.max_reach)
    };
    let (account, campaign, adset, ad) = match q.level {
        Level::Account => (obj, None, None, None),
        Level::Campaign => (w.fb_campaigns[obj].account, Some(obj), None, None),
        Level::Adset => (
            w.fb_adsets[obj].account,
            Some(w.fb_adsets[obj].campaign),
            Some(obj),
            None,
        ),
        Level::Ad => (
            w.fb_ads[obj].account,
            Some(w.fb_ads[obj].campaign),
            Some(w.fb_ads[obj].adset),
            Some(obj),
        ),
    };
    let acct = &w.fb_accounts[account];
    let mut o = Map::new();
    let spend = m.spend_minor as f64 / 100.0;
    for f in &q.fields {
        let v: Option<Value> = match f.as_str() {
            "account_id" => Some(json!(acct.id)),
            "account_name" => Some(json!(acct.name)),
            "account_currency" => Some(json!(acct.currency)),
            "campaign_id" => campaign.map(|c| json!(w.fb_campaigns[c].id)),
            "campaign_name" => campaign.map(|c| json!(w.fb_campaigns[c].name)),
            "objective" => campaign.map(|c| json!(w.fb_campaigns[c].objective)),
            "adset_id" => adset.map(|c| json!(w.fb_adsets[c].id)),
            "adset_name" => adset.map(|c| json!(w.fb_adsets[c].name)),
            "ad_id" => ad.map(|c| json!(w.fb_ads[c].id)),
            "ad_name" => ad.map(|c| json!(w.fb_ads[c].name)),
            "impressions" => Some(json!(m.impressions.to_string())),
            "clicks" => Some(json!(m.clicks.to_string())),
            "spend" => Some(json!(money(m.spend_minor))),
            "reach" => Some(json!(reach.to_string())),
            "frequency" => ratio(m.impressions as f64, reach as f64).map(Value::from),
            "ctr" => ratio(m.clicks as f64 * 100.0, m.impressions as f64).map(Value::from),
            "cpc" => ratio(spend, m.clicks as f64).map(Value::from),
            "cpm" => ratio(spend * 1000.0, m.impressions as f64).map(Value::from),
            "actions" => Some(actions(q, m, false)),
            "conversions" => Some(actions(q, m, true)),
            "action_values" => Some(action_values(q, m)),
            "inline_link_clicks" => Some(json!(m.link_clicks.to_string())),
            _ => None,
        };
        if let Some(v) = v {
            if v.as_array().is_some_and(|a| a.is_empty()) {
                continue; // no actions: the field is absent, like the real API
            }
            o.insert(f.clone(), v);
        }
    }
    for (b, val) in q.breakdowns.iter().zip(combo) {
        o.insert(b.clone(), json!(val));
    }
    o.insert("date_start".into(), json!(start.to_string()));
    o.insert("date_stop".into(), json!(stop.to_string()));
    if st.opts.faults.schema_changed(start) {
        // Schema change: a field the client did not ask for starts to appear.
        o.insert("attribution_setting".into(), json!("7d_click_1d_view"));
    }
    Value::Object(o)
}

fn actions(q: &Query, m: &FbMetrics, purchases_only: bool) -> Value {
    let mut out = Vec::new();
    let windows = |c1: i64, c7: i64, v1: i64| -> Value {
        let mut o = Map::new();
        o.insert("value".into(), json!((c7 + v1).to_string()));
        for w in &q.windows {
            let x = match w.as_str() {
                "1d_click" => c1,
                "7d_click" | "28d_click" => c7,
                "1d_view" | "7d_view" => v1,
                _ => c7 + v1,
            };
            o.insert(w.clone(), json!(x.to_string()));
        }
        Value::Object(o)
    };
    if !purchases_only && m.link_clicks > 0 {
        let mut v = windows(m.link_clicks, m.link_clicks, 0);
        v["action_type"] = json!("link_click");
        out.push(v);
    }
    let total = m.purchases_7d_click + m.purchases_1d_view;
    if total > 0 {
        let mut v = windows(
            m.purchases_1d_click,
            m.purchases_7d_click,
            m.purchases_1d_view,
        );
        v["action_type"] = json!(if purchases_only {
            "offsite_conversion.fb_pixel_purchase"
        } else {
            "purchase"
        });
        out.push(v);
    }
    // action_type first, like the real payload.
    Value::Array(
        out.into_iter()
            .map(|v| {
                let mut o = Map::new();
                o.insert("action_type".into(), v["action_type"].clone());
                for (k, x) in v.as_object().into_iter().flatten() {
                    if k != "action_type" {
                        o.insert(k.clone(), x.clone());
                    }
                }
                Value::Object(o)
            })
            .collect(),
    )
}

fn action_values(q: &Query, m: &FbMetrics) -> Value {
    if m.purchase_value_minor <= 0 {
        return json!([]);
    }
    let mut o = Map::new();
    o.insert("action_type".into(), json!("purchase"));
    o.insert("value".into(), json!(money(m.purchase_value_minor)));
    for w in &q.windows {
        o.insert(w.clone(), json!(money(m.purchase_value_minor)));
    }
    json!([Value::Object(o)])
}
