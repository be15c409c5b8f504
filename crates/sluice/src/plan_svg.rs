//! The run plan drawn as inline SVG, for the dashboard and the generated docs.

use std::collections::{BTreeMap, HashMap};

use sluice_core::plan::{NodeKind, RunPlan};
use sluice_core::run::{RunRecord, TaskStatus};

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
/// reads), coloured by the node's task status in the latest run; a node `link`
/// gives an address for is a link to it.
pub fn plan_svg(
    plan: &RunPlan,
    last: Option<&RunRecord>,
    link: &dyn Fn(&str) -> Option<String>,
) -> String {
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
        let href = link(&p.id);
        if let Some(href) = &href {
            svg.push_str(&format!(r#"<a href="{}">"#, escape(href)));
        }
        svg.push_str(&format!(
            r##"<g class="node"><title>{label}</title><rect x="{}" y="{}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="{}" stroke="#555"/><text x="{}" y="{}">{}</text></g>"##,
            p.x,
            p.y,
            p.fill,
            p.x + 6,
            p.y + 16,
            escape(&shorten(&p.id, 32)),
        ));
        if href.is_some() {
            svg.push_str("</a>");
        }
    }
    svg.push_str("</svg>");
    svg
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max - 1).collect();
    format!("{kept}…")
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
