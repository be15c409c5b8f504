//! `sluice plan`: the run plan (streams → D1 tables → models → checks) as a table,
//! JSON or Graphviz dot, whole or as `--select` narrows it. Nothing runs.

use std::path::Path;

use sluice_core::plan::render;

use super::run::build_plan;
use crate::exit;
use crate::project::Project;

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlanFormat {
    /// One line per node with what it reads.
    #[default]
    Text,
    /// `{"nodes": [{"id", "kind", "upstream", "downstream", "task", "tags"}]}`.
    Json,
    /// Graphviz: `sluice plan --format dot | dot -Tsvg > plan.svg`.
    Dot,
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The part of the plan to show, with `sluice run --select`'s syntax (default: all).
    #[arg(short, long, value_delimiter = ',')]
    pub select: Vec<String>,
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
}

pub async fn run(pipeline: &Path, args: PlanArgs) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let (plan, _models) = match build_plan(&project, &project.sources) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let selection = match plan.select(&args.select) {
        Ok(s) => s,
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::CONFIG;
        }
    };
    match args.format {
        PlanFormat::Text => print!("{}", render::text(&plan, &selection)),
        PlanFormat::Dot => print!("{}", render::dot(&plan, &selection)),
        PlanFormat::Json => match serde_json::to_string_pretty(&render::view(&plan, &selection)) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                crate::logging::print_error!("cannot encode the plan: {e}");
                return exit::INTERNAL;
            }
        },
    }
    exit::OK
}
