//! `sluice schema show|history|diff <table>`: the schema registry in the lake.

use std::path::Path;

use sluice_core::config::PipelineConfig;
use sluice_core::drift::diff;
use sluice_core::drift::presence::Presence;
use sluice_core::state::{SchemaVersion, StateStore};

use super::print_table;
use crate::exit;

#[derive(clap::Subcommand, Debug)]
pub enum SchemaCommand {
    /// The latest recorded schema of a D1 table (`facebook_insights`) or stream (`facebook.insights`).
    Show { table: String },
    /// Every recorded version, with the run that wrote it and what changed.
    History { table: String },
    /// Differences between two versions (default: the last two).
    Diff {
        table: String,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
    },
}

pub async fn run(pipeline: &Path, command: SchemaCommand) -> u8 {
    let (config, lake) =
        match crate::project::config_and_lake(pipeline, PipelineConfig::load_for_inspection) {
            Ok(loaded) => loaded,
            Err(code) => return code,
        };
    let state = StateStore::new(lake, &config.name);
    let (SchemaCommand::Show { table }
    | SchemaCommand::History { table }
    | SchemaCommand::Diff { table, .. }) = &command;
    // `source.stream` names the default table `source_stream`.
    let table = table.replace('.', "_");
    let history = match state.schema_history(&table).await {
        Ok(h) if !h.is_empty() => h,
        Ok(_) => {
            crate::logging::print_error!(
                "no schema recorded for `{table}` yet (it is recorded by the first successful run)"
            );
            return exit::CONFIG;
        }
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::INTERNAL;
        }
    };
    match command {
        SchemaCommand::Show { .. } => {
            let latest = history.last().expect("non-empty");
            println!(
                "{table} v{} (run {}, {})",
                latest.version,
                latest.run_id,
                latest.written_at.format("%Y-%m-%d %H:%M")
            );
            let mut rows = vec![vec![
                "column".to_string(),
                "type".into(),
                "nullable".into(),
                "pii".into(),
            ]];
            for f in &latest.value.fields {
                rows.push(vec![
                    f.name.clone(),
                    f.ty.name(),
                    f.nullable.to_string(),
                    if f.pii { "yes".into() } else { String::new() },
                ]);
            }
            print_table(&rows);
            // Fields inside JSON columns (`event_props.Amount`), per event.
            for (scope, paths) in &latest.value.paths {
                println!();
                let title = if scope.is_empty() {
                    String::new()
                } else {
                    format!(" [{scope}]")
                };
                println!("fields inside JSON columns{title}");
                let mut rows = vec![vec![
                    "field".to_string(),
                    "type".into(),
                    "first seen".into(),
                ]];
                for f in &paths.fields {
                    rows.push(vec![
                        f.name.clone(),
                        f.ty.name(),
                        paths.first_seen.get(&f.name).cloned().unwrap_or_default(),
                    ]);
                }
                print_table(&rows);
            }
        }
        SchemaCommand::History { .. } => {
            let mut previous: Option<&SchemaVersion> = None;
            for version in &history {
                println!(
                    "v{}  run {}  {}",
                    version.version,
                    version.run_id,
                    version.written_at.format("%Y-%m-%d %H:%M:%S")
                );
                match previous {
                    None => println!("    {} columns", version.value.fields.len()),
                    Some(p) => {
                        for change in diff(&p.value, &version.value) {
                            println!("    {change}");
                        }
                        // What the registry learned about fields not every record carries.
                        for (name, presence) in &version.value.presence {
                            if p.value.presence.get(name) != Some(presence) {
                                println!("    learned `{name}`: {}", describe(presence));
                            }
                        }
                    }
                }
                previous = Some(version);
            }
        }
        SchemaCommand::Diff { from, to, .. } => {
            let find = |v: Option<u64>, default: usize| match v {
                Some(v) => history.iter().find(|h| h.version == v),
                None => history.get(default),
            };
            let n = history.len();
            let (Some(a), Some(b)) = (find(from, n.saturating_sub(2)), find(to, n - 1)) else {
                crate::logging::print_error!(
                    "no such version (have v1..v{})",
                    history.last().map_or(0, |h| h.version)
                );
                return exit::CONFIG;
            };
            let changes = diff(&a.value, &b.value);
            println!("{table}: v{} → v{}", a.version, b.version);
            if changes.is_empty() {
                println!("    no differences");
            }
            for change in changes {
                println!("    {change}");
            }
        }
    }
    exit::OK
}

fn describe(presence: &Presence) -> String {
    match presence {
        Presence::Unsent => "declared, not sent by the source yet".into(),
        Presence::Optional { percent } => {
            format!("optional (carried by {percent}% of records when learned)")
        }
    }
}
