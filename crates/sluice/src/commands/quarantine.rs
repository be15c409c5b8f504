//! `sluice quarantine list`: the records the lake's quarantines hold (rejected by
//! typing, or failing model checks), filtered by table, run date and reason, with
//! the `pii:` policy applied to the records as `sluice query` applies it to
//! `quarantine.<layer>__<table>`. `retry` lives in `quarantine_retry`.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::NaiveDate;
use sluice_transform::D1View;

use super::lake_view::LakeView;
use super::query::Format;
use crate::exit;

#[derive(clap::Subcommand, Debug)]
pub enum QuarantineCommand {
    /// List quarantined records: table, run, origin (file:line or check), reason, record.
    List(ListArgs),
    /// Type a D1 table's quarantined records again with the stream's current config
    /// (after a fix) and load those that now fit; the rest stay quarantined.
    Retry(super::quarantine_retry::RetryArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only this table: `d1.shop_orders`, `d2a.orders_clean`, or a bare name in any layer.
    #[arg(long)]
    pub table: Option<String>,
    /// Only records of runs started on or after this date (UTC).
    #[arg(long)]
    pub since: Option<NaiveDate>,
    /// Only records whose reason contains this text (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// At most this many records (newest runs first).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub async fn run(pipeline: &Path, command: QuarantineCommand, interactive: bool) -> u8 {
    match command {
        QuarantineCommand::List(args) => list(pipeline, args).await,
        QuarantineCommand::Retry(args) => {
            super::quarantine_retry::run(pipeline, args, interactive).await
        }
    }
}

async fn list(pipeline: &Path, args: ListArgs) -> u8 {
    let LakeView { lake, models, .. } = match LakeView::open(pipeline).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    // `quarantine/<layer>/<table>/<run>.ndjson`: the tables that have a quarantine.
    let objects = match lake
        .list(&format!("{}/", sluice_core::quarantine::PREFIX))
        .await
    {
        Ok(o) => o,
        Err(e) => {
            crate::logging::print_error!("cannot list the lake: {e}");
            return exit::RUN_FAILED;
        }
    };
    let quarantined: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|o| o.path.ends_with(".ndjson"))
        .filter_map(|o| {
            let parts: Vec<&str> = o.path.split('/').collect();
            match &parts[parts.len().saturating_sub(4)..] {
                [_, layer, table, _] => Some((layer.to_string(), table.to_string())),
                _ => None,
            }
        })
        .collect();
    let wanted: Vec<&(String, String)> = match &args.table {
        None => quarantined.iter().collect(),
        Some(name) => {
            let matches = |layer: &str, table: &str| {
                name == table
                    || *name == format!("{layer}.{table}")
                    || *name == format!("{layer}__{table}")
            };
            let found: Vec<_> = quarantined.iter().filter(|(l, t)| matches(l, t)).collect();
            if found.is_empty() {
                match known_table(&lake, &matches).await {
                    Ok(true) => {}
                    Ok(false) => return unknown_table(&lake, name).await,
                    Err(e) => {
                        crate::logging::print_error!("cannot list the lake: {e}");
                        return exit::RUN_FAILED;
                    }
                }
            }
            found
        }
    };
    if wanted.is_empty() {
        println!("no quarantined records");
        return exit::OK;
    }
    let mut filters = Vec::new();
    if let Some(since) = args.since {
        // Run ids start with their UTC start time, `20240701T…`.
        filters.push(format!("run_id >= '{}'", since.format("%Y%m%d")));
    }
    if let Some(reason) = &args.reason {
        filters.push(format!(
            "strpos(lower(reason), lower('{}')) > 0",
            reason.replace('\'', "''")
        ));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    let selects: Vec<String> = wanted
        .iter()
        .map(|(layer, table)| {
            format!(
                "SELECT '{layer}.{table}' AS \"table\", run_id, origin, reason, raw AS record FROM quarantine.\"{layer}__{table}\"{filter}"
            )
        })
        .collect();
    let sql = format!(
        "SELECT * FROM ({}) AS q ORDER BY run_id DESC, \"table\", origin LIMIT {}",
        selects.join(" UNION ALL "),
        args.limit
    );
    let batches = match sluice_transform::query(&lake, &models, &sql, D1View::Policy).await {
        Ok((_, batches)) => batches,
        Err(e) => {
            crate::logging::print_error!("{}", sluice_core::secret::redact(&e.to_string()));
            return exit::RUN_FAILED;
        }
    };
    if batches.iter().all(|b| b.num_rows() == 0) && !matches!(args.format, Format::Json) {
        println!("no quarantined records match");
        return exit::OK;
    }
    super::query::print_rows(&batches, args.format)
}

/// Whether `name` is a table the lake holds (with nothing quarantined).
async fn known_table(
    lake: &sluice_core::lake::Lake,
    matches: &dyn Fn(&str, &str) -> bool,
) -> Result<bool, String> {
    for layer in ["d1", "d2a", "d2b"] {
        let tables = sluice_transform::catalog::lake_tables(lake, layer)
            .await
            .map_err(|e| e.to_string())?;
        if tables.iter().any(|t| matches(layer, t)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `--table` names no table of the lake: a config error naming the nearest.
async fn unknown_table(lake: &sluice_core::lake::Lake, name: &str) -> u8 {
    let mut all = Vec::new();
    for layer in ["d1", "d2a", "d2b"] {
        if let Ok(tables) = sluice_transform::catalog::lake_tables(lake, layer).await {
            all.extend(tables.into_iter().map(|t| format!("{layer}.{t}")));
        }
    }
    let hint = sluice_core::config::suggest(name, all.iter().map(String::as_str))
        .or_else(|| {
            all.iter()
                .find(|t| {
                    t.split_once('.').is_some_and(|(_, bare)| {
                        sluice_core::config::suggest(name, [bare]).is_some()
                    })
                })
                .cloned()
        })
        .map(|t| format!("; did you mean `{t}`?"))
        .unwrap_or_default();
    let listed = if all.is_empty() {
        "the lake has no tables yet".to_string()
    } else {
        format!("tables: {}", all.join(", "))
    };
    crate::logging::print_error!("--table `{name}` is not a table of the lake{hint} ({listed})");
    exit::CONFIG
}
