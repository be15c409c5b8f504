//! `sluice query "SQL"`: SQL over the lake's tables in any layer, printed as a table, CSV or JSON.
//!
//! Tables are `d1.<table>`, `d2a.<model>`, `d2b.<model>`; the model functions
//! (`hmac_sha256`, `parse_money`, `convert_currency`, …) are available. D1 is shown
//! through the pipeline's `pii:` policy unless `--unmasked` is given.

use std::path::Path;

use sluice_core::config::PipelineConfig;
use sluice_core::lake::Lake;
use sluice_core::state::StateStore;
use sluice_transform::render::{render, OutputFormat};
use sluice_transform::{D1View, ModelProject};

use crate::exit;

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// The query, e.g. "SELECT platform, sum(spend_usd) FROM d2a.ad_performance_daily GROUP BY 1".
    pub sql: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show D1's personal columns in clear instead of through the `pii:` policy.
    #[arg(long)]
    pub unmasked: bool,
}

pub async fn run(pipeline: &Path, args: QueryArgs) -> u8 {
    let config = match PipelineConfig::load(pipeline) {
        Ok(c) => c,
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    let models = match ModelProject::load(&config) {
        // Merge tables show one row per key, as models see them: that needs the
        // streams' keys (when the sources cannot be built, tables show as stored).
        Ok(m) => match crate::project::Project::load(pipeline) {
            Ok(project) => m.with_streams(project.sources.iter().flat_map(|s| s.streams())),
            Err(_) => m,
        },
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    let lake = match Lake::open(&config.lake, &config.root) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    let models = match with_registered_marks(models, &lake, &config.name).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {}", sluice_core::secret::redact(&e));
            return exit::RUN_FAILED;
        }
    };
    let view = if args.unmasked {
        let actor = sluice_core::audit::Actor::local();
        let details = serde_json::json!({ "sql": args.sql });
        if let Err(code) =
            super::audit::record(&lake, &config.name, "query_unmasked", &actor, details).await
        {
            return code;
        }
        D1View::Unmasked
    } else {
        D1View::Policy
    };
    let format = match args.format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
    };
    match sluice_transform::query(&lake, &models, &args.sql, view).await {
        Ok((_, batches)) => match render(&batches, format) {
            Ok(text) => {
                println!("{}", text.trim_end());
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::INTERNAL
            }
        },
        Err(e) => {
            eprintln!("error: {}", sluice_core::secret::redact(&e.to_string()));
            exit::RUN_FAILED
        }
    }
}

/// Adds the personal columns the schema registry recorded for every D1 table in the
/// lake, in any version: PII marks then hold even when the sources cannot be built
/// (an unset credential, an edited `pii:` list) to say which columns are personal.
async fn with_registered_marks(
    mut models: ModelProject,
    lake: &Lake,
    pipeline: &str,
) -> Result<ModelProject, String> {
    let state = StateStore::new(lake.clone(), pipeline);
    let tables = sluice_transform::catalog::lake_tables(lake, "d1")
        .await
        .map_err(|e| e.to_string())?;
    for table in tables {
        let history = state
            .schema_history(&table)
            .await
            .map_err(|e| format!("cannot read the schema registry of {table}: {e}"))?;
        let marked: Vec<String> = history
            .iter()
            .flat_map(|v| v.value.fields.iter())
            .filter(|f| f.pii)
            .map(|f| f.name.clone())
            .collect();
        if !marked.is_empty() {
            models.mark_pii(&table, marked);
        }
    }
    Ok(models)
}
