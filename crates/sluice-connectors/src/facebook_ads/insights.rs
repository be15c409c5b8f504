//! Reading insights for one slice (an account × day window).
//!
//! The window is asked for in ONE request with `time_increment=1`: synchronously
//! when it is short, as an async report run otherwise (POST, poll with short
//! growing intervals, page through the results). When the API says the request
//! is too big, or a job fails or stalls, the work is split — shorter windows
//! first, then one request per campaign — and retried here, never handed to the
//! user. Rows are de-duplicated by primary key within the slice (the API can
//! repeat rows across pages, and a split re-reads what a failed job had sent).
//! After an ad-level read, one account-level request checks that ad rows add up
//! to the account totals per day (impressions, clicks, spend — never reach,
//! frequency or ratios) and warns on a mismatch.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use futures::stream::{FuturesUnordered, StreamExt};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use sluice_core::source::{DecodedPage, ErrorClass, PageSink, Slice, SourceError};
use sluice_core::typing::{Origin, Record, Rejected};

use super::api::GraphApi;
use super::config::{InsightsConfig, Level};
use super::entities::{data, land_json, Pager};
use super::streams::{insights_key, insights_request_fields, is_action_list};
use super::FacebookSource;
use crate::http::window::DayWindow;

/// A failing single-day request is retried this many times before the slice fails.
const MAX_SAME_JOB_RETRIES: u32 = 4;
/// Async report runs of one slice waited on at once.
const ASYNC_JOBS_IN_FLIGHT: usize = 4;
/// First pause between async job polls.
const FIRST_POLL: Duration = Duration::from_millis(50);

/// One request's worth of work inside a slice.
#[derive(Debug, Clone)]
struct Job {
    window: DayWindow,
    /// `act_<id>` or, after a split, a campaign id.
    object: String,
    retries: u32,
}

/// Per-day additive totals for reconciliation.
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    impressions: i64,
    clicks: i64,
    spend: Decimal,
}

struct SliceParams {
    account: String,
    currency: Value,
    timezone: Value,
    window: DayWindow,
}

impl SliceParams {
    fn parse(slice: &Slice) -> Result<Self, SourceError> {
        let p = &slice.params;
        let account = p.get("account").and_then(Value::as_str).map(String::from);
        let window = p.get("window").and_then(DayWindow::from_json);
        match (account, window) {
            (Some(account), Some(window)) => Ok(SliceParams {
                account,
                currency: p.get("currency").cloned().unwrap_or(Value::Null),
                timezone: p.get("timezone").cloned().unwrap_or(Value::Null),
                window,
            }),
            _ => Err(SourceError::data(format!(
                "slice `{}` has malformed parameters",
                slice.key
            ))),
        }
    }
}

/// What one read accumulates across its jobs.
struct ReadState<'a> {
    sink: &'a mut dyn PageSink,
    config: &'a InsightsConfig,
    key_fields: Vec<String>,
    actions_only: bool,
    params: SliceParams,
    seen: HashSet<String>,
    duplicates: u64,
    pages: u32,
    totals: BTreeMap<NaiveDate, Totals>,
}

