//! `targets:`: named environments (dbt's targets, Meltano's environments) that
//! override where a pipeline writes.
//!
//! ```yaml
//! targets:
//!   dev:  { lake: ./lake-dev, destination: { type: sqlite, path: dev.db } }
//!   prod: { lake: "s3://acme-lake/shop", destination: { type: postgres, url: "${PROD_URL}" } }
//! ```
//!
//! `--target dev` (or `SLUICE_TARGET=dev`) picks one; without it the top-level `lake`
//! and `destination` apply. Only the chosen target's `${…}` variables are read: a dev
//! run neither needs nor sees prod's credentials. Every target's keys are checked.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

use super::{interpolate, suggest, ConfigDocument, ConfigError, Lookup};

/// The environment variable `--target` sets (and that selects a target without it).
pub const TARGET_VAR: &str = "SLUICE_TARGET";

/// What a target overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The lake location of this target (state and run history live there too).
    #[serde(default)]
    pub lake: Option<String>,
    /// The destination of this target, a whole `destination:` section.
    #[serde(default)]
    pub destination: Option<Value>,
}

/// The target `name` selects from the file's `targets:` (removed from `value` by the
/// caller before interpolation), interpolated; `None` without a name.
pub(super) fn select(
    doc: &ConfigDocument,
    targets: Option<Value>,
    name: Option<&str>,
    lookup: &dyn Lookup,
    root: &Path,
) -> Result<Option<(String, Target)>, ConfigError> {
    let at = |name: &str| vec!["targets".to_string(), name.to_string()];
    let targets: BTreeMap<String, Value> = match targets {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(value) => doc.deserialize_at(value, &["targets".into()])?,
    };
    // Every target is checked (a typo in `prod` is found on a dev run), before any
    // of their variables are read.
    for (target, body) in &targets {
        doc.deserialize_at::<Target>(body.clone(), &at(target))?;
    }
    let Some(name) = name else {
        return Ok(None);
    };
    let Some(body) = targets.get(name) else {
        let mut error = if targets.is_empty() {
            doc.error_at(
                &[],
                format!("--target {name}: the pipeline defines no `targets:`"),
            )
        } else {
            doc.error_at(
                &["targets".into()],
                format!("--target {name}: no such target"),
            )
        };
        let names: Vec<&str> = targets.keys().map(String::as_str).collect();
        error.help = Some(match suggest(name, names.iter().copied()) {
            Some(near) => format!("did you mean `{near}`?"),
            None if names.is_empty() => "add `targets: {<name>: {lake: …, destination: …}}`".into(),
            None => format!("targets: {}", names.join(", ")),
        });
        return Err(error);
    };
    let mut body = body.clone();
    interpolate::interpolate(&mut body, lookup, root, &mut at(name))
        .map_err(|e| doc.error_at(&e.path, e.message))?;
    let target: Target = doc.deserialize_at(body, &at(name))?;
    Ok(Some((name.to_string(), target)))
}
