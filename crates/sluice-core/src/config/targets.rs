//! `targets:`: named environments (dbt's targets, Meltano's environments) that
//! override where a pipeline writes.
//!
//! ```yaml
//! targets:
//!   dev:  { lake: ./lake-dev, destination: { type: sqlite, path: dev.db }, sample: { days: 3 } }
//!   prod: { lake: "s3://acme-lake/shop", destination: { type: postgres, url: "${PROD_URL}" } }
//! ```
//!
//! `--target dev` (or `SLUICE_TARGET=dev`) picks one; without it the top-level `lake`
//! and `destination` apply. Only the chosen target's `${…}` variables are read: a dev
//! run neither needs nor sees prod's credentials. Every target's keys are checked.
//!
//! A target named `dev` that leaves them out gets SQLite `dev.db`, the lake
//! `./lake-dev` and `sample: { days: 3 }` (see [`Target::fill_dev_defaults`]).
//!
//! `sample: { days: N }` makes the target's runs read only the last N days of every
//! date-window stream (ads insights, events, GAQL reports): a run without
//! `--since`/`--until` is the backfill `--since today-(N-1)`, so it moves no cursor
//! (the target's cursors live in its own lake anyway, never in prod's). Streams that
//! are not read by date (files, tables) are read as usual.

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
    /// The lake's encryption in this target, a whole `lake_encryption:` section.
    #[serde(default)]
    pub lake_encryption: Option<Value>,
    /// The destination of this target, a whole `destination:` section.
    #[serde(default)]
    pub destination: Option<Value>,
    /// Read only a recent window of date-window streams (a dev target's sample).
    #[serde(default)]
    pub sample: Option<Sample>,
}

/// The target that gets defaults for development (as dbt's `dev`).
pub const DEV: &str = "dev";

impl Target {
    /// `dev` without a destination, lake or sample writes to SQLite `dev.db`, its own
    /// lake `./lake-dev` (so a dev run never moves the real lake's cursors) and reads
    /// the last 3 days of date-window streams, as a dbt `dev` target or a Meltano
    /// environment would: a laptop run needs no credentials of the warehouse.
    fn fill_dev_defaults(&mut self) {
        if self.destination.is_none() {
            let mut sqlite = serde_yaml::Mapping::new();
            sqlite.insert("type".into(), "sqlite".into());
            sqlite.insert("path".into(), "dev.db".into());
            self.destination = Some(Value::Mapping(sqlite));
        }
        if self.lake.is_none() {
            self.lake = Some("./lake-dev".into());
        }
        if self.sample.is_none() {
            self.sample = Some(Sample { days: 3 });
        }
    }
}

/// A target's sample window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Days up to and including the run's today (at least 1).
    pub days: u32,
}

impl Sample {
    /// The first day a run on `today` reads.
    pub fn since(&self, today: chrono::NaiveDate) -> chrono::NaiveDate {
        today - chrono::Duration::days(i64::from(self.days.max(1)) - 1)
    }
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
    let mut target: Target = doc.deserialize_at(body, &at(name))?;
    if name == DEV {
        target.fill_dev_defaults();
    }
    if target.sample.is_some_and(|s| s.days == 0) {
        let mut path = at(name);
        path.extend(["sample".into(), "days".into()]);
        return Err(doc.error_at(&path, "a sample needs at least 1 day"));
    }
    Ok(Some((name.to_string(), target)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Lookup, PipelineConfig};

    /// The environment of a test: `SLUICE_TARGET` and one prod-only variable.
    struct Env {
        target: Option<&'static str>,
    }

    impl Lookup for Env {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "SLUICE_TARGET" => self.target.map(str::to_string),
                "PROD_URL" => Some("postgres://u:prod-secret@db/prod".into()),
                _ => None,
            }
        }
    }

    const PIPELINE: &str = "name: shop\nlake: ./lake\ntargets:\n  dev:\n    lake: ./lake-dev\n    destination: { type: sqlite, path: dev.db }\n  prod:\n    destination: { type: postgres, url: \"${PROD_URL}\" }\n  broken:\n    destination: { type: postgres, url: \"${UNSET_VAR}\" }\n";

    fn parse(text: &str, target: Option<&'static str>) -> Result<PipelineConfig, String> {
        PipelineConfig::parse(
            "pipeline.yaml".into(),
            text.into(),
            Path::new("."),
            &Env { target },
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_bare_dev_target_writes_to_sqlite_and_its_own_lake_and_samples_three_days() {
        let text = "name: shop\nlake: s3://acme/shop\ndestination: { type: postgres, url: \"${PROD_URL}\" }\ntargets:\n  dev: {}\n  qa: {}\n";
        let dev = parse(text, Some("dev")).unwrap();
        assert_eq!(dev.lake, "./lake-dev");
        let destination = dev.destination.unwrap();
        assert_eq!(destination.kind, "sqlite");
        assert_eq!(dev.sample, Some(super::Sample { days: 3 }));
        // Only `dev` gets defaults; another target keeps the top level's.
        let qa = parse(text, Some("qa")).unwrap();
        assert_eq!(qa.lake, "s3://acme/shop");
        assert_eq!(qa.destination.unwrap().kind, "postgres");
        assert_eq!(qa.sample, None);
        // What dev states wins.
        let text =
            "name: shop\nlake: ./lake\ntargets:\n  dev: { lake: ./mine, sample: { days: 10 } }\n";
        let dev = parse(text, Some("dev")).unwrap();
        assert_eq!(dev.lake, "./mine");
        assert_eq!(dev.sample, Some(super::Sample { days: 10 }));
    }

    #[test]
    fn a_target_replaces_lake_and_destination_and_only_its_variables_are_read() {
        let base = parse(PIPELINE, None).unwrap();
        assert_eq!((base.lake.as_str(), base.target), ("./lake", None));
        assert!(base.destination.is_none());

        let dev = parse(PIPELINE, Some("dev")).unwrap();
        assert_eq!(dev.lake, "./lake-dev");
        assert_eq!(dev.target.as_deref(), Some("dev"));
        let destination = dev.destination.unwrap();
        assert_eq!(destination.kind, "sqlite");
        assert_eq!(destination.path, ["targets", "dev", "destination"]);

        // prod keeps the top-level lake; its variable is interpolated for it only.
        let prod = parse(PIPELINE, Some("prod")).unwrap();
        assert_eq!(prod.lake, "./lake");
        let url = &prod.destination.unwrap().body["url"];
        assert_eq!(url.as_str(), Some("postgres://u:prod-secret@db/prod"));

        // `broken`'s unset variable matters only when `broken` is chosen.
        let err = parse(PIPELINE, Some("broken")).unwrap_err();
        assert!(
            err.contains("targets.broken.destination.url") && err.contains("UNSET_VAR"),
            "{err}"
        );
    }

    #[test]
    fn unknown_targets_and_keys_are_config_errors_with_suggestions() {
        let err = parse(PIPELINE, Some("dve")).unwrap_err();
        assert!(
            err.contains("--target dve: no such target") && err.contains("did you mean `dev`?"),
            "{err}"
        );
        let err = parse("name: shop\n", Some("dev")).unwrap_err();
        assert!(err.contains("the pipeline defines no `targets:`"), "{err}");
        let typo = PIPELINE.replace("    lake: ./lake-dev", "    lak: ./lake-dev");
        let err = parse(&typo, None).unwrap_err();
        assert!(
            err.contains("pipeline.yaml:5:") && err.contains("did you mean `lake`?"),
            "{err}"
        );
    }
}
