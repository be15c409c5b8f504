//! The Facebook Marketing (Graph) API emulation, under `/vNN.0/…`.
//!
//! Serves `/me/adaccounts`, `/act_<id>`, campaigns/adsets/ads, sync
//! insights at every level (ad-level rows are the unit; every other level is
//! their sum, so levels agree unless the inconsistent-day fault is on), the
//! async report-run flow, batch requests, usage headers and the Graph error
//! object. Every metric is a string, money an exact decimal string.
//!
//! Why one file of ~790 lines: one emulated API's routes, paging, usage headers,
//! entities and faults; insights queries and rows are in `insights.rs`, the async
//! report-run flow in `report_runs.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use serde_json::{json, Map, Value};

use crate::data::World;
use crate::faults::Hit;
use crate::{credentials, decode_cursor, encode_cursor, AppState, Reply, Req};

mod insights;
mod report_runs;

use insights::{insights, parse_query, query_size, Query};

use report_runs::{create_job, job_insights, job_status, Job};

/// Versions below this answer 2635 (deprecated).
pub const MIN_VERSION: u32 = 22;
/// Requests per account per minute that count as 100 % usage in the headers.
const USAGE_CALLS_PER_MINUTE: usize = 300;

/// Server-side state of the Facebook API: async jobs and usage windows.
#[derive(Default)]
pub struct FbState {
    jobs: Mutex<HashMap<String, Job>>,
    usage: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// The Graph error for a request that asks for too much at once.
const REDUCE_DATA: &str =
    "Please reduce the amount of data you're asking for, then retry your request";

#[derive(Clone, Copy, Debug)]
enum Scope {
    Account(usize),
    Campaign(usize),
    Adset(usize),
    Ad(usize),
}

/// A Graph API error reply.
pub(crate) fn error(
    http: u16,
    code: i64,
    subcode: Option<i64>,
    message: &str,
    transient: bool,
    seq: u64,
) -> Reply {
    let mut e = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "is_transient": transient,
        "fbtrace_id": crate::request_id(seq, "fb"),
    });
    if let Some(s) = subcode {
        e["error_subcode"] = json!(s);
        e["error_user_title"] = json!(user_title(code));
        e["error_user_msg"] = json!(message);
    }
    Reply::json(http, &json!({ "error": e }))
}

fn user_title(code: i64) -> &'static str {
    match code {
        17 | 4 | 80000 | 80004 | 613 => "Rate limit reached",
        190 => "Session expired",
        1 | 2 => "Temporary error",
        _ => "Invalid request",
    }
}

fn bad_param(seq: u64, msg: &str) -> Reply {
    error(400, 100, None, &format!("(#100) {msg}"), false, seq)
}

pub(crate) fn handle(st: &AppState, r: &Req) -> Reply {
    let version = r.segments[0].clone();
    let mut reply = handle_inner(st, r);
    reply = reply.header("facebook-api-version", version);
    reply
        .header("x-fb-trace-id", crate::request_id(r.seq, "trace"))
        .with_sunset_notice(&st.opts)
}