/// Reads the `insights` (or, with `actions_only`, the `insights_actions`) stream for one slice.
pub async fn read(
    source: &FacebookSource,
    config: &InsightsConfig,
    actions_only: bool,
    slice: &Slice,
    sink: &mut dyn PageSink,
) -> Result<(), SourceError> {
    let params = SliceParams::parse(slice)?;
    let api = &source.api;
    let settings = &source.config;
    let mut fields = insights_request_fields(config);
    if actions_only {
        fields.retain(|f| {
            config.level.id_fields().contains(&f.as_str())
                || f == "date_start"
                || f == "date_stop"
                || f == "account_currency"
                || is_action_list(f)
        });
        if !fields.iter().any(|f| is_action_list(f)) {
            fields.push("actions".into());
        }
    }
    let mut state = ReadState {
        sink,
        config,
        key_fields: insights_key(config),
        actions_only,
        seen: HashSet::new(),
        duplicates: 0,
        pages: 0,
        totals: BTreeMap::new(),
        params,
    };
    let mut queue = VecDeque::from([Job {
        window: state.params.window,
        object: state.params.account.clone(),
        retries: 0,
    }]);
    let mut split_by_campaign = false;
    // Async report runs are waited on together (the API runs several per account at
    // once); their results are read one at a time, in completion order.
    let config_ref = state.config;
    let account = state.params.account.clone();
    let mut waiting = FuturesUnordered::new();
    loop {
        if state.sink.is_cancelled() {
            return Err(SourceError::transient("cancelled"));
        }
        let next_is_sync = queue
            .front()
            .map(|job| job.window.days() <= settings.sync_max_days as i64);
        let (job, result) = match next_is_sync {
            Some(true) => {
                let job = queue.pop_front().expect("front exists");
                let result = run_sync(api, settings.page_size, &fields, &job, &mut state).await;
                (job, result)
            }
            Some(false) if waiting.len() < ASYNC_JOBS_IN_FLIGHT => {
                let job = queue.pop_front().expect("front exists");
                waiting.push(wait_for_report(
                    api, settings, &fields, config_ref, &account, job,
                ));
                continue;
            }
            _ => match waiting.next().await {
                Some((job, Ok(run_id))) => {
                    let result = read_report(api, settings, &run_id, &mut state).await;
                    (job, result)
                }
                Some((job, Err(e))) => (job, Err(e)),
                None => break,
            },
        };
        match result {
            Ok(()) => {}
            Err(e) if e.class == ErrorClass::NeedsSplitting => {
                tracing::debug!(object = %job.object, window = %job.window.key(), reason = %e.message, "splitting insights request");
                if let Some((a, b)) = job.window.halves() {
                    queue.push_front(Job {
                        window: b,
                        ..job.clone()
                    });
                    queue.push_front(Job { window: a, ..job });
                } else if !split_by_campaign
                    && job.object == state.params.account
                    && config.level > Level::Campaign
                {
                    split_by_campaign = true;
                    let campaigns =
                        campaign_ids(api, &state.params.account, settings.page_size).await?;
                    for id in campaigns {
                        queue.push_back(Job {
                            object: id,
                            retries: 0,
                            window: job.window,
                        });
                    }
                } else if job.retries < MAX_SAME_JOB_RETRIES {
                    tokio::time::sleep(Duration::from_millis(200 << job.retries)).await;
                    queue.push_back(Job {
                        retries: job.retries + 1,
                        ..job
                    });
                } else {
                    return Err(SourceError::transient(format!(
                        "{}: insights for {} still fail after splitting down to one day: {}",
                        state.params.account,
                        job.window.key(),
                        e.message
                    )));
                }
            }
            Err(e) => return Err(e),
        }
    }
    if state.duplicates > 0 {
        tracing::debug!(account = %state.params.account, duplicates = state.duplicates, "dropped repeated insights rows");
    }
    if !actions_only && config.reconcile && config.level != Level::Account {
        reconcile(api, settings.page_size, &mut state).await?;
    }
    Ok(())
}

/// The common query parameters; `lists_as_json` for form-encoded POST bodies.
fn insights_params(
    fields: &[String],
    config: &InsightsConfig,
    level: Level,
    window: &DayWindow,
    lists_as_json: bool,
) -> Vec<(String, String)> {
    let list = |items: &[String]| {
        if lists_as_json {
            json!(items).to_string()
        } else {
            items.join(",")
        }
    };
    let mut p = vec![
        ("level".to_string(), level.as_str().to_string()),
        ("fields".into(), list(fields)),
        (
            "time_range".into(),
            json!({"since": window.since.to_string(), "until": window.until.to_string()})
                .to_string(),
        ),
        ("time_increment".into(), "1".into()),
    ];
    if !config.breakdowns.is_empty() {
        p.push(("breakdowns".into(), list(&config.breakdowns)));
    }
    if !config.action_attribution_windows.is_empty() {
        p.push((
            "action_attribution_windows".into(),
            list(&config.action_attribution_windows),
        ));
    }
    p
}

