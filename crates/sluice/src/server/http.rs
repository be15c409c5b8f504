//! The HTTP routes of `sluice serve`.
//!
//! | route | what | who |
//! |---|---|---|
//! | `GET /healthz` | the process and the scheduler loop are alive | anyone (probes) |
//! | `GET /readyz` | config loaded, lake and destination reachable, not stopping | anyone |
//! | `GET /metrics` | Prometheus / OpenMetrics text | anyone (scrapers) |
//! | `GET /api/runs`, `/api/runs/{id}`, `/api/tables`, `/api/plan` | JSON | anyone who reaches the port |
//! | `POST /api/runs` | trigger a run, body `{"select": […]}` (optional) | bearer token with role `operator` |
//! | `POST /api/runs/{id}/cancel` | cancel the run in progress (its loads roll back) | bearer token with role `operator` |
//! | `GET /`, `/runs/{id}` | the dashboard | anyone who reaches the port |
//! | `GET /docs/…` | the documentation site of `sluice docs build`, rendered now | anyone who reaches the port |
//!
//! Reads are open unless `serve.protect_reads` is set (then any token may read);
//! triggering and cancelling always need an operator token.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_core::plan::{render, RunPlan};
use sluice_core::run::{RunRecord, TaskStatus};

use super::tokens::Role;
use super::Daemon;

#[derive(Clone)]
pub struct AppState {
    pub daemon: Arc<Daemon>,
    pub plan: Arc<RunPlan>,
}

pub fn router(daemon: Arc<Daemon>, plan: RunPlan) -> Router {
    let state = AppState {
        daemon,
        plan: Arc::new(plan),
    };
    let reads_and_writes = Router::new()
        .route("/", get(super::dashboard::index))
        .route("/runs/{id}", get(super::dashboard::run_page))
        .route("/metrics", get(metrics))
        .route("/api/runs", get(list_runs).post(trigger_run))
        .route("/api/runs/{id}", get(one_run))
        .route("/api/runs/{id}/log", get(run_log))
        .route("/api/runs/{id}/cancel", axum::routing::post(cancel_run))
        .route("/api/tables", get(tables))
        .route("/api/plan", get(plan_json))
        .route(
            "/docs",
            get(|| async { axum::response::Redirect::permanent("/docs/") }),
        )
        .route("/docs/", get(docs_index))
        .route("/docs/{*path}", get(docs_page))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            reads_need_a_token,
        ));
    // Probes answer whoever asks: the orchestrator has no token.
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(reads_and_writes)
        .with_state(state)
}

/// With `serve.protect_reads`, a GET needs a token of any role (writes check their
/// own, stronger role).
async fn reads_need_a_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.daemon.tokens.protect_reads && request.method() == axum::http::Method::GET {
        if let Err((status, message)) = authorize(&state, request.headers(), Role::Viewer) {
            return error(status, message);
        }
    }
    next.run(request).await
}

async fn docs_index(state: State<AppState>) -> Response {
    docs_page(state, Path(String::new())).await
}

/// A page of the docs site, from the same code as `sluice docs build`.
async fn docs_page(State(state): State<AppState>, Path(path): Path<String>) -> Response {
    match crate::docs::serve_page(&state.daemon.project, &path).await {
        Ok(Some((content_type, body))) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no page /docs/{path}")),
        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.daemon.scheduler_alive.load(Ordering::SeqCst) {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler loop has stopped",
        )
    }
}

