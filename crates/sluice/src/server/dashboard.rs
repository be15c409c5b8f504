//! The dashboard: server-rendered HTML (minijinja, templates under `templates/`)
//! with the plan drawn as inline SVG. No JavaScript and no front-end toolchain;
//! the page refreshes itself every 30 s.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use minijinja::value::Serde;
use minijinja::{context, Environment};
use sluice_core::plan::{NodeKind, RunPlan};
use sluice_core::run::{RunRecord, TaskStatus};

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
    let svg = plan_svg(&state.plan, last);
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
    page(templates().get_template("run.html").and_then(|t| {
        t.render(context! {
            pipeline => &state.daemon.project.config.name,
            run => Serde(RunSummary::of(&record)),
            tasks => tasks,
            notices => &record.notices,
        })
    }))
}

/// A node placed on the drawing.
struct Placed {
    id: String,
    x: i64,
    y: i64,
    fill: &'static str,
}

const COLUMN: i64 = 230;
const ROW: i64 = 34;
const BOX_W: i64 = 200;
const BOX_H: i64 = 24;

/// The plan as an SVG: one column per depth (a node sits right of everything it
/// reads), coloured by the node's task status in the latest run.
pub fn plan_svg(plan: &RunPlan, last: Option<&RunRecord>) -> String {
    let status: HashMap<&str, TaskStatus> = last
        .map(|r| {
            r.tasks
                .iter()
                .map(|t| (t.task.as_str(), t.status))
                .collect()
        })
        .unwrap_or_default();
    // Nodes come in dependency order, so every upstream has its depth already.
    let mut depth: HashMap<&str, i64> = HashMap::new();
    let mut columns: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for node in plan.nodes() {
        let d = node
            .upstream
            .iter()
            .filter_map(|u| depth.get(u.as_str()))
            .max()
            .map_or(0, |d| d + 1);
        depth.insert(&node.id, d);
        columns.entry(d).or_default().push(&node.id);
    }
    let mut at: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut placed = Vec::new();
    for (d, ids) in &columns {
        for (row, &id) in ids.iter().enumerate() {
            let (x, y) = (10 + d * COLUMN, 10 + row as i64 * ROW);
            at.insert(id, (x, y));
            let node = plan.node(id);
            let task_status = node.and_then(|n| {
                let checks = format!("{}:checks", n.task);
                if n.kind == NodeKind::Check {
                    status.get(checks.as_str()).copied()
                } else {
                    status.get(n.task.as_str()).copied()
                }
            });
            let fill = match task_status {
                Some(TaskStatus::Succeeded | TaskStatus::UpToDate) => "#d4f4dd",
                Some(TaskStatus::Failed) => "#f8d0d0",
                Some(TaskStatus::Cancelled | TaskStatus::Skipped) => "#eeeeee",
                None => "#ffffff",
            };
            placed.push(Placed {
                id: id.to_string(),
                x,
                y,
                fill,
            });
        }
    }
    let width = 20 + columns.len() as i64 * COLUMN;
    let height = 20 + columns.values().map(|c| c.len() as i64).max().unwrap_or(0) * ROW;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="plan" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    for node in plan.nodes() {
        let Some(&(x2, y2)) = at.get(node.id.as_str()) else {
            continue;
        };
        for upstream in &node.upstream {
            if let Some(&(x1, y1)) = at.get(upstream.as_str()) {
                svg.push_str(&format!(
                    r##"<line x1="{}" y1="{}" x2="{x2}" y2="{}" stroke="#888"/>"##,
                    x1 + BOX_W,
                    y1 + BOX_H / 2,
                    y2 + BOX_H / 2
                ));
            }
        }
    }
    for p in &placed {
        let label = escape(&p.id);
        svg.push_str(&format!(
            r##"<g class="node"><title>{label}</title><rect x="{}" y="{}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="{}" stroke="#555"/><text x="{}" y="{}">{}</text></g>"##,
            p.x,
            p.y,
            p.fill,
            p.x + 6,
            p.y + 16,
            escape(&shorten(&p.id, 32)),
        ));
    }
    svg.push_str("</svg>");
    svg
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

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max - 1).collect();
    format!("{kept}…")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
