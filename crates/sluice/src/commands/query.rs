//! `sluice query "SQL"`: SQL over the lake's tables in any layer, printed as a table, CSV or JSON.
//!
//! Tables are `d1.<table>`, `d2a.<model>`, `d2b.<model>`; the model functions
//! (`hmac_sha256`, `parse_money`, `convert_currency`, …) are available. D1 is shown
//! through the pipeline's `pii:` policy unless `--unmasked` is given.

use std::path::Path;

use sluice_transform::render::{render, OutputFormat};
use sluice_transform::D1View;

use super::lake_view::LakeView;
use crate::exit;

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
}

/// Prints rows as `format` asks (query, show, quarantine); the exit code.
pub fn print_rows(batches: &[sluice_transform::arrow::array::RecordBatch], format: Format) -> u8 {
    let format = match format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
    };
    match render(batches, format) {
        Ok(text) => {
            println!("{}", text.trim_end());
            exit::OK
        }
        Err(e) => {
            crate::logging::print_error!("{e}");
            exit::INTERNAL
        }
    }
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
    let LakeView {
        lake,
        models,
        pipeline: name,
    } = match LakeView::open(pipeline).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let view = if args.unmasked {
        let actor = sluice_core::audit::Actor::local();
        let details = serde_json::json!({ "sql": args.sql });
        if let Err(code) =
            super::audit::record(&lake, &name, "query_unmasked", &actor, details).await
        {
            return code;
        }
        D1View::Unmasked
    } else {
        D1View::Policy
    };
    match sluice_transform::query(&lake, &models, &args.sql, view).await {
        Ok((_, batches)) => print_rows(&batches, args.format),
        Err(e) => {
            crate::logging::print_error!("{}", sluice_core::secret::redact(&e.to_string()));
            exit::RUN_FAILED
        }
    }
}