/// Ready when the lake and the destination answer (both asked at once, within 4 s,
/// inside the 5 s a Kubernetes probe waits) and the server is not shutting down.
async fn readyz(State(state): State<AppState>) -> Response {
    let daemon = &state.daemon;
    let probe = Duration::from_secs(4);
    let verdict = |outcome: Result<Result<(), String>, tokio::time::error::Elapsed>| match outcome {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => sluice_core::secret::redact(&e),
        Err(_) => "no answer within 4 s".into(),
    };
    // One small read each: a GET in the lake (absent is fine), and a read-only
    // round trip to the destination that takes no lock a running load could hold.
    let scheduler_state = super::scheduler::state_path(&daemon.project.config.name);
    let (lake, destination) = tokio::join!(
        tokio::time::timeout(probe, async {
            daemon
                .project
                .lake
                .get(&scheduler_state)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        tokio::time::timeout(probe, async {
            daemon
                .project
                .destination
                .row_count("d1", "_sluice_readiness_probe")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    );
    let (lake, destination) = (verdict(lake), verdict(destination));
    let stopping = daemon.stopping.is_cancelled();
    let ready = lake == "ok" && destination == "ok" && !stopping;
    let body = json!({
        "ready": ready,
        "config": "ok",
        "lake": lake,
        "destination": destination,
        "stopping": stopping,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// All run records, oldest first; a lake error is a 500 naming it.
pub async fn records(daemon: &Daemon) -> Result<Vec<Arc<RunRecord>>, Response> {
    daemon.records.all().await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot read run records: {}",
                sluice_core::secret::redact(&e)
            ),
        )
    })
}

async fn metrics(State(state): State<AppState>) -> Response {
    let records = match records(&state.daemon).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let current = state.daemon.current_run();
    match super::metrics::render(&records, current.as_deref(), Utc::now()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

/// One line of `/api/runs`.
#[derive(Serialize)]
pub struct RunSummary<'a> {
    pub run_id: &'a str,
    pub status: &'a str,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub select: &'a [String],
    pub rows_loaded: u64,
    pub rows_quarantined: u64,
    pub failed_tasks: Vec<&'a str>,
    pub error: Option<&'a str>,
}

impl<'a> RunSummary<'a> {
    pub fn of(r: &'a RunRecord) -> Self {
        RunSummary {
            run_id: &r.run_id,
            status: r.status.as_str(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: r.duration_ms(),
            select: &r.select,
            rows_loaded: r.tasks.iter().map(|t| t.rows_loaded).sum(),
            rows_quarantined: r.tasks.iter().map(|t| t.rows_quarantined).sum(),
            failed_tasks: r
                .tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Failed)
                .map(|t| t.task.as_str())
                .collect(),
            error: r.error.as_deref(),
        }
    }
}

/// Newest first, `?limit=` (default 50).
async fn list_runs(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Response {
    let records = match records(&state.daemon).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let runs: Vec<RunSummary> = records
        .iter()
        .rev()
        .take(query.limit.unwrap_or(50))
        .map(|r| RunSummary::of(r))
        .collect();
    let current = state.daemon.current_run();
    Json(json!({ "runs": runs, "current_run": current })).into_response()
}

async fn one_run(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.daemon.project.state.run(&id).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no run {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A run's log as plain text (the events sluice logged while it ran).
async fn run_log(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.daemon.project.state.run_log(&id).await {
        Ok(Some(log)) => log.into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no log of run {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Freshness of one table, from the run records.
#[derive(Serialize, Clone)]
pub struct TableFreshness {
    pub table: String,
    /// When a task last loaded it successfully (or found it up to date).
    pub last_success: Option<DateTime<Utc>>,
    pub freshness_seconds: Option<i64>,
    pub last_run_id: Option<String>,
    pub last_status: String,
    /// Rows loaded by its last successful task.
    pub last_rows_loaded: u64,
    pub rows_loaded_total: u64,
    pub rows_quarantined_total: u64,
    /// Rows loaded by its last (up to 30) successful tasks, oldest first.
    pub recent_rows_loaded: Vec<u64>,
}

/// Every table a run touched, sorted by name.
pub fn freshness(records: &[Arc<RunRecord>], now: DateTime<Utc>) -> Vec<TableFreshness> {
    let mut tables: BTreeMap<String, TableFreshness> = BTreeMap::new();
    for record in records {
        for task in record.tasks.iter().filter(|t| !t.task.ends_with(":checks")) {
            let entry = tables
                .entry(task.table.clone())
                .or_insert_with(|| TableFreshness {
                    table: task.table.clone(),
                    last_success: None,
                    freshness_seconds: None,
                    last_run_id: None,
                    last_status: String::new(),
                    last_rows_loaded: 0,
                    rows_loaded_total: 0,
                    rows_quarantined_total: 0,
                    recent_rows_loaded: Vec::new(),
                });
            entry.last_run_id = Some(record.run_id.clone());
            entry.last_status = crate::commands::run::status_text(task.status).to_string();
            entry.rows_loaded_total += task.rows_loaded;
            entry.rows_quarantined_total += task.rows_quarantined;
            if matches!(task.status, TaskStatus::Succeeded | TaskStatus::UpToDate) {
                let done =
                    task.started_at + chrono::Duration::milliseconds(task.duration_ms as i64);
                if entry.recent_rows_loaded.len() == 30 {
                    entry.recent_rows_loaded.remove(0);
                }
                entry.recent_rows_loaded.push(task.rows_loaded);
                if entry.last_success.is_none_or(|t| t < done) {
                    entry.last_success = Some(done);
                    entry.last_rows_loaded = task.rows_loaded;
                }
            }
        }
    }
    tables
        .into_values()
        .map(|mut t| {
            t.freshness_seconds = t.last_success.map(|s| (now - s).num_seconds().max(0));
            t
        })
        .collect()
}

async fn tables(State(state): State<AppState>) -> Response {
    let records = match records(&state.daemon).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    Json(json!({ "tables": freshness(&records, Utc::now()) })).into_response()
}

async fn plan_json(State(state): State<AppState>) -> Response {
    let all = state.plan.select_all();
    match serde_json::to_value(render::view(&state.plan, &all)) {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    select: Vec<String>,
}

/// The role of the request's bearer token, or the response refusing it.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    needed: Role,
) -> Result<String, (StatusCode, String)> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>` (a token from `serve.tokens`)".into(),
        ));
    };
    let Some(token) = state.daemon.tokens.find(presented) else {
        return Err((StatusCode::UNAUTHORIZED, "unknown token".into()));
    };
    if token.role < needed {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` has role viewer; triggering or cancelling a run needs operator",
                token.name
            ),
        ));
    }
    Ok(token.name.clone())
}

/// Starts a run now (202 with its id); 409 while another run is in progress.
async fn trigger_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let who = match authorize(&state, &headers, Role::Operator) {
        Ok(name) => name,
        Err((status, message)) => return error(status, message),
    };
    let body: TriggerBody = match body {
        None => TriggerBody::default(),
        Some(Json(value)) => match serde_json::from_value(value) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
        },
    };
    if let Err(e) = state.plan.select(&body.select) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let daemon = state.daemon.clone();
    if daemon.stopping.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    let Ok(slot) = daemon.run_slot.clone().try_lock_owned() else {
        let current = daemon.current_run();
        return error(
            StatusCode::CONFLICT,
            format!(
                "a run is in progress ({}); one run of a pipeline at a time",
                current.unwrap_or_default()
            ),
        );
    };
    let run_id = sluice_core::run::new_run_id();
    tracing::info!(run_id = %run_id, token = %who, "run triggered over the API");
    let project = &daemon.project;
    let actor = sluice_core::audit::Actor::with_token(&who);
    let details = json!({ "run_id": run_id, "select": body.select });
    if crate::commands::audit::record(
        &project.lake,
        &project.config.name,
        "trigger",
        &actor,
        details,
    )
    .await
    .is_err()
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the run could not be recorded in the audit log",
        );
    }
    let ticket = daemon.claim(run_id.clone(), slot);
    let select = body.select.clone();
    let runner = daemon.clone();
    daemon.triggered.spawn(async move {
        runner.execute(select, ticket).await;
    });
    (
        StatusCode::ACCEPTED,
        Json(json!({ "run_id": run_id, "select": body.select, "status": "started" })),
    )
        .into_response()
}

/// Cancels the run in progress if it is `id` (202); 409 if `id` is not running.
async fn cancel_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = match authorize(&state, &headers, Role::Operator) {
        Ok(name) => name,
        Err((status, message)) => return error(status, message),
    };
    if state.daemon.current_run().as_deref() != Some(id.as_str()) {
        return error(StatusCode::CONFLICT, format!("run {id} is not in progress"));
    }
    let project = &state.daemon.project;
    let actor = sluice_core::audit::Actor::with_token(&who);
    let details = json!({ "run_id": id });
    if crate::commands::audit::record(
        &project.lake,
        &project.config.name,
        "cancel",
        &actor,
        details,
    )
    .await
    .is_err()
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the cancel could not be recorded in the audit log",
        );
    }
    if state.daemon.cancel_run(&id) {
        tracing::warn!(run_id = %id, token = %who, "run cancelled over the API");
        (
            StatusCode::ACCEPTED,
            Json(json!({ "run_id": id, "status": "cancelling" })),
        )
            .into_response()
    } else {
        error(StatusCode::CONFLICT, format!("run {id} is not in progress"))
    }
}
