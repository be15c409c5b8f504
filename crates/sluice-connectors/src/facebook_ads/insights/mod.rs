//! Reading insights for one slice (an account × day window).
//!
//! The window is asked for in ONE request with `time_increment=1`: synchronously
//! when it is short, as an async report run otherwise (POST, poll with short
//! growing intervals, page through the results). When the API says a request is
//! too big, or a report run fails or stalls, the work is split at once and
//! retried here, never handed to the user: a report run is asked again as
//! sync-sized windows, a sync window is halved down to single days, a day is
//! read per campaign, and a campaign-day that is still too big is read in groups
//! of fields whose rows are merged by identity (ids, dates, breakdowns) into
//! exactly the rows one request would have given (reported as a warning).
//!
//! Up to [`JOBS_IN_FLIGHT`] requests of a slice are opened at once, each in a
//! task of its own (a report run submitted and polled, or a first page fetched),
//! so a job that waits or fails never holds up the others; pages are landed and
//! handed over one job at a time, in completion order. Rows are de-duplicated by
//! primary key within the slice (the API can repeat rows across pages, and a split
//! re-reads what a failed job had sent). After an ad-level read, the account-level
//! totals (fetched alongside) check that the rows add up per day (impressions,
//! clicks, spend — never reach, frequency or ratios); a mismatch is a warning.
//!
//! This file is the read (jobs, splits, polling, merging field groups); turning a
//! page into records is [`rows`], the account-totals check [`totals`].

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use reqwest::Method;
use serde_json::{json, Value};
use sluice_core::source::{ErrorClass, PageSink, Slice, SourceError};
use tokio::task::JoinSet;

use super::api::GraphApi;
use super::config::{InsightsConfig, Level};
use super::entities::{data, land_json, Pager};
use super::streams::{insights_key, insights_request_fields, is_action_list};
use super::{Account, FacebookSource};
use crate::incremental::DayWindow;
use crate::http::{ApiRequest, ApiResponse, Urgency};

mod rows;
mod totals;

pub use rows::decode;
use rows::{page_rows, value_text, RowMerge};
use totals::{add_totals, fetch_account_totals, reconcile, Totals};

/// The smallest request (one day, one campaign, one field group) is retried this
/// many times before the slice fails.
const MAX_SAME_JOB_RETRIES: u32 = 4;
/// Requests of one slice opened at once (the API runs several report runs per account).
const JOBS_IN_FLIGHT: usize = 4;
/// First interval between async job polls; it grows by half each poll up to
/// `async_max_poll_ms`. Intervals run from one request's sending to the next's.
const FIRST_POLL: Duration = Duration::from_millis(50);
/// Names the landed pages of a field group: they are kept as received, and the
/// page of merged rows landed right after them is the one that decodes.
const FIELD_GROUP_PAGE: &str = "-fieldgroup";
/// Names the page a slice lands before its rows: its account as the API described it
/// (currency, time zone), which every row carries.
const ACCOUNT_PAGE: &str = "account";

/// One request's worth of work inside a slice.
#[derive(Debug, Clone)]
struct Job {
    window: DayWindow,
    /// `act_<id>` or, after a split, a campaign id.
    object: String,
    /// Read in groups of fields whose rows are merged (the last split).
    in_field_groups: bool,
    retries: u32,
}

/// What a job's task hands back: pages to land, in order.
enum Opened {
    /// The first page of a sync request or of a completed report run; the pager reads on.
    /// (Boxed: a request and a response are large next to the other variant.)
    Paged {
        pager: Box<Pager>,
        first: Box<(ApiResponse, Value)>,
    },
    /// Every page of every field group of a one-day request, and how many groups it took.
    FieldGroups {
        pages: Vec<(ApiResponse, Value)>,
        groups: usize,
    },
}

/// What the jobs of one slice share; owned, so jobs run as tasks of their own.
struct JobContext {
    api: GraphApi,
    account: String,
    config: InsightsConfig,
    /// Every field a full request asks for.
    fields: Vec<String>,
    page_size: u32,
    sync_max_days: u64,
    max_poll: Duration,
    stall: Duration,
}

