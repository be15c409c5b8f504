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
//! The same knowledge is also written as a Markdown runbook ([`runbook`], in the
//! site and by `sluice docs runbook`), exported as lineage for other tools
//! ([`lineage_export`], `sluice docs lineage`), and served by `sluice serve` under
//! `/docs/` ([`serve_page`]).
//!
//! - [`impact`]: `sluice impact <table|column>`, from the same knowledge.

pub mod impact;
mod knowledge;
mod lineage_export;
pub mod runbook;
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
    /// Print the runbook (Markdown, in the section order of a data team's wiki), or write it.
    Runbook {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the table- and column-level lineage for other tools.
    Lineage {
        /// `json` (tables and columns with their inputs), `dot` (Graphviz) or
        /// `openlineage` (JobEvents with column-lineage facets, one per line).
        #[arg(long, value_enum, default_value_t = lineage_export::LineageFormat::Json)]
        format: lineage_export::LineageFormat,
    },
}

pub async fn run(pipeline: &Path, command: DocsCommand) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let knowledge = match Knowledge::gather(&project).await {
        Ok(k) => k,
        Err(code) => return code,
    };
    let out = match command {
        DocsCommand::Build { out } => out,
        DocsCommand::Runbook { out } => {
            let text = runbook::render(&project, &knowledge);
            return match out {
                None => {
                    print!("{text}");
                    exit::OK
                }
                Some(file) => match std::fs::write(&file, text) {
                    Ok(()) => {
                        println!("wrote {}", file.display());
                        exit::OK
                    }
                    Err(e) => {
                        crate::logging::print_error!("cannot write {}: {e}", file.display());
                        exit::INTERNAL
                    }
                },
            };
        }
        DocsCommand::Lineage { format } => {
            print!("{}", lineage_export::render(&project, &knowledge, format));
            return exit::OK;
        }
    };
    let out = out.unwrap_or_else(|| project.config.root.join("docs-site"));
    let written =
        site::render_site(&project, &knowledge).and_then(|pages| site::write(&pages, &out));
    match written {
        Ok(pages) => {
            println!(
                "wrote {pages} pages to {} (runbook: {})",
                out.join("index.html").display(),
                out.join(runbook::FILE).display()
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

/// A page of the site for `sluice serve` (`path` relative to `/docs/`, empty for the
/// overview), rendered from what the project holds now: its content type and body,
/// or `None` when the site has no such page. Errors are the message to show.
pub async fn serve_page(
    project: &Project,
    path: &str,
) -> Result<Option<(&'static str, String)>, String> {
    let knowledge = Knowledge::gather(project)
        .await
        .map_err(|_| "the models cannot be planned; see `sluice validate`".to_string())?;
    let mut pages = site::render_site(project, &knowledge).map_err(|e| e.to_string())?;
    let path = if path.is_empty() { "index.html" } else { path };
    let content_type = if path.ends_with(".md") {
        "text/markdown; charset=utf-8"
    } else {
        "text/html; charset=utf-8"
    };
    Ok(pages.remove(path).map(|body| (content_type, body)))
}
