//! `sluice audit`: read and verify the audit log (see [`sluice_core::audit`]), and
//! the one helper every audited command records through.

use std::path::Path;

use sluice_core::audit::{Actor, AuditLog};
use sluice_core::config::PipelineConfig;
use sluice_core::lake::Lake;

use crate::exit;

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain: exit 0 and print the head hash, or name the broken entry (exit 4).
    Verify,
    /// Print the entries, oldest first, as JSON lines (after checking the chain).
    Show,
}

/// Records `action` by `actor` in the pipeline's audit log. An action that cannot be
/// recorded does not happen: the caller stops with the returned exit code.
pub async fn record(
    lake: &Lake,
    pipeline: &str,
    action: &str,
    actor: &Actor,
    details: serde_json::Value,
) -> Result<(), u8> {
    match AuditLog::new(lake.clone(), pipeline)
        .append(action, actor, details)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            crate::logging::print_error!(
                "cannot record `{action}` in the audit log, so it was not done: {}",
                sluice_core::secret::redact(&e.to_string())
            );
            Err(exit::INTERNAL)
        }
    }
}

pub async fn run(pipeline: &Path, command: AuditCommand) -> u8 {
    let (config, lake) = match crate::project::config_and_lake(pipeline, PipelineConfig::load) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let log = AuditLog::new(lake, &config.name);
    match command {
        AuditCommand::Verify => match log.verify().await {
            Ok(verified) => {
                println!(
                    "audit log of `{}` is intact: {} entries, head {}",
                    config.name, verified.entries, verified.head
                );
                exit::OK
            }
            Err(e) => {
                crate::logging::print_error!("{e}");
                exit::RUN_FAILED
            }
        },
        AuditCommand::Show => match log.read().await {
            Ok(entries) => {
                for entry in entries {
                    println!("{}", serde_json::to_string(&entry).unwrap_or_default());
                }
                exit::OK
            }
            Err(e) => {
                crate::logging::print_error!("{e}");
                exit::RUN_FAILED
            }
        },
    }
}
