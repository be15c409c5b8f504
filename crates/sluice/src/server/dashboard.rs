//! The dashboard: server-rendered HTML (minijinja, templates under `templates/`)
//! with the plan drawn as inline SVG. No JavaScript and no front-end toolchain;
//! the page refreshes itself every 30 s.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use minijinja::value::Serde;
use minijinja::{context, Environment};
use sluice_core::run::TaskStatus;

use super::http::{freshness, records, AppState, RunSummary};

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    // `.html` names turn on HTML auto-escaping: error messages and table names are text.
    env.add_template("index.html", include_str!("templates/index.html"))
        .expect("the dashboard template parses");
    env.add_template("run.html", include_str!("templates/run.html"))
        .expect("the run template parses");
    env
}

fn page(html: Result<String, minijinja::Error>) -> Response {
    match html {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the page: {e}"),
        )
            .into_response(),
    }
}

pub async fn index(State(state): State<AppState>) -> Response {
    let records = match records(&state.daemon).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let now = Utc::now();
    let recent: Vec<RunSummary> = records
        .iter()
        .rev()
        .take(25)
        .map(|r| RunSummary::of(r))
        .collect();
    let last = records.last().map(|r| r.as_ref());
    let svg = crate::plan_svg::plan_svg(&state.plan, last, &|_| None);
    let tables = freshness(&records, now);
    let sparklines: Vec<minijinja::Value> = tables
        .iter()
        .map(|t| minijinja::Value::from_safe_string(sparkline(&t.recent_rows_loaded)))
        .collect();
    let failed_checks: Vec<_> = records
        .iter()
        .rev()
        .flat_map(|r| {
            r.tasks
                .iter()
                .filter(|t| t.task.ends_with(":checks") && t.status == TaskStatus::Failed)
                .map(move |t| {
                    context! {
                        run_id => &r.run_id,
                        table => &t.table,
                        message => t.error.as_ref().map(|e| e.message.as_str()).unwrap_or(""),
                    }
                })
        })
        .take(10)
        .collect();
    let schema_changes: Vec<_> = records
        .iter()
        .rev()
        .flat_map(|r| {
            r.tasks.iter().flat_map(move |t| {
                t.schema_changes.iter().map(move |change| {
                    context! {
                        run_id => &r.run_id,
                        table => &t.table,
                        change => change.to_string(),
                    }
                })
            })
        })
        .take(10)
        .collect();
    let schedule = state.daemon.project.config.schedule.as_ref().map(|s| {
        let next = s
            .cron
            .find_next_occurrence(&now.with_timezone(&s.timezone), false)
            .map(|t| format!("; next {}", t.format("%Y-%m-%d %H:%M:%S %Z")))
            .unwrap_or_default();
        format!(
            "{} ({}, catch_up: {}{next})",
            s.expression,
            s.timezone.name(),
            s.catch_up.as_str()
        )
    });
    let current = state.daemon.current_run();
    page(templates().get_template("index.html").and_then(|t| {
        t.render(context! {
            pipeline => &state.daemon.project.config.name,
            schedule => schedule,
            current_run => current,
            runs => Serde(&recent),
            tables => Serde(&tables),
            sparklines => sparklines,
            failed_checks => failed_checks,
            schema_changes => schema_changes,
            plan_svg => minijinja::Value::from_safe_string(svg),
            now => now.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        })
    }))
}

pub async fn run_page(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let record = match state.daemon.project.state.run(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => return (StatusCode::NOT_FOUND, format!("no run {id}")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let tasks: Vec<_> = record
        .tasks
        .iter()
        .map(|t| {
            context! {
                task => &t.task,
                table => &t.table,
                status => crate::commands::run::status_text(t.status),
                rows_loaded => t.rows_loaded,
                rows_quarantined => t.rows_quarantined,
                duration_ms => t.duration_ms,
                error => t.error.as_ref().map(|e| e.message.as_str()),
                warnings => &t.warnings,
                schema_changes => t.schema_changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            }
        })
        .collect();
    // A missing log (runs from before logs were kept) is not an error of the page.
    let log = state.daemon.project.state.run_log(&id).await.ok().flatten();
    page(templates().get_template("run.html").and_then(|t| {
        t.render(context! {
            pipeline => &state.daemon.project.config.name,
            run => Serde(RunSummary::of(&record)),
            tasks => tasks,
            notices => &record.notices,
            api_usage => Serde(&record.api_usage),
            log => log,
        })
    }))
}

/// Rows loaded per successful load as a small line chart (oldest left).
pub fn sparkline(values: &[u64]) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if values.len() > 1 {
        W / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                H - 2.0 - (*v as f64 / max) * (H - 4.0)
            )
        })
        .collect();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="spark" width="{W}" height="{H}"><title>rows per load: {}</title><polyline fill="none" stroke="#1d4f91" stroke-width="1.5" points="{}"/></svg>"##,
        values
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        points.join(" ")
    )
}
