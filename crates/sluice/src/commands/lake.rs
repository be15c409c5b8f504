//! `sluice lake verify|rotate-key`: the encrypted lake's integrity and master key
//! (see `sluice_core::lake` and `lake_encryption:` in the README).

use std::path::{Path, PathBuf};

use sluice_core::config::PipelineConfig;
use sluice_core::lake::master_key_from_text;

use crate::exit;

#[derive(clap::Subcommand, Debug)]
pub enum LakeCommand {
    /// Authenticate every object of the encrypted lake; name each altered, truncated
    /// or swapped one (exit 4).
    Verify,
    /// Re-wrap every data key under a new master key (data is not rewritten); then
    /// point `lake_encryption` at the new key: the old one opens nothing.
    RotateKey(RotateKeyArgs),
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct RotateKeyArgs {
    /// A file holding the new master key (32+ bytes: `openssl rand -hex 32 > FILE`).
    #[arg(long, value_name = "FILE")]
    new_key_file: Option<PathBuf>,
    /// An environment variable holding the new master key.
    #[arg(long, value_name = "VAR")]
    new_key_env: Option<String>,
}

pub async fn run(pipeline: &Path, command: LakeCommand) -> u8 {
    let (config, lake) = match crate::project::config_and_lake(pipeline, PipelineConfig::load) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if !lake.is_encrypted() {
        crate::logging::print_error!(
            "the lake of `{}` is not encrypted: add `lake_encryption:` to pipeline.yaml (for a new lake)",
            config.name
        );
        return exit::CONFIG;
    }
    match command {
        LakeCommand::Verify => match lake.verify().await {
            Ok(report) => {
                for (path, problem) in &report.failures {
                    println!("FAILED  {path}: {problem}");
                }
                if !report.orphaned_keys.is_empty() {
                    println!(
                        "note: {} data key object(s) whose object is gone (left by an interrupted write; harmless)",
                        report.orphaned_keys.len()
                    );
                }
                println!(
                    "{} object(s) authenticated ({} bytes), {} failed",
                    report.verified,
                    super::thousands(report.bytes),
                    report.failures.len()
                );
                if report.failures.is_empty() {
                    exit::OK
                } else {
                    exit::RUN_FAILED
                }
            }
            Err(e) => {
                crate::logging::print_error!("{}", sluice_core::secret::redact(&e.to_string()));
                exit::RUN_FAILED
            }
        },
        LakeCommand::RotateKey(args) => {
            let text = match (&args.new_key_file, &args.new_key_env) {
                (Some(file), _) => std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display())),
                (None, Some(var)) => {
                    std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
                }
                (None, None) => unreachable!("clap requires one of them"),
            };
            let new = match text.and_then(|t| master_key_from_text(&t)) {
                Ok(key) => key,
                Err(e) => {
                    crate::logging::print_error!("the new master key: {e}");
                    return exit::CONFIG;
                }
            };
            let actor = sluice_core::audit::Actor::local();
            let details = serde_json::json!({ "new_master_key_id": new.id() });
            if let Err(code) =
                super::audit::record(&lake, &config.name, "lake rotate-key", &actor, details).await
            {
                return code;
            }
            match lake.rotate_master_key(&new).await {
                Ok(report) => {
                    println!(
                        "re-wrapped {} data key(s) under master key {} ({} already were); now set `lake_encryption` to the new key",
                        report.rewrapped,
                        new.id(),
                        report.already
                    );
                    exit::OK
                }
                Err(e) => {
                    crate::logging::print_error!("{}", sluice_core::secret::redact(&e.to_string()));
                    exit::RUN_FAILED
                }
            }
        }
    }
}
