//! `sluice runs`: run history from the lake.

use std::path::Path;

use sluice_core::config::PipelineConfig;
use sluice_core::state::StateStore;

use super::{print_table, seconds, thousands};
use crate::exit;

#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    /// Show one run in detail.
    pub run_id: Option<String>,
    /// How many recent runs to list.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// With a run id: print the run's log (what sluice logged while it ran).
    #[arg(long, requires = "run_id")]
    pub show_log: bool,
}

pub async fn run(pipeline: &Path, args: RunsArgs) -> u8 {
    // Only config and lake are needed: history is readable even if a source is misconfigured.
    let (config, lake) =
        match crate::project::config_and_lake(pipeline, PipelineConfig::load_for_inspection) {
            Ok(loaded) => loaded,
            Err(code) => return code,
        };
    let state = StateStore::new(lake, &config.name);
    if let (Some(id), true) = (&args.run_id, args.show_log) {
        return match state.run_log(id).await {
            Ok(Some(log)) => {
                print!("{log}");
                exit::OK
            }
            Ok(None) => {
                crate::logging::print_error!("no log of run {id} in {}", state.lake().location());
                exit::CONFIG
            }
            Err(e) => {
                crate::logging::print_error!("{e}");
                exit::INTERNAL
            }
        };
    }
    if let Some(id) = &args.run_id {
        return match state.run(id).await {
            Ok(Some(record)) => {
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&record).unwrap_or_default()
                    );
                } else {
                    super::run::print_summary(&record);
                }
                exit::OK
            }
            Ok(None) => {
                crate::logging::print_error!("no run {id} in {}", state.lake().location());
                exit::CONFIG
            }
            Err(e) => {
                crate::logging::print_error!("{e}");
                exit::INTERNAL
            }
        };
    }
    let runs = match state.runs().await {
        Ok(r) => r,
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::INTERNAL;
        }
    };
    let recent: Vec<_> = runs.iter().rev().take(args.limit).collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&recent).unwrap_or_default()
        );
        return exit::OK;
    }
    if recent.is_empty() {
        println!("no runs yet in {}", state.lake().location());
        return exit::OK;
    }
    let mut rows = vec![vec![
        "run".to_string(),
        "status".into(),
        "started".into(),
        "duration".into(),
        "rows".into(),
        "quarantined".into(),
        "tables".into(),
        "errors".into(),
    ]];
    for r in recent {
        let rows_loaded: u64 = r.tasks.iter().map(|t| t.rows_loaded).sum();
        let quarantined: u64 = r.tasks.iter().map(|t| t.rows_quarantined).sum();
        let tables: Vec<String> = r
            .tasks
            .iter()
            .filter(|t| t.rows_loaded > 0)
            .map(|t| format!("{}={}", t.table, thousands(t.rows_loaded)))
            .collect();
        let errors: Vec<String> = r
            .tasks
            .iter()
            .filter_map(|t| {
                t.error
                    .as_ref()
                    .map(|e| format!("{}: {}", t.task, first_line(&e.message)))
            })
            .chain(r.error.iter().cloned())
            .collect();
        rows.push(vec![
            r.run_id.clone(),
            r.status.as_str().to_string(),
            r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.duration_ms()
                .map(|ms| seconds(ms.max(0) as u64))
                .unwrap_or_else(|| "-".into()),
            thousands(rows_loaded),
            thousands(quarantined),
            tables.join(" "),
            errors.join("; "),
        ]);
    }
    print_table(&rows);
    exit::OK
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    if line.len() > 80 {
        &line[..line.char_indices().nth(80).map_or(line.len(), |(i, _)| i)]
    } else {
        line
    }
}