impl JobContext {
    fn sync_request(
        &self,
        object: &str,
        fields: &[String],
        window: &DayWindow,
    ) -> Result<ApiRequest, SourceError> {
        let mut request =
            self.api
                .request(Method::GET, &format!("{object}/insights"), &self.account)?;
        for (k, v) in insights_params(fields, &self.config, self.config.level, window, false) {
            request = request.query(&k, v);
        }
        Ok(request.query("limit", self.page_size.to_string()))
    }

    /// The fields every field group repeats so its rows can be matched: the
    /// level's id and the dates (breakdowns come with every row anyway).
    fn identity_fields(&self) -> Vec<String> {
        let mut fields = vec!["account_id".to_string()];
        if self.config.level != Level::Account {
            fields.push(self.config.level.key_field().to_string());
        }
        fields.extend(["date_start", "date_stop"].map(String::from));
        fields
    }

    /// The fields that can be spread over groups.
    fn groupable_fields(&self) -> Vec<String> {
        let identity = self.identity_fields();
        self.fields
            .iter()
            .filter(|f| !identity.contains(f))
            .cloned()
            .collect()
    }
}

struct SliceParams {
    account: String,
    /// The account's, from its landed page (in slices planned before that page was
    /// landed, from the slice's parameters).
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

    /// Takes the currency and time zone from the account's landed page.
    fn learn(&mut self, account: &Account) {
        self.currency = json!(account.currency);
        self.timezone = json!(account.timezone);
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
    /// Requests read in field groups, and the group requests they took.
    field_group_reads: usize,
    field_group_requests: usize,
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
    let ctx = Arc::new(JobContext {
        api: source.api.clone(),
        account: params.account.clone(),
        config: config.clone(),
        fields,
        page_size: settings.page_size,
        sync_max_days: settings.sync_max_days,
        max_poll: Duration::from_millis(settings.async_max_poll_ms).max(FIRST_POLL),
        stall: Duration::from_secs(settings.async_stall_secs.max(1)),
    });
    // The account totals are fetched alongside the rows, not after them. Tasks in a
    // JoinSet are aborted when it is dropped, so an early return leaves nothing running.
    let mut account_totals = JoinSet::new();
    if !actions_only && config.reconcile && config.level != Level::Account {
        account_totals.spawn(fetch_account_totals(ctx.clone(), params.window));
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
        field_group_reads: 0,
        field_group_requests: 0,
        params,
    };
    let mut jobs = JoinSet::new();
    jobs.spawn(open(
        ctx.clone(),
        Job {
            window: state.params.window,
            object: state.params.account.clone(),
            in_field_groups: false,
            retries: 0,
        },
    ));
    // The account is looked up while the first request (a task of its own) runs, not
    // before it: the rows need its details only once a page has come.
    let account = source.account(&state.params.account).await?;
    land_account(&account, &mut state).await?;
    let mut queue = VecDeque::new();
    loop {
        if state.sink.is_cancelled() {
            return Err(SourceError::transient("cancelled"));
        }
        while jobs.len() < JOBS_IN_FLIGHT {
            let Some(job) = queue.pop_front() else { break };
            jobs.spawn(open(ctx.clone(), job));
        }
        let Some(joined) = jobs.join_next().await else {
            break;
        };
        let (job, opened) = joined.map_err(|e| {
            SourceError::transient(format!(
                "{}: an insights request ended abnormally: {e}",
                ctx.account
            ))
        })?;
        let result = match opened {
            Ok(opened) => consume(&ctx, opened, &mut state).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {}
            Err(e) if e.class == ErrorClass::NeedsSplitting => {
                split(&ctx, job, e, &mut queue).await?;
            }
            Err(e) => return Err(e),
        }
    }
    if state.duplicates > 0 {
        tracing::debug!(account = %state.params.account, duplicates = state.duplicates, "dropped repeated insights rows");
    }
    if state.field_group_reads > 0 {
        state.sink.warn(format!(
            "facebook {} {}: {} one-day requests were too much data even split by campaign, so they were read in {} requests of fewer fields each and their rows merged by {}: the rows are complete, and configuring fewer `fields` would need fewer requests",
            state.params.account,
            state.params.window.key(),
            state.field_group_reads,
            state.field_group_requests,
            state.key_fields.join(", ")
        ));
    }
    if let Some(joined) = account_totals.join_next().await {
        let reported = joined.map_err(|e| {
            SourceError::transient(format!(
                "{}: the account totals request ended abnormally: {e}",
                ctx.account
            ))
        })?;
        match reported {
            Ok(reported) => reconcile(&mut state, &reported),
            // A check, not the data: the rows stand even if the totals are refused.
            Err(e) if e.class == ErrorClass::NeedsSplitting => state.sink.warn(format!(
                "facebook {} {}: not reconciled, the account totals request was refused as too big: {}",
                state.params.account,
                state.params.window.key(),
                e.message
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Decides how a job that was too big is asked again (the order the API's own
/// advice gives: shorter time range, lower level, fewer fields), or gives up.
async fn split(
    ctx: &JobContext,
    job: Job,
    error: SourceError,
    queue: &mut VecDeque<Job>,
) -> Result<(), SourceError> {
    tracing::debug!(object = %job.object, window = %job.window.key(), reason = %error.message, "splitting insights request");
    let sync_days = ctx.sync_max_days as i64;
    let was_report = !job.in_field_groups && job.window.days() > sync_days;
    if was_report && sync_days > 0 {
        // A failed or stalled report run is asked again at once as sync-sized
        // windows: each is one light round trip, while a new report run costs a
        // submit and several polls and can fail again (halving would chain them).
        for window in job.window.chunks(sync_days).into_iter().rev() {
            queue.push_front(Job {
                window,
                retries: 0,
                ..job.clone()
            });
        }
        return Ok(());
    }
    if let Some((a, b)) = job.window.halves() {
        queue.push_front(Job {
            window: b,
            retries: 0,
            ..job.clone()
        });
        queue.push_front(Job {
            window: a,
            retries: 0,
            ..job
        });
        return Ok(());
    }
    if job.object == ctx.account && ctx.config.level > Level::Campaign {
        let ids = campaigns_with_rows(ctx, &job.window).await?;
        if !ids.is_empty() {
            for id in ids.iter().rev() {
                queue.push_front(Job {
                    object: id.clone(),
                    retries: 0,
                    ..job.clone()
                });
            }
            return Ok(());
        }
    }
    if !job.in_field_groups && ctx.groupable_fields().len() > 1 {
        queue.push_front(Job {
            in_field_groups: true,
            retries: 0,
            ..job
        });
        return Ok(());
    }
    if job.retries < MAX_SAME_JOB_RETRIES {
        queue.push_back(Job {
            retries: job.retries + 1,
            ..job
        });
        return Ok(());
    }
    Err(SourceError::transient(format!(
        "{}: insights for {} of {} still fail after splitting down to one day, one campaign and single fields: {}",
        ctx.account,
        job.window.key(),
        job.object,
        error.message
    )))
}

/// A job's task: opens its request(s) and returns what the reader lands.
async fn open(ctx: Arc<JobContext>, job: Job) -> (Job, Result<Opened, SourceError>) {
    if job.retries > 0 {
        // The smallest request failed again: give the API a moment, growing.
        tokio::time::sleep(Duration::from_millis(100 << job.retries.min(6))).await;
    }
    let result = open_job(&ctx, &job).await;
    (job, result)
}

async fn open_job(ctx: &JobContext, job: &Job) -> Result<Opened, SourceError> {
    if job.in_field_groups {
        return read_field_groups(ctx, job).await;
    }
    let request = if job.window.days() <= ctx.sync_max_days as i64 {
        ctx.sync_request(&job.object, &ctx.fields, &job.window)?
    } else {
        let run_id = run_report(ctx, job).await?;
        ctx.api
            .request(Method::GET, &format!("{run_id}/insights"), &ctx.account)?
            .urgency(Urgency::Continues)
            .query("limit", ctx.page_size.to_string())
    };
    first_page(ctx, Pager::new(request)).await
}

async fn first_page(ctx: &JobContext, mut pager: Pager) -> Result<Opened, SourceError> {
    match pager.next(&ctx.api).await? {
        Some(first) => Ok(Opened::Paged {
            pager: Box::new(pager),
            first: Box::new(first),
        }),
        None => Err(SourceError::transient(format!(
            "{}: an insights request returned no page",
            ctx.account
        ))),
    }
}

/// Reads a one-day request in groups of fields, each group with the identity
/// fields; a group that is still too big is halved again.
async fn read_field_groups(ctx: &JobContext, job: &Job) -> Result<Opened, SourceError> {
    let identity = ctx.identity_fields();
    let rest = ctx.groupable_fields();
    let (a, b) = rest.split_at(rest.len().div_ceil(2));
    let mut pending = VecDeque::from([a.to_vec(), b.to_vec()]);
    let mut pages = Vec::new();
    let mut groups = 0;
    while let Some(group) = pending.pop_front() {
        let fields = [identity.as_slice(), group.as_slice()].concat();
        let request = ctx.sync_request(&job.object, &fields, &job.window)?;
        match all_pages(ctx, Pager::new(request)).await {
            Ok(read) => {
                pages.extend(read);
                groups += 1;
            }
            Err(e) if e.class == ErrorClass::NeedsSplitting && group.len() > 1 => {
                let (a, b) = group.split_at(group.len().div_ceil(2));
                pending.push_front(b.to_vec());
                pending.push_front(a.to_vec());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Opened::FieldGroups { pages, groups })
}

async fn all_pages(
    ctx: &JobContext,
    mut pager: Pager,
) -> Result<Vec<(ApiResponse, Value)>, SourceError> {
    let mut pages = Vec::new();
    while let Some(page) = pager.next(&ctx.api).await? {
        pages.push(page);
    }
    Ok(pages)
}

/// Lands and hands over what a job opened, reading the rest of its pages.
async fn consume(
    ctx: &JobContext,
    opened: Opened,
    state: &mut ReadState<'_>,
) -> Result<(), SourceError> {
    match opened {
        Opened::Paged { mut pager, first } => {
            let (response, page) = *first;
            consume_page(&response, page, state).await?;
            while let Some((response, page)) = pager.next(&ctx.api).await? {
                consume_page(&response, page, state).await?;
            }
            Ok(())
        }
        Opened::FieldGroups { pages, groups } => {
            let dt = state.params.window.since.to_string();
            let mut key_fields = state.key_fields.clone();
            key_fields.push("date_stop".into());
            let mut merged = RowMerge::new(key_fields);
            let mut parts = Vec::new();
            for (response, page) in &pages {
                // Every group page is kept as received; only the merged page decodes.
                state.pages += 1;
                let name = format!("p{:05}{FIELD_GROUP_PAGE}", state.pages);
                let landed = state.sink.land(&name, "json", &dt, &response.body).await?;
                parts.push(landed.path.to_string());
                merged.add(data(page));
            }
            let page = json!({"data": merged.rows(), "merged_from": parts});
            let body = serde_json::to_vec(&page)
                .map(bytes::Bytes::from)
                .map_err(|e| {
                    SourceError::data(format!("{}: merged insights page: {e}", ctx.account))
                })?;
            state.pages += 1;
            let name = format!("p{:05}", state.pages);
            let path = state.sink.land(&name, "json", &dt, &body).await?.path;
            state.field_group_reads += 1;
            state.field_group_requests += groups;
            hand_over(page, &path, state).await
        }
    }
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

/// Creates an async report run for `job` and polls it at short, growing intervals
/// until it completes (its id) or fails or stalls (`NeedsSplitting`).
async fn run_report(ctx: &JobContext, job: &Job) -> Result<String, SourceError> {
    let account = &ctx.account;
    let submit = ctx
        .api
        .request(Method::POST, &format!("{}/insights", job.object), account)?
        .urgency(Urgency::StartsJob)
        .form(insights_params(
            &ctx.fields,
            &ctx.config,
            ctx.config.level,
            &job.window,
            true,
        ));
    let (submitted, created) = ctx.api.send_json(&submit).await?;
    let mut asked = submitted.sent;
    let Some(run_id) = created.get("report_run_id").and_then(|v| {
        v.as_str()
            .map(String::from)
            .or_else(|| v.as_u64().map(|n| n.to_string()))
    }) else {
        return Err(SourceError::transient(format!(
            "{account}: async insights job was not created: {created}"
        )));
    };
    // It becomes a URL path: an absolute URL here must not take the token elsewhere.
    crate::http::id_segment(&run_id, "report_run_id")?;

    // A job that stops moving is split like a failed one.
    let mut pause = FIRST_POLL;
    let mut last_progress = (-1i64, Instant::now());
    loop {
        // Requests about the run go `pause` apart from one's sending to the next's, as
        // the API sees them: the time an answer took is part of the pause, not added
        // to it, so a slow API does not make each poll wait twice.
        tokio::time::sleep(pause.saturating_sub(asked.elapsed())).await;
        pause = (pause.mul_f64(1.5)).min(ctx.max_poll);
        let poll = ctx
            .api
            .request(Method::GET, &run_id, account)?
            .urgency(Urgency::Continues)
            .query(
                "fields",
                "id,async_status,async_percent_completion,error_code,error_message",
            );
        let (polled, status) = ctx.api.send_json(&poll).await?;
        asked = polled.sent;
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
        } else if last_progress.1.elapsed() > ctx.stall {
            return Err(SourceError::new(
                ErrorClass::NeedsSplitting,
                format!(
                    "{account}: async insights job {run_id} stalled at {percent}% for {}s",
                    ctx.stall.as_secs()
                ),
            ));
        }
    }
}

/// Lands the account's details as the slice's first page; its rows take them from it.
async fn land_account(account: &Account, state: &mut ReadState<'_>) -> Result<(), SourceError> {
    let body = serde_json::to_vec(&account.raw)
        .map(bytes::Bytes::from)
        .map_err(|e| SourceError::data(format!("{}: account details: {e}", account.id)))?;
    let dt = state.params.window.since.to_string();
    state.sink.land(ACCOUNT_PAGE, "json", &dt, &body).await?;
    state.params.learn(account);
    Ok(())
}

/// Lands a page, then hands over its new rows (or their flattened actions).
async fn consume_page(
    response: &ApiResponse,
    page: Value,
    state: &mut ReadState<'_>,
) -> Result<(), SourceError> {
    let dt = state.params.window.since.to_string();
    let path = land_json(state.sink, &mut state.pages, &dt, response).await?;
    hand_over(page, &path, state).await
}

/// Hands over the new rows of a landed page.
async fn hand_over(
    page: Value,
    path: &Arc<str>,
    state: &mut ReadState<'_>,
) -> Result<(), SourceError> {
    let rows = page_rows(
        page,
        path,
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

/// The campaigns with insights rows in `window`, from one light campaign-level
/// request (the campaigns edge would leave out deleted and archived campaigns,
/// whose rows the account-level request had).
async fn campaigns_with_rows(
    ctx: &JobContext,
    window: &DayWindow,
) -> Result<Vec<String>, SourceError> {
    let fields = ["campaign_id".to_string()];
    let mut pager = plain_insights_pager(ctx, &fields, Level::Campaign, window)?;
    let mut ids: Vec<String> = Vec::new();
    while let Some((_, page)) = pager.next(&ctx.api).await? {
        for id in data(&page).iter().filter_map(|row| row.get("campaign_id")) {
            let id = value_text(id);
            if id.is_empty() {
                continue;
            }
            // Each id becomes a URL path (`<campaign_id>/insights`).
            crate::http::id_segment(&id, "campaign_id")?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// Pages of a sync insights request for `fields` at `level`, without breakdowns or
/// attribution windows (the campaign list and the account totals).
fn plain_insights_pager(
    ctx: &JobContext,
    fields: &[String],
    level: Level,
    window: &DayWindow,
) -> Result<Pager, SourceError> {
    let config = InsightsConfig {
        breakdowns: Vec::new(),
        action_attribution_windows: Vec::new(),
        ..ctx.config.clone()
    };
    let account = &ctx.account;
    let mut base = ctx
        .api
        .request(Method::GET, &format!("{account}/insights"), account)?;
    for (k, v) in insights_params(fields, &config, level, window, false) {
        base = base.query(&k, v);
    }
    Ok(Pager::new(base.query("limit", ctx.page_size.to_string())))
}