async fn run_sync(
    api: &GraphApi,
    page_size: u32,
    fields: &[String],
    job: &Job,
    state: &mut ReadState<'_>,
) -> Result<(), SourceError> {
    let mut base = api.request(
        Method::GET,
        &format!("{}/insights", job.object),
        &state.params.account,
    )?;
    for (k, v) in insights_params(fields, state.config, state.config.level, &job.window, false) {
        base = base.query(&k, v);
    }
    base = base.query("limit", page_size.to_string());
    let mut pager = Pager::new(base);
    while let Some((response, page)) = pager.next(api).await? {
        consume_page(&response, &page, state).await?;
    }
    Ok(())
}

/// Creates an async report run for `job` and polls it with short, growing pauses
/// until it completes (its id) or fails or stalls (`NeedsSplitting`).
async fn wait_for_report(
    api: &GraphApi,
    settings: &super::config::FacebookConfig,
    fields: &[String],
    config: &InsightsConfig,
    account: &str,
    job: Job,
) -> (Job, Result<String, SourceError>) {
    let result = submit_and_poll(api, settings, fields, config, account, &job).await;
    (job, result)
}

async fn submit_and_poll(
    api: &GraphApi,
    settings: &super::config::FacebookConfig,
    fields: &[String],
    config: &InsightsConfig,
    account: &str,
    job: &Job,
) -> Result<String, SourceError> {
    let submit = api
        .request(Method::POST, &format!("{}/insights", job.object), account)?
        .form(insights_params(
            fields,
            config,
            config.level,
            &job.window,
            true,
        ));
    let (_, created) = api.send_json(&submit).await?;
    let Some(run_id) = created.get("report_run_id").and_then(|v| {
        v.as_str()
            .map(String::from)
            .or_else(|| v.as_u64().map(|n| n.to_string()))
    }) else {
        return Err(SourceError::transient(format!(
            "{account}: async insights job was not created: {created}"
        )));
    };

    // A job that stops moving is split like a failed one.
    let mut pause = FIRST_POLL;
    let max_pause = Duration::from_millis(settings.async_max_poll_ms.max(50));
    let stall = Duration::from_secs(settings.async_stall_secs.max(1));
    let mut last_progress = (-1i64, Instant::now());
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause.mul_f64(1.5)).min(max_pause);
        let poll = api.request(Method::GET, &run_id, account)?.query(
            "fields",
            "id,async_status,async_percent_completion,error_code,error_message",
        );
        let (_, status) = api.send_json(&poll).await?;
        let state_name = status
            .get("async_status")
            .and_then(Value::as_str)
            .unwrap_or("");
        let percent = status
            .get("async_percent_completion")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        match state_name {
            "Job Completed" => return Ok(run_id),
            "Job Failed" | "Job Skipped" => {
                let why = status
                    .get("error_message")
                    .and_then(Value::as_str)
                    .unwrap_or(state_name);
                return Err(SourceError::new(
                    ErrorClass::NeedsSplitting,
                    format!(
                        "{account}: async insights job {run_id} for {}: {why}",
                        job.window.key()
                    ),
                ));
            }
            _ => {}
        }
        if percent != last_progress.0 {
            last_progress = (percent, Instant::now());
        } else if last_progress.1.elapsed() > stall {
            return Err(SourceError::new(
                ErrorClass::NeedsSplitting,
                format!(
                    "{account}: async insights job {run_id} stalled at {percent}% for {}s",
                    stall.as_secs()
                ),
            ));
        }
    }
}

