//! The CleverTap REST API emulation, under `/1/…`.
//!
//! Events and profiles use the real two-step cursor flow (POST the window,
//! GET pages with `cursor` until no `next_cursor`). Cursors are stateless
//! (they encode the position), so reading one twice gives the same page.
//! Counts answer at once. Errors are `{"status":"fail","error":…,"code":…}`.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use chrono::{Duration, NaiveDate};
use serde_json::{json, Value};

use crate::data::{self, CT_EVENTS};
use crate::faults::{every, Hit};
use crate::{credentials, decode_cursor, encode_cursor, AppState, Reply, Req};

const DEFAULT_BATCH: usize = 100;
const MAX_BATCH: usize = 5000;

#[derive(Default)]
pub struct CtState {
    /// Windows whose cursor expired once; their restarted cursors are spared.
    expired_windows: Mutex<HashSet<String>>,
}

fn fail(http: u16, code: i64, msg: &str) -> Reply {
    Reply::json(http, &json!({"status": "fail", "error": msg, "code": code}))
}

/// `yyyymmdd` integer → date.
fn ymd(v: &Value) -> Option<NaiveDate> {
    let n = v
        .as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))?;
    NaiveDate::from_ymd_opt(
        (n / 10_000) as i32,
        (n / 100 % 100) as u32,
        (n % 100) as u32,
    )
}

fn ymd_num(d: NaiveDate) -> u64 {
    d.format("%Y%m%d").to_string().parse().unwrap_or(0)
}

/// A parsed cursor: what it reads and where it is.
struct Cursor {
    kind: String,
    event: String,
    from: NaiveDate,
    to: NaiveDate,
    day: i64,
    index: u64,
    batch: usize,
    spared: bool,
}

impl Cursor {
    fn encode(&self) -> String {
        encode_cursor(&format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            self.kind,
            self.event,
            ymd_num(self.from),
            ymd_num(self.to),
            self.day,
            self.index,
            self.batch,
            u8::from(self.spared)
        ))
    }

    fn decode(s: &str) -> Option<Cursor> {
        let text = decode_cursor(s)?;
        let p: Vec<&str> = text.split('|').collect();
        if p.len() != 8 {
            return None;
        }
        Some(Cursor {
            kind: p[0].into(),
            event: p[1].into(),
            from: ymd(&json!(p[2]))?,
            to: ymd(&json!(p[3]))?,
            day: p[4].parse().ok()?,
            index: p[5].parse().ok()?,
            batch: p[6].parse().ok()?,
            spared: p[7] == "1",
        })
    }

    fn window(&self) -> String {
        format!("{}|{}|{}|{}", self.kind, self.event, self.from, self.to)
    }
}

pub(crate) fn handle(st: &AppState, r: &Req) -> Reply {
    if r.header("x-clevertap-account-id") != Some(credentials::CLEVERTAP_ACCOUNT_ID) {
        return fail(401, 401, "Invalid Account Id");
    }
    if r.header("x-clevertap-passcode") != Some(credentials::CLEVERTAP_PASSCODE) {
        return fail(401, 401, "Invalid Passcode");
    }
    match st.opts.faults.hit(r.seq) {
        Some(Hit::RateLimit) => return fail(429, 429, "Too many requests"),
        Some(Hit::ServerError) => {
            return fail(503, 503, "Service temporarily unavailable, please retry")
        }
        _ => {}
    }
    let seg: Vec<&str> = r.segments[1..].iter().map(String::as_str).collect();
    let post = r.method == axum::http::Method::POST;
    match (seg.as_slice(), post) {
        (["events.json"], true) => open_window(st, r, "e"),
        (["profiles.json"], true) => open_window(st, r, "p"),
        (["events.json"] | ["profiles.json"], false) => read_page(st, r),
        (["profile.json"], false) => single_profile(st, r),
        (["counts", "events.json"], true) => counts(st, r),
        _ => fail(404, 404, "Unknown endpoint"),
    }
}

/// Validate `{"event_name","from","to"}`.
fn window(st: &AppState, r: &Req) -> Result<(String, NaiveDate, NaiveDate), Reply> {
    let body: Value =
        serde_json::from_slice(&r.body).map_err(|_| fail(400, 400, "Invalid JSON body"))?;
    let event = body
        .get("event_name")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(400, 400, "Missing event_name"))?;
    if !CT_EVENTS.iter().any(|(n, _)| *n == event) {
        return Err(fail(400, 400, &format!("Event not found: {event}")));
    }
    let from = body
        .get("from")
        .and_then(ymd)
        .ok_or_else(|| fail(400, 400, "Invalid from date (expected yyyymmdd)"))?;
    let to = body
        .get("to")
        .and_then(ymd)
        .ok_or_else(|| fail(400, 400, "Invalid to date (expected yyyymmdd)"))?;
    if from > to {
        return Err(fail(400, 400, "Invalid date range: from is after to"));
    }
    let _ = st;
    Ok((event.to_string(), from, to))
}

fn open_window(st: &AppState, r: &Req, kind: &str) -> Reply {
    let (event, from, to) = match window(st, r) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let batch = r
        .param("batch_size")
        .and_then(|b| b.parse().ok())
        .unwrap_or(DEFAULT_BATCH)
        .clamp(1, MAX_BATCH);
    let mut c = Cursor {
        kind: kind.into(),
        event,
        from,
        to,
        day: 0,
        index: 0,
        batch,
        spared: false,
    };
    c.spared = st
        .clevertap
        .expired_windows
        .lock()
        .map(|w| w.contains(&c.window()))
        .unwrap_or(false);
    Reply::json(200, &json!({"status": "success", "cursor": c.encode()}))
}

