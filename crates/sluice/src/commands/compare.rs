//! `sluice compare <old source.stream> <new source.stream>`: how a replacing stream
//! differs from the one it replaces, read from what both landed in the lake (no
//! source is called). Exit 0 when they match, 8 when they differ, so CI can gate the
//! switch on it. The comparison itself is `sluice_transform::compare`.

use std::path::Path;

use chrono::NaiveDate;
use sluice_core::config::{suggest, StreamRef};
use sluice_core::replace::D1Alias;
use sluice_transform::compare::{CompareReport, Comparison, Listed};
use sluice_transform::ModelProject;

use crate::exit;
use crate::project::Project;

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default)]
pub enum CompareFormat {
    #[default]
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The replaced stream, `source.stream` (its column names are the ones reported).
    pub old: String,
    /// The replacing stream, `source.stream` (its columns renamed per its `replaces:`).
    pub new: String,
    /// Only rows whose day is on or after this date (YYYY-MM-DD).
    #[arg(long)]
    pub since: Option<NaiveDate>,
    /// Only rows whose day is on or before this date (YYYY-MM-DD).
    #[arg(long)]
    pub until: Option<NaiveDate>,
    /// Key columns (the old stream's names), comma-separated; default: its primary key.
    #[arg(long, value_delimiter = ',')]
    pub key: Vec<String>,
    /// The column that dates a row (old name); default: the partition date when both
    /// streams are partitioned.
    #[arg(long)]
    pub day_column: Option<String>,
    /// Differences of each kind listed; the rest are counted.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// `text` for people, `json` (one document, `identical` plus the report) for tools.
    #[arg(long, value_enum, default_value_t = CompareFormat::Text)]
    pub format: CompareFormat,
}

pub async fn run(pipeline: &Path, args: CompareArgs) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let (old, new) = match (stream_ref(&args.old), stream_ref(&args.new)) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(e), _) | (_, Err(e)) => {
            crate::logging::print_error!("{e}");
            return exit::USAGE;
        }
    };
    let tables = table_of(&project, &old).and_then(|o| Ok((o, table_of(&project, &new)?)));
    let (old_table, new_table) = match tables {
        Ok(t) => t,
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::USAGE;
        }
    };
    let alias = project
        .aliases
        .iter()
        .find(|a| a.replacement.replaced == old && a.replacement.by == new);
    if alias.is_none()
        && project
            .aliases
            .iter()
            .any(|a| a.replacement.replaced == new && a.replacement.by == old)
    {
        crate::logging::print_error!(
            "{new} replaces {old}: give the replaced stream first (`sluice compare {new} {old}`)"
        );
        return exit::USAGE;
    }
    let models = match ModelProject::load(&project.config) {
        Ok(m) => m
            .with_streams(project.sources.iter().flat_map(|s| s.streams()))
            .with_aliases(project.aliases.clone()),
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    let models =
        match super::lake_view::with_registered_marks(models, &project.lake, &project.config.name)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                crate::logging::print_error!("{}", sluice_core::secret::redact(&e));
                return exit::RUN_FAILED;
            }
        };
    let comparison = Comparison {
        old_table,
        new_table,
        alias,
        key: args.key.clone(),
        day_column: args.day_column.clone(),
        since: args.since,
        until: args.until,
        limit: args.limit,
    };
    let report = match sluice_transform::compare::compare(&models, &project.lake, &comparison).await
    {
        Ok(r) => r,
        Err(sluice_transform::TransformError::Config(e)) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
        Err(e) => {
            crate::logging::print_error!("{}", sluice_core::secret::redact(&e.to_string()));
            return exit::USAGE;
        }
    };
    match args.format {
        CompareFormat::Json => match serde_json::to_string_pretty(&serde_json::json!({
            "old": old.to_string(),
            "new": new.to_string(),
            "identical": report.identical(),
            "report": report,
        })) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                crate::logging::print_error!("{e}");
                return exit::INTERNAL;
            }
        },
        CompareFormat::Text => print_text(&old, &new, alias, &report),
    }
    if report.identical() {
        exit::OK
    } else {
        exit::DIFFERENCES
    }
}

fn stream_ref(text: &str) -> Result<StreamRef, String> {
    StreamRef::parse(text)
        .ok_or_else(|| format!("`{text}` is not a stream: write `<source>.<stream>`"))
}

