//! `sluice validate`: config and models, no side effects; `--connections` also dials out.

use std::path::Path;

use crate::exit;
use crate::project::Project;

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Also check that every source and the destination is reachable with its credentials.
    #[arg(long)]
    pub connections: bool,
}

pub async fn run(pipeline: &Path, args: ValidateArgs) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let models = match sluice_transform::ModelProject::load(&project.config) {
        Ok(m) => m,
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    if let Err(e) = crate::lineage::Lineage::from_config(&project.config) {
        crate::project::print_config_error(&e);
        return exit::CONFIG;
    }
    let specs: Vec<_> = project.sources.iter().flat_map(|s| s.streams()).collect();
    let models = models.with_streams(specs.iter().cloned());
    if let Err(e) = sluice_transform::preflight::check_models(&models, &project.lake, &specs).await
    {
        return crate::project::report_transform_error(&e);
    }
    let streams = specs.len();
    println!(
        "{}: pipeline `{}` is valid ({} sources, {} streams, {} models; lake {}; destination {})",
        pipeline.display(),
        project.config.name,
        project.sources.len(),
        streams,
        models.models.len(),
        project.lake.location(),
        project.destination.describe()
    );
    if !args.connections {
        return exit::OK;
    }
    let mut failed = false;
    match project.destination.check().await {
        Ok(()) => println!("  ✓ destination {}", project.destination.describe()),
        Err(e) => {
            failed = true;
            println!(
                "  ✗ destination {}: {}",
                project.destination.describe(),
                sluice_core::secret::redact(&e.to_string())
            );
        }
    }
    for source in &project.sources {
        match source.check().await {
            Ok(()) => println!("  ✓ source {}", source.name()),
            Err(e) => {
                failed = true;
                let fix = e
                    .config_key
                    .map(|k| format!(" (check `{k}`)"))
                    .unwrap_or_default();
                println!("  ✗ source {}: {}{fix}", source.name(), e.message);
            }
        }
    }
    if failed {
        exit::CONNECTION
    } else {
        exit::OK
    }
}
