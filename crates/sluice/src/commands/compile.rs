//! `sluice compile <model>`: the SQL a run executes for a model, resolved: the
//! definition of every `d1.<table>` view it reads (the `pii:` policy applied and
//! `merge` tables reduced to their latest version per key, as models see them), then
//! the model's own SQL, and for an incremental model the filter a run wraps it in.

use std::path::Path;

use chrono::NaiveDate;
use sluice_transform::project::Materialization;
use sluice_transform::D1View;

use super::lake_view::{find_model, LakeView};
use crate::exit;

#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// The model: `orders_clean` or `d2a.orders_clean`.
    pub model: String,
    /// For an incremental model: the `partition_by` dates a run recomputes (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub dates: Vec<NaiveDate>,
}

pub async fn run(pipeline: &Path, args: CompileArgs) -> u8 {
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
    let incremental = model.config.materialized == Materialization::Incremental;
    if !args.dates.is_empty() && !incremental {
        crate::logging::print_error!(
            "--dates: {} is not incremental; a run rebuilds it whole",
            model.qualified_name()
        );
        return exit::CONFIG;
    }
    let mut out = String::new();
    for table in model.depends_on.iter().filter(|t| t.layer == "d1") {
        let definition = sluice_transform::catalog::d1_view_definition(
            &models,
            &lake,
            &table.name,
            D1View::Policy,
        )
        .await;
        match definition {
            Ok(Some(sql)) => out.push_str(&format!(
                "-- {table}: the view the model reads (pii: policy applied; d1_raw is the table as landed)\nCREATE VIEW {table} AS\n{sql};\n\n"
            )),
            Ok(None) => out.push_str(&format!(
                "-- {table}: not in the lake yet (its stream has not run); the view is defined at the first run\n\n"
            )),
            Err(e) => {
                crate::logging::print_error!(
                    "{table}: {}",
                    sluice_core::secret::redact(&e.to_string())
                );
                return exit::RUN_FAILED;
            }
        }
    }
    let others: Vec<String> = model
        .depends_on
        .iter()
        .filter(|t| t.layer != "d1")
        .map(|t| t.to_string())
        .collect();
    if !others.is_empty() {
        out.push_str(&format!(
            "-- reads the published models {} as the lake holds them\n\n",
            others.join(", ")
        ));
    }
    out.push_str(&format!(
        "-- {} ({})\n",
        model.qualified_name(),
        model.sql_path.display()
    ));
    if incremental && !args.dates.is_empty() {
        let dates: Vec<String> = args.dates.iter().map(|d| d.to_string()).collect();
        out.push_str(&sluice_transform::run::incremental_sql(
            model,
            dates.iter().map(String::as_str),
        ));
        out.push('\n');
    } else {
        out.push_str(model.sql.trim_end());
        out.push('\n');
        if incremental {
            out.push_str(&format!(
                "-- incremental: a run recomputes only the `{}` dates its upstream tables changed, as\n-- SELECT * FROM (<the SQL above>) AS __model WHERE \"{}\" IN (<dates>)  (see --dates)\n",
                model.config.partition_by.as_deref().unwrap_or("dt"),
                model.config.partition_by.as_deref().unwrap_or("dt"),
            ));
        }
    }
    print!("{out}");
    exit::OK
}
