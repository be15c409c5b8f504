//! `sluice docs build`: a static documentation site of the pipeline, generated from
//! what sluice already knows (config, stream specs, models and their YAML, the run
//! plan, the schema registry and run history), so it is never out of date.
//!
//! The site is plain HTML (minijinja templates under `templates/`) with relative
//! links, so it works opened from `file://`; the only script is the search box's
//! filter of the page list. Pages: the overview (the plan drawn, every page
//! listed), one per source stream, one per model (SQL, description, columns with
//! their column-level lineage, upstream/downstream, checks) and one per destination
//! table.
//!
//! - [`impact`]: `sluice impact <table|column>`, from the same knowledge.

pub mod impact;
mod knowledge;
mod site;

use std::path::{Path, PathBuf};

use crate::exit;
use crate::project::Project;

pub use knowledge::Knowledge;

#[derive(clap::Subcommand, Debug)]
pub enum DocsCommand {
    /// Write the documentation site (open its index.html in a browser).
    Build {
        /// Where to write it (default: `docs-site` beside the pipeline file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub async fn run(pipeline: &Path, command: DocsCommand) -> u8 {
    let DocsCommand::Build { out } = command;
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let knowledge = match Knowledge::gather(&project).await {
        Ok(k) => k,
        Err(code) => return code,
    };
    let out = out.unwrap_or_else(|| project.config.root.join("docs-site"));
    match site::write(&project, &knowledge, &out) {
        Ok(pages) => {
            println!(
                "wrote {pages} pages to {}",
                out.join("index.html").display()
            );
            exit::OK
        }
        Err(e) => {
            crate::logging::print_error!(
                "cannot write the documentation to {}: {e}",
                out.display()
            );
            exit::INTERNAL
        }
    }
}