fn handle_inner(st: &AppState, r: &Req) -> Reply {
    let f = &st.opts.faults;
    let major: u32 = r.segments[0]
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if f.deprecated_version || major < MIN_VERSION {
        return error(
            400,
            2635,
            None,
            &format!(
                "(#2635) You are calling a deprecated version of the Ads API. Please update to the latest version: v26.0. (called {})",
                r.segments[0]
            ),
            false,
            r.seq,
        );
    }
    let bearer = r
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    let token = r.param("access_token").map(str::to_string).or(bearer);
    match token.as_deref() {
        None => {
            return error(
                400,
                2500,
                None,
                "An active access token must be used to query information about the current user.",
                false,
                r.seq,
            )
        }
        Some(t) if t != credentials::FACEBOOK_ACCESS_TOKEN => {
            return error(
                400,
                190,
                Some(467),
                "Invalid OAuth access token - Cannot parse access token",
                false,
                r.seq,
            )
        }
        _ => {}
    }
    if f.expired_token {
        return error(
            400,
            190,
            Some(463),
            "Error validating access token: Session has expired. The current time is later than the expiry time.",
            false,
            r.seq,
        );
    }
    let account = account_of(st, r);
    let usage = usage_pct(st, account.map(|a| st.world.fb_accounts[a].id.as_str()));
    let is_insights = r.segments.last().is_some_and(|s| s == "insights");
    let with_usage =
        |reply: Reply, pct: u32| -> Reply { usage_headers(st, reply, account, pct, is_insights) };
    match f.hit(r.seq) {
        Some(Hit::RateLimit) => {
            let (code, sub, msg) = if is_insights {
                (80000, 2446079, "(#80000) There have been too many calls from this ad-account. Wait a bit and try again.")
            } else if (r.seq / f.rate_limit_every.unwrap_or(1)).is_multiple_of(2) {
                (4, 1504022, "(#4) Application request limit reached")
            } else {
                (17, 2446079, "(#17) User request limit reached")
            };
            // An injected throttle is momentary: the usage headers keep telling the
            // real budget (regain 0 unless it is really spent), so a client that
            // honours them backs off briefly instead of sitting out a minute.
            return with_usage(error(400, code, Some(sub), msg, true, r.seq), usage);
        }
        Some(Hit::ServerError) => {
            let (http, code, msg) = if (r.seq / f.server_error_every.unwrap_or(1)).is_multiple_of(2)
            {
                (500, 1, "An unknown error occurred")
            } else {
                (
                    503,
                    2,
                    "An unexpected error has occurred. Please retry your request later.",
                )
            };
            return with_usage(error(http, code, Some(99), msg, true, r.seq), usage);
        }
        _ => {}
    }
    with_usage(route(st, r), usage)
}

fn route(st: &AppState, r: &Req) -> Reply {
    let w = &st.world;
    let seg: Vec<&str> = r.segments[1..].iter().map(String::as_str).collect();
    let post = r.method == axum::http::Method::POST;
    match seg.as_slice() {
        [] if post => batch(st, r),
        ["me", "adaccounts"] => {
            let fields = list_param(r.param("fields"))
                .unwrap_or_else(|| vec!["account_id".into(), "id".into()]);
            let rows: Vec<Value> = (0..w.fb_accounts.len())
                .map(|a| account_json(w, a, &fields))
                .collect();
            page(st, r, rows, 25)
        }
        [node] if node.starts_with("act_") => match w.fb_account_index(&node[4..]) {
            Some(a) => {
                let fields = list_param(r.param("fields")).unwrap_or_else(|| vec!["id".into()]);
                Reply::json(200, &account_json(w, a, &fields))
            }
            None => unknown_object(r, node),
        },
        [node, "insights"] => {
            if !post {
                if let Some(reply) = job_insights(st, r, node) {
                    return reply;
                }
            }
            let Some(scope) = scope_of(w, node) else {
                return unknown_object(r, node);
            };
            let query = match parse_query(st, r, scope) {
                Ok(q) => q,
                Err(e) => return e,
            };
            if post {
                return create_job(st, r, query);
            }
            let too_big = st
                .opts
                .faults
                .reduce_data_above
                .is_some_and(|limit| query_size(w, &query) > limit);
            if too_big || st.opts.faults.too_many_fields(query.fields.len()) {
                return error(500, 1, Some(1487534), REDUCE_DATA, false, r.seq);
            }
            let rows = insights(st, &query);
            page(st, r, rows, query.limit)
        }
        [node, edge @ ("campaigns" | "adsets" | "ads")] if node.starts_with("act_") => {
            match w.fb_account_index(&node[4..]) {
                Some(a) => entities(st, r, a, edge),
                None => unknown_object(r, node),
            }
        }
        [id] => {
            if let Some(reply) = job_status(st, r, id) {
                return reply;
            }
            let fields = list_param(r.param("fields")).unwrap_or_else(|| vec!["id".into()]);
            match entity_by_id(st, id, &fields) {
                Some(v) => Reply::json(200, &v),
                None => unknown_object(r, id),
            }
        }
        _ => bad_param(r.seq, &format!("Unsupported {} request", r.method)),
    }
}