fn read_page(st: &AppState, r: &Req) -> Reply {
    let Some(c) = r.param("cursor").and_then(Cursor::decode) else {
        return fail(400, 400, "Invalid cursor");
    };
    let n = st.counters.cursor_reads.fetch_add(1, Ordering::SeqCst) + 1;
    if !c.spared && every(st.opts.faults.cursor_expire_every, n) {
        if let Ok(mut w) = st.clevertap.expired_windows.lock() {
            w.insert(c.window());
        }
        return fail(
            400,
            400,
            "Cursor expired. Restart the request for this date window.",
        );
    }
    let dup = st.opts.faults.duplicate(r.seq);
    let (mut records, next) = if c.kind == "e" {
        event_page(st, &c)
    } else {
        profile_page(st, &c)
    };
    if dup && !records.is_empty() {
        records.push(records[0].clone());
    }
    let mut body = json!({"status": "success", "records": records});
    if let Some(n) = next {
        body["next_cursor"] = if st.opts.faults.cursor_cycle {
            json!(c.encode())
        } else {
            json!(n.encode())
        };
    }
    Reply::json(200, &body)
}

fn profile_brief(p: &data::CtProfile) -> Value {
    json!({"objectId": p.object_id, "identity": p.identity, "platform": p.platform,
        "email": p.email, "name": p.name, "phone": p.phone})
}

fn event_page(st: &AppState, c: &Cursor) -> (Vec<Value>, Option<Cursor>) {
    let w = &st.world;
    let today = st.opts.today;
    let n_days = (c.to - c.from).num_days();
    let mut out = Vec::new();
    let (mut day, mut idx) = (c.day, c.index);
    while day <= n_days {
        let date = c.from + Duration::days(day);
        let count = w.ct_event_count(&c.event, date, today);
        while idx < count {
            if out.len() == c.batch {
                return (
                    out,
                    Some(Cursor {
                        day,
                        index: idx,
                        kind: c.kind.clone(),
                        event: c.event.clone(),
                        ..*c
                    }),
                );
            }
            let e = w.ct_event(&c.event, date, idx, count);
            let p = &w.ct_profiles[e.profile];
            out.push(json!({
                "profile": profile_brief(p),
                "ts": e.ts,
                "event_props": w.ct_event_props(&c.event, date, &e, st.opts.faults.schema_changed(date),
                    st.opts.faults.charged_changed(date)),
                "session_props": {"utm_source": (["facebook", "google", "newsletter"][e.profile % 3]),
                    "utm_medium": (["cpc", "cpc", "email"][e.profile % 3])},
            }));
            idx += 1;
        }
        day += 1;
        idx = 0;
    }
    (out, None)
}

/// Profiles that did `event` in the window, ordered by identity.
pub(crate) fn window_profiles(
    st: &AppState,
    event: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> BTreeSet<usize> {
    let w = &st.world;
    window_profiles_of(w, st.opts.today, event, from, to)
}

pub(crate) fn window_profiles_of(
    w: &data::World,
    today: NaiveDate,
    event: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> BTreeSet<usize> {
    let mut set = BTreeSet::new();
    for date in data::days(from, to) {
        let count = w.ct_event_count(event, date, today);
        for i in 0..count {
            set.insert(w.ct_event(event, date, i, count).profile);
        }
    }
    set
}

fn profile_json(p: &data::CtProfile) -> Value {
    json!({"identity": p.identity, "name": p.name, "email": p.email, "phone": p.phone,
        "gender": p.gender,
        "profileData": {"address": p.address, "zip": p.zip, "city": p.city},
        "platformInfo": [{"platform": p.platform, "objectId": p.object_id}]})
}

fn profile_page(st: &AppState, c: &Cursor) -> (Vec<Value>, Option<Cursor>) {
    let all: Vec<usize> = window_profiles(st, &c.event, c.from, c.to)
        .into_iter()
        .collect();
    let start = c.index as usize;
    let end = (start + c.batch).min(all.len());
    let records = all
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|&i| profile_json(&st.world.ct_profiles[i]))
        .collect();
    let next = (end < all.len()).then(|| Cursor {
        index: end as u64,
        kind: c.kind.clone(),
        event: c.event.clone(),
        ..*c
    });
    (records, next)
}

fn single_profile(st: &AppState, r: &Req) -> Reply {
    let found = st.world.ct_profiles.iter().find(|p| {
        r.param("identity").is_some_and(|i| i == p.identity)
            || r.param("objectId").is_some_and(|o| o == p.object_id)
    });
    match found {
        Some(p) => Reply::json(
            200,
            &json!({"status": "success", "record": profile_json(p)}),
        ),
        None => fail(404, 404, "Profile not found"),
    }
}

fn counts(st: &AppState, r: &Req) -> Reply {
    let (event, from, to) = match window(st, r) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let count: u64 = data::days(from, to)
        .map(|d| st.world.ct_event_count(&event, d, st.opts.today))
        .sum();
    Reply::json(200, &json!({"status": "success", "count": count}))
}