/// Pages through a completed report run's rows.
async fn read_report(
    api: &GraphApi,
    settings: &super::config::FacebookConfig,
    run_id: &str,
    state: &mut ReadState<'_>,
) -> Result<(), SourceError> {
    let base = api
        .request(
            Method::GET,
            &format!("{run_id}/insights"),
            &state.params.account,
        )?
        .query("limit", settings.page_size.to_string());
    let mut pager = Pager::new(base);
    while let Some((response, page)) = pager.next(api).await? {
        consume_page(&response, &page, state).await?;
    }
    Ok(())
}

/// Lands a page, then hands over its new rows (or their flattened actions).
async fn consume_page(
    response: &crate::http::ApiResponse,
    page: &Value,
    state: &mut ReadState<'_>,
) -> Result<(), SourceError> {
    let dt = state.params.window.since.to_string();
    let path = land_json(state.sink, &mut state.pages, &dt, response).await?;
    let rows = page_rows(
        page,
        &path,
        &state.params,
        state.config,
        &state.key_fields,
        state.actions_only,
        &mut state.seen,
    );
    state.duplicates += rows.duplicates;
    if !state.actions_only {
        for record in &rows.records {
            add_totals(&mut state.totals, &record.fields);
        }
    }
    if !rows.rejected.is_empty() {
        state.sink.rejected(rows.rejected).await?;
    }
    state.sink.records(rows.records).await
}

/// The records of one landed insights page.
struct PageRows {
    records: Vec<Record>,
    rejected: Vec<Rejected>,
    duplicates: u64,
}

