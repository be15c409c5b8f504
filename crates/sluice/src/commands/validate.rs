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
    // `serve:` and `alerts:` are checked here too, so a typo is not found at 3 a.m.
    let serve_sections = crate::server::Tokens::from_config(&project.config)
        .and_then(|_| crate::alerts::Alerter::from_config(&project.config, "http://localhost"));
    if let Err(e) = serve_sections {
        crate::project::print_config_error(&e);
        return exit::CONFIG;
    }
    let specs: Vec<_> = project.sources.iter().flat_map(|s| s.streams()).collect();
    let models = models
        .with_streams(specs.iter().cloned())
        .with_aliases(project.aliases.clone());
    if let Err(e) = sluice_transform::preflight::check_models(&models, &project.lake, &specs).await
    {
        return crate::project::report_transform_error(&e);
    }
    if let Err(e) =
        sluice_transform::pushdown::check_destination(&models, project.destination.as_ref())
    {
        return crate::project::report_transform_error(&e);
    }
    if project.config.docs.require_descriptions {
        if let Some(code) = check_descriptions(&project, &models, &specs).await {
            return code;
        }
    }
    let mut report = Report {
        summary: format!(
        "{}: pipeline `{}` is valid ({} sources, {} streams, {} models; lake {}; destination {})",
        pipeline.display(),
        project.config.name,
        project.sources.len(),
        specs.len(),
        models.models.len(),
        project.lake.location(),
        project.destination.describe()
        ),
        ..Report::default()
    };
    // Warnings known from the config alone (an API version nearing its sunset).
    for source in &project.sources {
        for notice in source.notices() {
            report.warn(format!("source {}", source.name()), notice);
        }
    }
    if let Some(column) = personal_column_in_sqlite(&project, &models, &specs) {
        report.warn(
            "destination".into(),
            format!(
                "D1 in SQLite holds personal data in clear text ({column}; SQLite has no \
                 grants): fine for a demo, for real data use PostgreSQL with \
                 `destination.d1_readers`"
            ),
        );
    }
    if args.connections {
        let destination = format!("destination {}", project.destination.describe());
        match project.destination.check().await {
            Ok(()) => report.check(destination, None, None),
            Err(e) => report.check(
                destination,
                Some(sluice_core::secret::redact(&e.to_string())),
                None,
            ),
        }
        for source in &project.sources {
            match source.check().await {
                Ok(()) => report.check(format!("source {}", source.name()), None, None),
                Err(e) => report.check(
                    format!("source {}", source.name()),
                    Some(e.message),
                    e.config_key,
                ),
            }
        }
        // What the APIs said about themselves while answering (deprecation headers).
        for source in &project.sources {
            for notice in source.notices() {
                report.warn(format!("source {}", source.name()), notice);
            }
        }
    }
    report.print();
    let failed = report.checks.iter().any(|c| c.error.is_some());
    if failed {
        exit::CONNECTION
    } else {
        exit::OK
    }
}

/// A D1 column (`table.column`) holding personal data (a connector's mark or a `pii:`
/// rule) when the destination is SQLite, where D1 cannot be closed to readers.
fn personal_column_in_sqlite(
    project: &Project,
    models: &sluice_transform::ModelProject,
    specs: &[sluice_core::source::StreamSpec],
) -> Option<String> {
    let sqlite = project
        .config
        .destination
        .as_ref()
        .is_none_or(|d| d.kind == "sqlite");
    if !sqlite {
        return None;
    }
    specs.iter().find_map(|spec| {
        spec.schema
            .fields
            .iter()
            .find(|f| f.pii || models.pii.action(&spec.table, &f.name, false).is_some())
            .map(|f| format!("{}.{}", spec.table, f.name))
    })
}

/// What `validate` found, printed as text, or as one JSON document on stdout under
/// `--log-format json` (for CI annotations).
#[derive(Default, serde::Serialize)]
struct Report {
    summary: String,
    warnings: Vec<Warning>,
    /// `--connections`: each source and the destination, in order.
    checks: Vec<Check>,
}

#[derive(serde::Serialize, PartialEq)]
struct Warning {
    subject: String,
    message: String,
}

#[derive(serde::Serialize)]
struct Check {
    subject: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The config key to fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    config_key: Option<String>,
}

impl Report {
    /// Adds a warning once (an API repeats its deprecation notice on every answer).
    fn warn(&mut self, subject: String, message: String) {
        let warning = Warning { subject, message };
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    fn check(&mut self, subject: String, error: Option<String>, config_key: Option<String>) {
        self.checks.push(Check {
            subject,
            ok: error.is_none(),
            error,
            config_key,
        });
    }

    fn print(&self) {
        if crate::logging::format() == crate::logging::LogFormat::Json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
            return;
        }
        println!("{}", self.summary);
        // Config warnings first, then each connection check, as they were found.
        for w in &self.warnings {
            println!("  ! {}: {}", w.subject, w.message);
        }
        for c in &self.checks {
            match &c.error {
                None => println!("  ✓ {}", c.subject),
                Some(e) => {
                    let fix = c
                        .config_key
                        .as_ref()
                        .map(|k| format!(" (check `{k}`)"))
                        .unwrap_or_default();
                    println!("  ✗ {}: {e}{fix}", c.subject);
                }
            }
        }
    }
}

/// `docs: { require_descriptions: true }`: every model and every output column it can be
/// planned to have must be described. Prints each gap (file:line) and returns the exit
/// code when there is one.
async fn check_descriptions(
    project: &Project,
    models: &sluice_transform::ModelProject,
    specs: &[sluice_core::source::StreamSpec],
) -> Option<u8> {
    let (lineage, _) =
        match sluice_transform::lineage::column_lineage(models, &project.lake, specs).await {
            Ok(l) => l,
            Err(e) => return Some(crate::project::report_transform_error(&e)),
        };
    let mut missing = Vec::new();
    for model in &models.models {
        // A model that cannot be planned yet (it reads inferred columns before a first
        // run) is checked for what its YAML names.
        let columns: Vec<&str> = match lineage.models.get(&model.qualified_name()) {
            Some(columns) => columns.iter().map(|c| c.name.as_str()).collect(),
            None => model.config.columns.keys().map(String::as_str).collect(),
        };
        missing.extend(model.missing_descriptions(columns));
    }
    if missing.is_empty() {
        return None;
    }
    for error in &missing {
        crate::project::print_config_error(error);
    }
    crate::logging::print_error!(
        "{} description(s) missing (`docs.require_descriptions` is on)",
        missing.len()
    );
    Some(exit::CONFIG)
}
