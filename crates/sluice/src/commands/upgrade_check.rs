//! `sluice upgrade-check [--to VERSION]`: the fields the next (or a given) Facebook
//! Graph / Google Ads API version removes or renames that this pipeline uses —
//! in its config (a stream's `fields`, a GAQL SELECT) or in what the schema
//! registry saw the API send. Nothing is asked of the APIs.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_connectors::api_changes::{self, FieldChange, UsedField, VersionedSource};
use sluice_connectors::api_versions::spell;
use sluice_core::config::PipelineConfig;
use sluice_core::state::StateStore;

use crate::exit;

#[derive(clap::Args, Debug)]
pub struct UpgradeCheckArgs {
    /// The version to upgrade to (default: the next one sluice knows): `v22.0` for
    /// every source, or `<source>=<version>` for one (repeatable).
    #[arg(long, value_name = "VERSION")]
    pub to: Vec<String>,
}

pub async fn run(pipeline: &Path, args: UpgradeCheckArgs) -> u8 {
    let (config, lake) =
        match crate::project::config_and_lake(pipeline, PipelineConfig::load_for_inspection) {
            Ok(loaded) => loaded,
            Err(code) => return code,
        };
    let state = StateStore::new(lake, &config.name);
    let mut sources = Vec::new();
    for section in &config.sources {
        match api_changes::versioned_source(&config.doc, section) {
            Ok(Some(source)) => sources.push(source),
            Ok(None) => {}
            Err(e) => {
                crate::project::print_config_error(&e);
                return exit::CONFIG;
            }
        }
    }
    if sources.is_empty() {
        println!("no Facebook or Google Ads source: nothing to check");
        return exit::OK;
    }
    let mut found = 0;
    for mut source in sources {
        let to = match target_argument(&args.to, &source.name) {
            Ok(to) => to,
            Err(message) => {
                crate::logging::print_error!("--to: {message}");
                return exit::USAGE;
            }
        };
        let (from, target) = match (source.major(), source.target(to)) {
            (Ok(from), Ok(target)) => (from, target),
            (Err(m), _) => {
                crate::logging::print_error!("sources.{}: {m}", source.name);
                return exit::CONFIG;
            }
            (_, Err(m)) => {
                crate::logging::print_error!("--to: {m}");
                return exit::USAGE;
            }
        };
        let label = format!("{}: {} {}", source.name, source.api.label(), source.version);
        let Some(target) = target.filter(|t| *t > from) else {
            println!("{label} is the newest version sluice knows: nothing to check");
            continue;
        };
        if let Err(e) = add_registry_fields(&state, &mut source).await {
            crate::logging::print_error!("{e}");
            return exit::INTERNAL;
        }
        let changes = api_changes::between(source.api, from, target);
        let hits = uses(&source, &changes);
        println!("{label} → {}", spell(source.api, target));
        if hits.is_empty() {
            println!(
                "    nothing to change ({} removal(s) or rename(s) of these versions in sluice's table; none is used)",
                changes.len()
            );
            continue;
        }
        for (change, used) in &hits {
            found += 1;
            let what = match change.replacement {
                Some(new) => format!("renamed to `{new}`"),
                None => "removed, no replacement".to_string(),
            };
            let r#where: Vec<String> = used
                .iter()
                .map(|u| format!("{}.{} ({})", u.stream, u.field, u.from))
                .collect();
            println!(
                "  ! `{}` {what} in {}: used by {}",
                change.field,
                spell(source.api, change.version),
                r#where.join(", ")
            );
            println!("      source: {} ({})", change.source, change.source_date);
        }
    }
    if found == 0 {
        println!("nothing to change");
        return exit::OK;
    }
    println!(
        "{found} field(s) to change before upgrading (sluice's table holds the changes found in the vendors' changelogs, not every change: read them too)"
    );
    exit::UPGRADE_NEEDED
}

/// The `--to` that applies to `source`: its own `<source>=<version>`, else a bare version.
fn target_argument<'a>(to: &'a [String], source: &str) -> Result<Option<&'a str>, String> {
    let mut bare = None;
    for value in to {
        match value.split_once('=') {
            Some((name, version)) if name == source => return Ok(Some(version)),
            Some(_) => {}
            None if bare.is_some() => {
                return Err("give one bare version, or `<source>=<version>` per source".into())
            }
            None => bare = Some(value.as_str()),
        }
    }
    Ok(bare)
}

/// Adds the fields the registry saw in each stream's latest schema version.
async fn add_registry_fields(
    state: &StateStore,
    source: &mut VersionedSource,
) -> Result<(), String> {
    for (stream, table) in &source.tables {
        let Some(latest) = state.schema(table).await.map_err(|e| e.to_string())? else {
            continue;
        };
        for field in &latest.value.fields {
            source.fields.insert(UsedField {
                stream: stream.clone(),
                field: field.name.clone(),
                from: "registry",
            });
        }
    }
    Ok(())
}

/// Each change the source uses, with every place that uses it.
fn uses<'c>(
    source: &VersionedSource,
    changes: &[&'c FieldChange],
) -> Vec<(&'c FieldChange, Vec<UsedField>)> {
    let mut hits: BTreeMap<usize, Vec<UsedField>> = BTreeMap::new();
    for (i, change) in changes.iter().enumerate() {
        for used in source.fields.iter().filter(|u| u.is(change)) {
            hits.entry(i).or_default().push(used.clone());
        }
    }
    hits.into_iter()
        .map(|(i, used)| (changes[i], used))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_takes_its_own_target_before_the_bare_one() {
        let to = vec!["v22".to_string(), "fb=v23.0".to_string()];
        assert_eq!(target_argument(&to, "fb").unwrap(), Some("v23.0"));
        assert_eq!(target_argument(&to, "google").unwrap(), Some("v22"));
        assert_eq!(target_argument(&[], "google").unwrap(), None);
        assert!(target_argument(&["v1".into(), "v2".into()], "x").is_err());
    }
}