fn unknown_object(r: &Req, id: &str) -> Reply {
    error(
        400,
        100,
        Some(33),
        &format!(
            "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
        ),
        false,
        r.seq,
    )
}

/// A `filtering` value as strings: an array's items, or the one value.
fn filter_values(value: &Value) -> Vec<String> {
    let text = |x: &Value| {
        x.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| x.to_string())
    };
    match value {
        Value::Array(items) => items.iter().map(text).collect(),
        x => vec![text(x)],
    }
}

/// Which account a request is about, for the usage headers.
fn account_of(st: &AppState, r: &Req) -> Option<usize> {
    let w = &st.world;
    let node = r.segments.get(1)?;
    if let Some(id) = node.strip_prefix("act_") {
        return w.fb_account_index(id);
    }
    if let Some(job) = st.facebook.jobs.lock().ok()?.get(node.as_str()) {
        return Some(job.account);
    }
    match scope_of(w, node)? {
        Scope::Account(a) => Some(a),
        Scope::Campaign(c) => Some(w.fb_campaigns[c].account),
        Scope::Adset(s) => Some(w.fb_adsets[s].account),
        Scope::Ad(a) => Some(w.fb_ads[a].account),
    }
}

/// Percent of the per-minute budget used by the account (or all accounts).
fn usage_pct(st: &AppState, account: Option<&str>) -> u32 {
    let key = account.unwrap_or("app").to_string();
    let now = Instant::now();
    let Ok(mut usage) = st.facebook.usage.lock() else {
        return 0;
    };
    let q = usage.entry(key).or_default();
    q.push_back(now);
    while q
        .front()
        .is_some_and(|t| now.duration_since(*t).as_secs() >= 60)
    {
        q.pop_front();
    }
    ((q.len() * 100 / USAGE_CALLS_PER_MINUTE).min(100)) as u32
}

fn usage_headers(
    st: &AppState,
    reply: Reply,
    account: Option<usize>,
    pct: u32,
    insights: bool,
) -> Reply {
    let regain = if pct >= 100 { 1 } else { 0 };
    let mut reply = reply.header(
        "x-app-usage",
        json!({"call_count": pct, "total_time": pct * 4 / 5, "total_cputime": pct * 3 / 5})
            .to_string(),
    );
    if let Some(a) = account {
        let acc = &st.world.fb_accounts[a];
        let mut buc = Map::new();
        buc.insert(
            acc.business_id.clone(),
            json!([{"type": if insights { "ads_insights" } else { "ads_management" },
                "call_count": pct, "total_cputime": pct * 9 / 10, "total_time": pct * 9 / 10,
                "estimated_time_to_regain_access": regain, "ads_api_access_tier": "standard_access"}]),
        );
        reply = reply
            .header("x-business-use-case-usage", Value::Object(buc).to_string())
            .header(
                "x-ad-account-usage",
                json!({"acc_id_util_pct": pct as f64, "reset_time_duration": if pct > 0 { 60 } else { 0 },
                    "ads_api_access_tier": "standard_access"})
                .to_string(),
            );
        if insights {
            reply = reply.header(
                "x-fb-ads-insights-throttle",
                json!({"app_id_util_pct": pct / 2, "acc_id_util_pct": pct, "ads_api_access_tier": "standard_access"}).to_string(),
            );
        }
    }
    reply
}