/// The D1 table of `stream`: a configured stream's, or a switched replacement's old
/// name (its stream may be gone from the pipeline; its data is still in the lake).
fn table_of(project: &Project, stream: &StreamRef) -> Result<String, String> {
    if let Some(source) = project.sources.iter().find(|s| s.name() == stream.source) {
        let streams = source.streams();
        if let Some(spec) = streams.iter().find(|s| s.name == stream.stream) {
            return Ok(spec.table.clone());
        }
        let hint = suggest(&stream.stream, streams.iter().map(|s| s.name.as_str()))
            .map(|s| format!("; did you mean `{}.{s}`?", stream.source))
            .unwrap_or_default();
        return Err(format!(
            "source {} has no stream `{}`{hint}",
            stream.source, stream.stream
        ));
    }
    if let Some(alias) = project
        .aliases
        .iter()
        .find(|a| a.replacement.replaced == *stream)
    {
        return Ok(alias.replaced_table.clone());
    }
    let hint = suggest(&stream.source, project.sources.iter().map(|s| s.name()))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(format!("unknown source `{}`{hint}", stream.source))
}

fn key_text(key: &[String], values: &[Option<String>]) -> String {
    key.iter()
        .zip(values)
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn value_text(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "NULL".into())
}

fn more<T>(listed: &Listed<T>) {
    let rest = listed.total.saturating_sub(listed.shown.len() as u64);
    if rest > 0 {
        println!("  … and {rest} more");
    }
}

fn print_text(old: &StreamRef, new: &StreamRef, alias: Option<&D1Alias>, r: &CompareReport) {
    println!(
        "Comparing {old} (d1.{}, {} rows) with {new} (d1.{}, {} rows)",
        r.old_table, r.old_rows, r.new_table, r.new_rows
    );
    let columns: Vec<String> = r
        .columns
        .iter()
        .filter(|p| p.old != "dt")
        .map(|p| {
            if p.old == p.new {
                p.old.clone()
            } else {
                format!("{} (← {})", p.old, p.new)
            }
        })
        .collect();
    println!("  key: {}", r.key.join(", "));
    println!("  columns: {}", columns.join(", "));
    if alias.is_none() {
        println!("  (no `replaces:` joins them: columns are matched by name)");
    }
    for (side, only) in [(old, &r.only_old_columns), (new, &r.only_new_columns)] {
        if !only.is_empty() {
            println!("  not compared, only in {side}: {}", only.join(", "));
        }
    }
    match &r.day_column {
        Some(day) => println!("  days by: {day}"),
        None => println!("  days not compared (give --day-column)"),
    }
    for (side, duplicates) in [(old, r.duplicate_keys_old), (new, r.duplicate_keys_new)] {
        if duplicates > 0 {
            println!(
                "\nKeys occurring more than once in {side}: {duplicates} (rows with them cannot be matched one to one: give a unique --key)"
            );
        }
    }
    for (side, listed) in [(old, &r.only_in_old), (new, &r.only_in_new)] {
        if listed.total > 0 {
            println!("\nRows only in {side}: {}", listed.total);
            for key in &listed.shown {
                println!("  {}", key_text(&r.key, key));
            }
            more(listed);
        }
    }
    if r.changed.total > 0 {
        println!("\nRows that differ: {}", r.changed.total);
        for row in &r.changed.shown {
            let diffs: Vec<String> = row
                .columns
                .iter()
                .map(|d| {
                    format!(
                        "{}: {} → {}",
                        d.column,
                        value_text(&d.old),
                        value_text(&d.new)
                    )
                })
                .collect();
            println!("  {}  {}", key_text(&r.key, &row.key), diffs.join("; "));
        }
        more(&r.changed);
    }
    if r.days.total > 0 {
        println!("\nDays that differ: {}", r.days.total);
        for day in &r.days.shown {
            let mut parts = vec![format!("rows {} → {}", day.old_rows, day.new_rows)];
            parts.extend(day.sums.iter().map(|d| {
                format!(
                    "sum({}) {} → {}",
                    d.column,
                    value_text(&d.old),
                    value_text(&d.new)
                )
            }));
            println!(
                "  {}  {}",
                day.day.as_deref().unwrap_or("(no day)"),
                parts.join("; ")
            );
        }
        more(&r.days);
    }
    if r.identical() {
        println!("\nNo differences.");
    } else {
        println!(
            "\nDifferences: {} only in {old}, {} only in {new}, {} differing, {} day(s), {} duplicate key(s).",
            r.only_in_old.total,
            r.only_in_new.total,
            r.changed.total,
            r.days.total,
            r.duplicate_keys_old + r.duplicate_keys_new
        );
    }
}
