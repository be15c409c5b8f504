//! The async report-run flow: `POST /act_<id>/insights` creates a run, `GET /<run id>`
//! polls it (completed on the third poll, unless a fault fails or stalls it), and
//! `GET /<run id>/insights` pages its rows once it is complete.

use std::sync::atomic::Ordering;

use serde_json::json;

use super::{error, insights, page, scope_account, Query, REDUCE_DATA};
use crate::faults::every;
use crate::{AppState, Reply, Req};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Complete,
    Fail,
    Stall,
    /// Fails because the request asks for too much data (`reduce_data_fields_above`).
    TooMuchData,
}

/// A report run as the server keeps it.
pub(super) struct Job {
    query: Query,
    pub(super) account: usize,
    fate: Fate,
    polls: u32,
    created: i64,
    /// When it was last asked about (created, then polled).
    last_asked: std::time::Instant,
    /// Its results were asked for (it no longer counts as open).
    results_read: bool,
}

pub(super) fn create_job(st: &AppState, r: &Req, query: Query) -> Reply {
    let n = st.counters.report_runs.fetch_add(1, Ordering::SeqCst) + 1;
    let f = &st.opts.faults;
    let fate = if f.too_many_fields(query.fields.len()) {
        Fate::TooMuchData
    } else if every(f.async_fail_every, n) {
        Fate::Fail
    } else if every(f.async_stall_every, n) {
        Fate::Stall
    } else {
        Fate::Complete
    };
    // Above 2^53 like every Graph id.
    let id = (6_120_000_000_000_000u64 + st.world.seed % 1_000 * 1_000_000_000 + n).to_string();
    let account = scope_account(&st.world, query.scope);
    let created = st
        .opts
        .today
        .and_hms_opt(12, 0, 0)
        .map(|t| t.and_utc().timestamp())
        .unwrap_or(0)
        + n as i64;
    if let Ok(mut jobs) = st.facebook.jobs.lock() {
        jobs.insert(
            id.clone(),
            Job {
                query,
                account,
                fate,
                polls: 0,
                created,
                last_asked: std::time::Instant::now(),
                results_read: false,
            },
        );
        st.counters.open_report_runs.raise();
    }
    let _ = r;
    Reply::json(200, &json!({ "report_run_id": id }))
}

pub(super) fn job_status(st: &AppState, r: &Req, id: &str) -> Option<Reply> {
    let mut jobs = st.facebook.jobs.lock().ok()?;
    let job = jobs.get_mut(id)?;
    job.polls += 1;
    let asked = std::time::Instant::now();
    let interval = asked.duration_since(std::mem::replace(&mut job.last_asked, asked));
    st.counters
        .shortest_poll_interval
        .see(interval.as_millis() as u64);
    let (status, pct) = match (job.fate, job.polls) {
        (Fate::Stall, 1) => ("Job Started", 0),
        (Fate::Stall, _) => ("Job Running", 42),
        (_, 1) => ("Job Not Started", 0),
        (_, 2) => ("Job Running", 55),
        (Fate::Fail | Fate::TooMuchData, _) => ("Job Failed", 55),
        (Fate::Complete, _) => ("Job Completed", 100),
    };
    if status == "Job Failed" && !std::mem::replace(&mut job.results_read, true) {
        st.counters.open_report_runs.lower();
    }
    let acc = &st.world.fb_accounts[job.account];
    let mut body = json!({
        "id": id,
        "report_run_id": id,
        "account_id": acc.id,
        "async_status": status,
        "async_percent_completion": pct,
        "date_start": job.query.since.to_string(),
        "date_stop": job.query.until.to_string(),
        "time_ref": job.created,
        "is_running": matches!(status, "Job Started" | "Job Running"),
    });
    if status == "Job Completed" {
        body["time_completed"] = json!(job.created + 3);
    }
    if job.fate == Fate::TooMuchData && status == "Job Failed" {
        body["error_code"] = json!(1);
        body["error_subcode"] = json!(1487534);
        body["error_message"] = json!(REDUCE_DATA);
        body["error_user_title"] = json!("Too much data");
        body["error_user_msg"] = json!(REDUCE_DATA);
    } else if status == "Job Failed" {
        body["error_code"] = json!(2601);
        body["error_subcode"] = json!(1815107);
        body["error_message"] = json!("Error accessing adreport job.");
        body["error_user_title"] = json!("Report job failed");
        body["error_user_msg"] = json!(
            "The report could not be computed. Retry with a shorter time range or fewer fields."
        );
    }
    let _ = r;
    Some(Reply::json(200, &body))
}

pub(super) fn job_insights(st: &AppState, r: &Req, id: &str) -> Option<Reply> {
    let (query, ready) = {
        let mut jobs = st.facebook.jobs.lock().ok()?;
        let job = jobs.get_mut(id)?;
        let ready = job.fate == Fate::Complete && job.polls >= 3;
        if ready && !std::mem::replace(&mut job.results_read, true) {
            st.counters.open_report_runs.lower();
        }
        (job.query.clone(), ready)
    };
    if !ready {
        return Some(error(400, 100, Some(2446191), "(#100) The report run is not complete: poll it until async_status is \"Job Completed\"", false, r.seq));
    }
    let rows = insights(st, &query);
    Some(page(st, r, rows, query.limit))
}