/// List parameters arrive comma-separated (GET) or as JSON arrays (SDK POSTs).
fn list_param(v: Option<&str>) -> Option<Vec<String>> {
    let v = v?.trim();
    if v.is_empty() {
        return None;
    }
    if v.starts_with('[') {
        let arr: Vec<Value> = serde_json::from_str(v).ok()?;
        return Some(
            arr.into_iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect(),
        );
    }
    Some(
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

fn scope_of(w: &World, node: &str) -> Option<Scope> {
    if let Some(id) = node.strip_prefix("act_") {
        return w.fb_account_index(id).map(Scope::Account);
    }
    if let Some(i) = w.fb_campaigns.iter().position(|c| c.id == node) {
        return Some(Scope::Campaign(i));
    }
    if let Some(i) = w.fb_adsets.iter().position(|c| c.id == node) {
        return Some(Scope::Adset(i));
    }
    w.fb_ads.iter().position(|c| c.id == node).map(Scope::Ad)
}

fn scope_account(w: &World, s: Scope) -> usize {
    match s {
        Scope::Account(a) => a,
        Scope::Campaign(c) => w.fb_campaigns[c].account,
        Scope::Adset(c) => w.fb_adsets[c].account,
        Scope::Ad(c) => w.fb_ads[c].account,
    }
}

/// Cursor paging over a full result.
fn page(st: &AppState, r: &Req, mut rows: Vec<Value>, default_limit: usize) -> Reply {
    let limit = r
        .param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(default_limit)
        .clamp(1, 10_000);
    let offset = r
        .param("after")
        .and_then(decode_cursor)
        .and_then(|c| c.strip_prefix("o:").and_then(|n| n.parse::<usize>().ok()))
        .unwrap_or(0);
    let total = rows.len();
    let end = (offset + limit).min(total);
    let mut data: Vec<Value> = if offset < total {
        rows.drain(offset..end).collect()
    } else {
        vec![]
    };
    if !data.is_empty() && st.opts.faults.duplicate(r.seq) {
        let first = data[0].clone();
        data.push(first);
    }
    let mut body = json!({ "data": data });
    if total > 0 {
        let mut paging = json!({"cursors": {"before": encode_cursor(&format!("o:{offset}")),
            "after": encode_cursor(&format!("o:{}", end.max(offset)))}});
        if end < total {
            let mut params: Vec<(String, String)> = r
                .params
                .iter()
                .filter(|(k, _)| k != "after")
                .cloned()
                .collect();
            params.push(("after".into(), encode_cursor(&format!("o:{end}"))));
            let qs: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish();
            paging["next"] = json!(format!("{}{}?{}", r.origin, r.path, qs));
        }
        if offset > 0 {
            paging["previous"] = json!(format!(
                "{}{}?before={}",
                r.origin,
                r.path,
                encode_cursor(&format!("o:{offset}"))
            ));
        }
        body["paging"] = paging;
    }
    Reply::json(200, &body)
}

fn ts(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S+0000").to_string()
}

/// `updated_time` as of `today`: edits after today have not happened yet.
fn updated_as_of(
    created: NaiveDateTime,
    updated: NaiveDateTime,
    today: NaiveDate,
) -> NaiveDateTime {
    let cap = (today - Duration::days(1)).and_time(updated.time());
    updated.min(cap).max(created)
}

fn account_json(w: &World, a: usize, fields: &[String]) -> Value {
    let acc = &w.fb_accounts[a];
    let mut o = Map::new();
    for f in fields {
        let v = match f.as_str() {
            "id" => json!(format!("act_{}", acc.id)),
            "account_id" => json!(acc.id),
            "name" => json!(acc.name),
            "currency" => json!(acc.currency),
            "timezone_name" => json!(acc.timezone),
            "timezone_offset_hours_utc" => json!(acc.tz_offset_hours),
            "account_status" => json!(1),
            "business" => json!({"id": acc.business_id, "name": "Sandbox Business"}),
            _ => continue,
        };
        o.insert(f.clone(), v);
    }
    o.entry("id").or_insert(json!(format!("act_{}", acc.id)));
    Value::Object(o)
}

fn entity_json(st: &AppState, kind: &str, i: usize, fields: &[String]) -> Option<Value> {
    let w = &st.world;
    let today = st.opts.today;
    let (id, account, name, created, updated, start, budget, campaign, adset, objective) =
        match kind {
            "campaigns" => {
                let c = &w.fb_campaigns[i];
                (
                    &c.id,
                    c.account,
                    &c.name,
                    c.created,
                    c.updated,
                    c.start,
                    Some(c.daily_budget_minor),
                    None,
                    None,
                    Some(c.objective),
                )
            }
            "adsets" => {
                let c = &w.fb_adsets[i];
                (
                    &c.id,
                    c.account,
                    &c.name,
                    c.created,
                    c.updated,
                    c.start,
                    Some(c.daily_budget_minor),
                    Some(c.campaign),
                    None,
                    None,
                )
            }
            _ => {
                let c = &w.fb_ads[i];
                (
                    &c.id,
                    c.account,
                    &c.name,
                    c.created,
                    c.updated,
                    c.start,
                    None,
                    Some(c.campaign),
                    Some(c.adset),
                    None,
                )
            }
        };
    if created.date() > today {
        return None;
    }
    let updated = updated_as_of(created, updated, today);
    let mut o = Map::new();
    o.insert("id".into(), json!(id));
    for f in fields {
        let v = match f.as_str() {
            "id" => continue,
            "name" => json!(name),
            "account_id" => json!(w.fb_accounts[account].id),
            "status" | "configured_status" | "effective_status" => json!("ACTIVE"),
            "objective" => match objective {
                Some(x) => json!(x),
                None => continue,
            },
            "buying_type" if kind == "campaigns" => json!("AUCTION"),
            "daily_budget" => match budget {
                Some(b) => json!(b.to_string()),
                None => continue,
            },
            "created_time" => json!(ts(created)),
            "updated_time" => json!(ts(updated)),
            "start_time" => json!(ts(start.and_hms_opt(0, 0, 0).unwrap_or(created))),
            // Omitted, not null, where a campaign has no scheduled end (as the Graph API does).
            "stop_time" if kind == "campaigns" => match w.fb_campaigns[i].stop {
                Some(stop) => json!(ts(stop.and_hms_opt(0, 0, 0).unwrap_or(created))),
                None => continue,
            },
            "campaign_id" => match campaign {
                Some(c) => json!(w.fb_campaigns[c].id),
                None => continue,
            },
            "adset_id" => match adset {
                Some(c) => json!(w.fb_adsets[c].id),
                None => continue,
            },
            "billing_event" if kind == "adsets" => json!("IMPRESSIONS"),
            "optimization_goal" if kind == "adsets" => json!("OFFSITE_CONVERSIONS"),
            "creative" if kind == "ads" => {
                json!({"id": (id.parse::<u64>().unwrap_or(0) + 1).to_string()})
            }
            _ => continue,
        };
        o.insert(f.clone(), v);
    }
    Some(Value::Object(o))
}

fn entities(st: &AppState, r: &Req, account: usize, kind: &str) -> Reply {
    let w = &st.world;
    let fields = list_param(r.param("fields")).unwrap_or_else(|| vec!["id".into()]);
    let n = match kind {
        "campaigns" => w.fb_campaigns.len(),
        "adsets" => w.fb_adsets.len(),
        _ => w.fb_ads.len(),
    };
    let mut filters: Vec<(String, String, Value)> = Vec::new();
    if let Some(fl) = r.param("filtering") {
        let Ok(v) = serde_json::from_str::<Vec<Value>>(fl) else {
            return bad_param(
                r.seq,
                "filtering must be a JSON array of {field, operator, value}",
            );
        };
        for f in v {
            let field = f
                .get("field")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let op = f
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let ok = match field.as_str() {
                "updated_time" | "created_time" => [
                    "GREATER_THAN",
                    "LESS_THAN",
                    "GREATER_THAN_OR_EQUAL",
                    "LESS_THAN_OR_EQUAL",
                ]
                .contains(&op.as_str()),
                "id" | "effective_status" | "campaign.id" | "adset.id" => {
                    ["IN", "EQUAL", "NOT_IN"].contains(&op.as_str())
                }
                _ => false,
            };
            if !ok {
                return bad_param(
                    r.seq,
                    &format!("Filtering field {field} with operation {op} is not supported"),
                );
            }
            filters.push((field, op, f.get("value").cloned().unwrap_or(Value::Null)));
        }
    }
    let today = st.opts.today;
    let all_fields: Vec<String> = [
        "id",
        "updated_time",
        "created_time",
        "effective_status",
        "campaign_id",
        "adset_id",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Value> = (0..n)
        .filter(|&i| {
            let acc = match kind {
                "campaigns" => w.fb_campaigns[i].account,
                "adsets" => w.fb_adsets[i].account,
                _ => w.fb_ads[i].account,
            };
            acc == account
        })
        .filter_map(|i| {
            let full = entity_json(st, kind, i, &all_fields)?;
            let keep = filters.iter().all(|(field, op, val)| {
                let as_unix = |s: &str| {
                    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
                        .map(|d| d.timestamp())
                        .unwrap_or(0)
                };
                match field.as_str() {
                    "updated_time" | "created_time" => {
                        let t = as_unix(full[field.as_str()].as_str().unwrap_or_default());
                        let v = val
                            .as_i64()
                            .or_else(|| val.as_str().and_then(|s| s.parse().ok()))
                            .unwrap_or(0);
                        match op.as_str() {
                            "GREATER_THAN" => t > v,
                            "LESS_THAN" => t < v,
                            "GREATER_THAN_OR_EQUAL" => t >= v,
                            _ => t <= v,
                        }
                    }
                    _ => {
                        let key = field.replace('.', "_");
                        let have = full
                            .get(key.as_str())
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let vals = filter_values(val);
                        let inside = vals.contains(&have);
                        if op == "NOT_IN" {
                            !inside
                        } else {
                            inside
                        }
                    }
                }
            });
            let _ = today;
            if keep {
                entity_json(st, kind, i, &fields)
            } else {
                None
            }
        })
        .collect();
    page(st, r, rows, 25)
}

fn entity_by_id(st: &AppState, id: &str, fields: &[String]) -> Option<Value> {
    let w = &st.world;
    if let Some(i) = w.fb_campaigns.iter().position(|c| c.id == id) {
        return entity_json(st, "campaigns", i, fields);
    }
    if let Some(i) = w.fb_adsets.iter().position(|c| c.id == id) {
        return entity_json(st, "adsets", i, fields);
    }
    let i = w.fb_ads.iter().position(|c| c.id == id)?;
    entity_json(st, "ads", i, fields)
}

// ------------------------------------------------------------ batch

fn batch(st: &AppState, r: &Req) -> Reply {
    let Some(b) = r.param("batch") else {
        return bad_param(
            r.seq,
            "Unsupported post request (sandbox: only batch=[…] is served at the root)",
        );
    };
    let Ok(calls) = serde_json::from_str::<Vec<Value>>(b) else {
        return bad_param(r.seq, "batch must be a JSON array");
    };
    if calls.len() > 50 {
        return bad_param(
            r.seq,
            "Too many requests in batch message. Maximum batch size is 50",
        );
    }
    let out: Vec<Value> = calls
        .iter()
        .map(|c| {
            let method = c.get("method").and_then(Value::as_str).unwrap_or("GET").to_uppercase();
            let rel = c.get("relative_url").and_then(Value::as_str).unwrap_or_default();
            let (path, query) = rel.split_once('?').unwrap_or((rel, ""));
            let mut segments = vec![r.segments[0].clone()];
            segments.extend(path.split('/').filter(|s| !s.is_empty() && !s.starts_with('v')).map(str::to_string));
            let mut params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            if let Some(body) = c.get("body").and_then(Value::as_str) {
                params.extend(url::form_urlencoded::parse(body.as_bytes()).into_owned());
            }
            if !params.iter().any(|(k, _)| k == "access_token") {
                if let Some(t) = r.param("access_token") {
                    params.push(("access_token".into(), t.into()));
                }
            }
            let sub = Req {
                method: method.parse().unwrap_or(axum::http::Method::GET),
                path: format!("/{}/{}", r.segments[0], path.trim_start_matches('/')),
                segments,
                params,
                headers: r.headers.clone(),
                body: vec![],
                origin: r.origin.clone(),
                seq: st.counters.next(crate::faults::Api::Facebook),
            };
            let reply = handle(st, &sub);
            let headers: Vec<Value> = reply.headers.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
            json!({"code": reply.status, "headers": headers, "body": String::from_utf8_lossy(&reply.body)})
        })
        .collect();
    Reply::json(200, &Value::Array(out))
}