/// Turns a page into records: slice context added, rows already seen in the slice
/// dropped, actions flattened for `insights_actions`. Shared by `read` and replay.
fn page_rows(
    page: &Value,
    path: &std::sync::Arc<str>,
    params: &SliceParams,
    config: &InsightsConfig,
    key_fields: &[String],
    actions_only: bool,
    seen: &mut HashSet<String>,
) -> PageRows {
    let mut out = PageRows {
        records: Vec::new(),
        rejected: Vec::new(),
        duplicates: 0,
    };
    for (i, row) in data(page).iter().enumerate() {
        let origin = Origin {
            page: path.clone(),
            line: i as u64 + 1,
        };
        let Some(obj) = row.as_object() else {
            out.rejected.push(Rejected {
                origin,
                reason: "insights row is not a JSON object".into(),
                raw: row.to_string(),
            });
            continue;
        };
        let mut fields = obj.clone();
        fields
            .entry("account_currency")
            .or_insert(params.currency.clone());
        fields.insert("account_timezone".into(), params.timezone.clone());
        let key = key_fields
            .iter()
            .map(|k| fields.get(k).map(value_text).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\u{1f}");
        if !seen.insert(key) {
            out.duplicates += 1;
            continue;
        }
        if actions_only {
            out.records
                .extend(flatten_actions(&fields, config, &origin));
        } else {
            out.records.push(Record { fields, origin });
        }
    }
    out
}

/// Decodes a landed insights page for a replay of `slice`.
pub fn decode(
    config: &InsightsConfig,
    actions_only: bool,
    slice: &Slice,
    path: &std::sync::Arc<str>,
    body: &[u8],
    seen: &mut HashSet<String>,
) -> Result<DecodedPage, SourceError> {
    let params = SliceParams::parse(slice)?;
    let page: Value = serde_json::from_slice(body)
        .map_err(|e| SourceError::data(format!("{path}: malformed JSON: {e}")))?;
    let rows = page_rows(
        &page,
        path,
        &params,
        config,
        &insights_key(config),
        actions_only,
        seen,
    );
    Ok(DecodedPage {
        records: rows.records,
        rejected: rows.rejected,
    })
}

/// One row per entry of each action list, attribution windows as `value_<window>` columns.
fn flatten_actions(
    row: &Map<String, Value>,
    config: &InsightsConfig,
    origin: &Origin,
) -> Vec<Record> {
    let mut keys: Vec<&str> = vec!["account_id"];
    if config.level != Level::Account {
        keys.push(config.level.key_field());
    }
    keys.push("date_start");
    keys.extend(config.breakdowns.iter().map(String::as_str));
    let mut out = Vec::new();
    for (metric, list) in row.iter().filter(|(k, _)| is_action_list(k)) {
        for entry in list.as_array().into_iter().flatten() {
            let Some(entry) = entry.as_object() else {
                continue;
            };
            let mut fields = Map::new();
            for k in &keys {
                fields.insert(k.to_string(), row.get(*k).cloned().unwrap_or(Value::Null));
            }
            fields.insert("metric".into(), json!(metric));
            for (k, v) in entry {
                let column = match k.as_str() {
                    "action_type" | "value" => k.clone(),
                    // Attribution windows (1d_click, 7d_view, …) become value_<window>.
                    w if w.starts_with(|c: char| c.is_ascii_digit()) || w == "default" => {
                        format!("value_{w}")
                    }
                    other => other.to_string(),
                };
                fields.insert(column, v.clone());
            }
            fields.insert(
                "account_currency".into(),
                row.get("account_currency").cloned().unwrap_or(Value::Null),
            );
            fields.insert(
                "account_timezone".into(),
                row.get("account_timezone").cloned().unwrap_or(Value::Null),
            );
            out.push(Record {
                fields,
                origin: origin.clone(),
            });
        }
    }
    out
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn int(v: Option<&Value>) -> i64 {
    v.and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
    .unwrap_or(0)
}

fn money(v: Option<&Value>) -> Decimal {
    v.and_then(|v| match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    })
    .unwrap_or_default()
}

fn add_totals(totals: &mut BTreeMap<NaiveDate, Totals>, row: &Map<String, Value>) {
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

async fn campaign_ids(
    api: &GraphApi,
    account: &str,
    page_size: u32,
) -> Result<Vec<String>, SourceError> {
    let base = api
        .request(Method::GET, &format!("{account}/campaigns"), account)?
        .query("fields", "id")
        .query("limit", page_size.to_string());
    let mut pager = Pager::new(base);
    let mut ids = Vec::new();
    while let Some((_, page)) = pager.next(api).await? {
        ids.extend(
            data(&page)
                .iter()
                .filter_map(|c| c.get("id").and_then(Value::as_str).map(String::from)),
        );
    }
    Ok(ids)
}

/// Compares the slice's per-day sums with the account-level totals (one extra request).
async fn reconcile(
    api: &GraphApi,
    page_size: u32,
    state: &mut ReadState<'_>,
) -> Result<(), SourceError> {
    let account = state.params.account.clone();
    let window = state.params.window;
    let fields = ["impressions", "clicks", "spend", "date_start"].map(String::from);
    let totals_config = InsightsConfig {
        breakdowns: Vec::new(),
        action_attribution_windows: Vec::new(),
        ..state.config.clone()
    };
    let mut base = api.request(Method::GET, &format!("{account}/insights"), &account)?;
    for (k, v) in insights_params(&fields, &totals_config, Level::Account, &window, false) {
        base = base.query(&k, v);
    }
    base = base.query("limit", page_size.to_string());
    let mut pager = Pager::new(base);
    let mut reported: BTreeMap<NaiveDate, Totals> = BTreeMap::new();
    let mut seen_days = HashSet::new();
    while let Some((_, page)) = pager.next(api).await? {
        for row in data(&page) {
            if let Some(obj) = row.as_object() {
                // Account rows can repeat too (duplicate faults): one per day.
                if seen_days.insert(obj.get("date_start").map(value_text).unwrap_or_default()) {
                    add_totals(&mut reported, obj);
                }
            }
        }
    }
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
    Ok(())
}
