//! `sluice show <model>`: a preview of a model's rows, computed from the lake as it
//! is now with D1 seen through the `pii:` policy, as the model would see it in a
//! run. Nothing is written: no lake table, no destination table, no quarantine.

use std::path::Path;

use super::lake_view::{find_model, LakeView};
use super::query::Format;
use crate::exit;

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The model: `orders_clean` or `d2a.orders_clean`.
    pub model: String,
    /// At most this many rows.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub async fn run(pipeline: &Path, args: ShowArgs) -> u8 {
    let LakeView { lake, models, .. } = match LakeView::open(pipeline).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let model = match find_model(&models, &args.model) {
        Ok(m) => m,
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::CONFIG;
        }
    };
    let batches =
        match sluice_transform::published::preview(&models, &lake, model, args.limit).await {
            Ok(b) => b,
            Err(sluice_transform::TransformError::Config(e)) => {
                crate::project::print_config_error(&e);
                return exit::CONFIG;
            }
            Err(e) => {
                crate::logging::print_error!("{}", sluice_core::secret::redact(&e.to_string()));
                return exit::RUN_FAILED;
            }
        };
    super::query::print_rows(&batches, args.format)
}
