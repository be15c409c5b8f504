//! `sluice new source <type> <name>` and `sluice new model <layer>.<name> [--from T]`:
//! onboarding a table without editing several files by hand.
//!
//! A source is added to pipeline.yaml by inserting lines at the end of `sources:`
//! (comments and layout stay), with its credentials as `${VAR}` names to set. A model
//! is a new `models/<layer>/<name>.sql` selecting every column of the table it is
//! built from (columns from the schema registry, the stream's declared columns or the
//! upstream model's plan) and a `.yml` beside it whose column descriptions are copied
//! from upstream and whose gaps are `TODO(owner)`. Either is validated at once; when
//! it does not validate, nothing is left behind.

use std::path::{Path, PathBuf};

use sluice_core::config::{is_identifier, PipelineConfig};

use super::discover::{block_end, child, indent_of};
use crate::docs::Knowledge;
use crate::exit;
use crate::project::Project;

#[derive(clap::Subcommand, Debug)]
pub enum NewCommand {
    /// Add a source to pipeline.yaml: `sluice new source facebook_ads fb_brand`.
    Source {
        /// The source type: facebook_ads, google_ads, clevertap, files, postgres, mysql, generate.
        kind: String,
        /// Its name (lowercase letters, digits, `_`; D1 tables are `<name>_<stream>`).
        name: String,
    },
    /// Add a SQL model and its YAML: `sluice new model d2b.spend_by_account --from d2a.ad_performance_daily`.
    Model {
        /// `d2a.<name>` (standardised) or `d2b.<name>` (business).
        model: String,
        /// The table it is built from (`d1.facebook_insights`, `facebook.insights`,
        /// `d2a.ad_performance_daily`): its columns are selected and described.
        #[arg(long)]
        from: Option<String>,
    },
}

pub async fn run(pipeline: &Path, command: NewCommand) -> u8 {
    match command {
        NewCommand::Source { kind, name } => new_source(pipeline, &kind, &name),
        NewCommand::Model { model, from } => new_model(pipeline, &model, from.as_deref()).await,
    }
}

/// The YAML body of a new source of `kind` (after its `name:` line), indented by
/// `step`, and the environment variables it reads.
fn source_template(kind: &str, name: &str, step: usize) -> Option<(String, Vec<String>)> {
    let var = |what: &str| format!("{}_{what}", name.to_ascii_uppercase());
    let start = (chrono::Utc::now().date_naive() - chrono::Days::new(30)).to_string();
    let (lines, vars): (Vec<String>, Vec<String>) = match kind {
        "facebook_ads" => (
            vec![
                format!("access_token: ${{{}}}", var("ACCESS_TOKEN")),
                "accounts: all                # or [act_123, …]".into(),
                format!("start_date: {start}"),
                "lookback_days: 28            # insights keep changing for weeks".into(),
                "streams:".into(),
                "  insights: { level: ad, fields: [impressions, clicks, spend] }".into(),
                "  campaigns: {}".into(),
            ],
            vec![var("ACCESS_TOKEN")],
        ),
        "google_ads" => (
            vec![
                format!("developer_token: ${{{}}}", var("DEVELOPER_TOKEN")),
                format!(
                    "oauth: {{ client_id: \"${{{}}}\", client_secret: \"${{{}}}\", refresh_token: \"${{{}}}\" }}",
                    var("CLIENT_ID"),
                    var("CLIENT_SECRET"),
                    var("REFRESH_TOKEN")
                ),
                "# login_customer_id: \"1234567890\"   # the manager account, if any".into(),
                format!("start_date: {start}"),
                "lookback_days: 30".into(),
            ],
            vec![
                var("DEVELOPER_TOKEN"),
                var("CLIENT_ID"),
                var("CLIENT_SECRET"),
                var("REFRESH_TOKEN"),
            ],
        ),
        "clevertap" => (
            vec![
                format!("account_id: ${{{}}}", var("ACCOUNT_ID")),
                format!("passcode: ${{{}}}", var("PASSCODE")),
                "region: eu1".into(),
                format!("start_date: {start}"),
                "streams:".into(),
                "  events: { names: [App Launched] }".into(),
                "  profiles: { pii: [email, phone, name, address] }".into(),
            ],
            vec![var("ACCOUNT_ID"), var("PASSCODE")],
        ),
        "files" => (
            vec![
                "streams:".into(),
                format!("  {name}:"),
                format!("    path: data/{name}/*.ndjson      # NDJSON, CSV or Parquet"),
                "    # columns: { id: bigint, day: date }   # else inferred from the data".into(),
                "    # primary_key: [id]".into(),
                "    write_mode: append".into(),
            ],
            Vec::new(),
        ),
        "postgres" | "mysql" => (
            vec![
                format!("url: ${{{}}}", var("URL")),
                format!(
                    "# streams: add tables with `sluice discover {name} <schema.table> --write`"
                ),
            ],
            vec![var("URL")],
        ),
        "generate" => (
            vec![
                "streams:".into(),
                format!("  rows: {{ rows: 1000, days: 7, start_date: {start} }}"),
            ],
            Vec::new(),
        ),
        _ => return None,
    };
    let pad = " ".repeat(step);
    let mut body = format!("{pad}type: {kind}\n");
    for line in lines {
        body.push_str(&format!("{pad}{line}\n"));
    }
    Some((body, vars))
}

const SOURCE_TYPES: &str = "facebook_ads, google_ads, clevertap, files, postgres, mysql, generate";

fn new_source(pipeline: &Path, kind: &str, name: &str) -> u8 {
    if !is_identifier(name) {
        crate::logging::print_error!("`{name}` is not a source name: use lowercase letters, digits and `_`, starting with a letter (D1 tables are named `{}_<stream>`)", name.to_ascii_lowercase());
        return exit::USAGE;
    }
    let original = match std::fs::read_to_string(pipeline) {
        Ok(t) => t,
        Err(e) => {
            crate::logging::print_error!(
                "cannot read {}: {e} (run `sluice init` first)",
                pipeline.display()
            );
            return exit::CONFIG;
        }
    };
    let config = match PipelineConfig::load_for_inspection(pipeline) {
        Ok(c) => c,
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    if let Some(existing) = config.source(name) {
        crate::logging::print_error!(
            "a source named `{name}` exists already (type {}); pick another name",
            existing.kind
        );
        return exit::CONFIG;
    }
    let lines: Vec<&str> = original.lines().collect();
    let (text, vars) = match child(&lines, 0, None, "sources") {
        Some(sources) => {
            let sources_indent = indent_of(lines[sources]).unwrap_or(0);
            if lines[sources]
                .split_once(':')
                .is_some_and(|(_, v)| v.trim() == "{}")
            {
                crate::logging::print_error!("`sources: {{}}` is written inline in {}; replace it by `sources:` and run again", pipeline.display());
                return exit::CONFIG;
            }
            let step = lines
                .get(sources + 1..)
                .and_then(|rest| rest.iter().find_map(|l| indent_of(l)))
                .filter(|n| *n > sources_indent)
                .map(|n| n - sources_indent)
                .unwrap_or(2);
            let at = block_end(&lines, sources, sources_indent);
            let Some((body, vars)) = source_template(kind, name, sources_indent + 2 * step) else {
                crate::logging::print_error!(
                    "unknown source type `{kind}`; the types are: {SOURCE_TYPES}"
                );
                return exit::USAGE;
            };
            let block = format!("{}{name}:\n{body}", " ".repeat(sources_indent + step));
            let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
            out.push(block.trim_end().to_string());
            out.extend(lines[at..].iter().map(|l| l.to_string()));
            (out.join("\n") + "\n", vars)
        }
        None => {
            let Some((body, vars)) = source_template(kind, name, 4) else {
                crate::logging::print_error!(
                    "unknown source type `{kind}`; the types are: {SOURCE_TYPES}"
                );
                return exit::USAGE;
            };
            let mut text = original.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("\nsources:\n  {name}:\n{body}"));
            (text, vars)
        }
    };
    if let Err(e) = std::fs::write(pipeline, &text) {
        crate::logging::print_error!("cannot write {}: {e}", pipeline.display());
        return exit::INTERNAL;
    }
    // Validated at once: the file must still load and the source must build (its
    // credentials may be unset yet); otherwise the file is put back.
    let checked = PipelineConfig::load_for_inspection(pipeline).and_then(|config| {
        let section = config.source(name).cloned().expect("the source just added");
        if matches!(kind, "postgres" | "mysql") {
            // Building a database source connects to it; its URL is not set yet.
            return Ok(());
        }
        let ctx = sluice_connectors::BuildContext {
            root: config.root.clone(),
            lake: sluice_core::lake::Lake::open(&config.lake, &config.root)
                .map_err(|e| config.doc.error_at(&["lake".into()], e.to_string()))?,
        };
        sluice_connectors::build_source(&config.doc, &section, &ctx).map(|_| ())
    });
    if let Err(e) = checked {
        let _ = std::fs::write(pipeline, &original);
        crate::project::print_config_error(&e);
        crate::logging::print_error!(
            "the new source did not validate; {} is unchanged",
            pipeline.display()
        );
        return exit::CONFIG;
    }
    println!("added source `{name}` ({kind}) to {}", pipeline.display());
    if !vars.is_empty() {
        println!(
            "  set {} in the environment or .env (never in the file)",
            vars.join(", ")
        );
    }
    println!(
        "  next: adjust its streams, then `sluice validate --connections` and `sluice run --select {name}`"
    );
    exit::OK
}

/// A path without its `./` parts, as people write it.
fn tidy(path: &Path) -> String {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect::<PathBuf>()
        .display()
        .to_string()
}

/// A column name as SQL needs it: bare when it is a plain lowercase identifier.
fn sql_name(column: &str) -> String {
    if column
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && column
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        column.to_string()
    } else {
        format!("\"{}\"", column.replace('"', "\"\""))
    }
}

/// A YAML scalar, quoted.
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// What a new model is built from: its table, columns and their descriptions, and the
/// upstream model's date partition (to stay incremental like it).
struct Upstream {
    table: String,
    /// `(column, description)` in the table's order.
    columns: Vec<(String, Option<String>)>,
    partition_by: Option<String>,
}

/// Resolves `--from`: a D1 table (`d1.x` or its stream `source.stream`) or a model.
fn upstream(knowledge: &Knowledge, layer: &str, from: &str) -> Result<Upstream, String> {
    let known = || {
        let mut names: Vec<String> = knowledge
            .streams
            .iter()
            .map(|s| format!("d1.{}", s.spec.table))
            .chain(knowledge.models.models.iter().map(|m| m.qualified_name()))
            .collect();
        names.sort();
        names.join(", ")
    };
    let table = match knowledge.streams.iter().find(|s| s.id() == from) {
        Some(stream) => format!("d1.{}", stream.spec.table),
        None => from.to_string(),
    };
    if let Some(name) = table.strip_prefix("d1.") {
        let Some(stream) = knowledge.stream_of_table(name) else {
            return Err(format!(
                "`{from}` is not a table of this pipeline; the tables are: {}",
                known()
            ));
        };
        let columns = knowledge
            .stream_fields(stream)
            .into_iter()
            .map(|f| {
                let description = knowledge
                    .derived
                    .get(&(name.to_string(), f.name.clone()))
                    .map(|from| format!("Computed by the connector from {}.", from.join(", ")));
                (f.name, description)
            })
            .collect();
        return Ok(Upstream {
            table,
            columns,
            partition_by: None,
        });
    }
    let Some((up_layer, up_name)) = table.split_once('.') else {
        return Err(format!("`{from}` is not a table: name it with its layer (d1.<table>, d2a.<model>, d2b.<model>); the tables are: {}", known()));
    };
    let Some(model) = knowledge.models.model(up_layer, up_name) else {
        return Err(format!(
            "`{from}` is not a table of this pipeline; the tables are: {}",
            known()
        ));
    };
    if layer == "d2a" && up_layer == "d2b" {
        return Err(format!(
            "a d2a model cannot be built from the d2b layer (`{from}`): data flows d1 → d2a → d2b"
        ));
    }
    // Unknown before the first run when it reads a stream whose columns are inferred
    // from data: the new model then selects `*` and its YAML names no column yet.
    let columns: Vec<(String, Option<String>)> = knowledge
        .lineage
        .models
        .get(&model.qualified_name())
        .into_iter()
        .flatten()
        .map(|c| (c.name.clone(), model.column_description(&c.name)))
        .collect();
    // The upstream's partition column is one of its output columns, so `*` has it too.
    let partition_by = model.config.partition_by.clone().filter(|p| {
        model.config.materialized == sluice_transform::project::Materialization::Incremental
            && (columns.is_empty() || columns.iter().any(|(c, _)| c == p))
    });
    Ok(Upstream {
        table,
        columns,
        partition_by,
    })
}

async fn new_model(pipeline: &Path, model: &str, from: Option<&str>) -> u8 {
    let Some((layer, name)) = model.split_once('.') else {
        crate::logging::print_error!("name the model with its layer: `d2a.{model}` (standardised) or `d2b.{model}` (business)");
        return exit::USAGE;
    };
    match layer {
        "d2a" | "d2b" => {}
        "d1" => {
            crate::logging::print_error!("d1 tables are loaded by streams, not written by models: add a source with `sluice new source <type> <name>` (or a stream under an existing one); models go in d2a or d2b");
            return exit::USAGE;
        }
        other => {
            crate::logging::print_error!("unknown layer `{other}`: a model goes in d2a (standardised) or d2b (business), e.g. `d2b.{name}`");
            return exit::USAGE;
        }
    }
    if !is_identifier(name) {
        crate::logging::print_error!("`{name}` is not a model name: use lowercase letters, digits and `_`, starting with a letter (it becomes the table name)");
        return exit::USAGE;
    }
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let knowledge = match Knowledge::gather(&project).await {
        Ok(k) => k,
        Err(code) => return code,
    };
    // One name per model across layers, so `--select <name>` stays unambiguous.
    if let Some(existing) = knowledge.models.models.iter().find(|m| m.name == name) {
        crate::logging::print_error!(
            "a model named `{name}` exists already: {} ({}); pick another name",
            existing.qualified_name(),
            tidy(&existing.sql_path)
        );
        return exit::CONFIG;
    }
    let dir = knowledge.models.dir.join(layer);
    let sql_path = dir.join(format!("{name}.sql"));
    let yml_path = dir.join(format!("{name}.yml"));
    for path in [&sql_path, &yml_path] {
        if path.exists() {
            crate::logging::print_error!("{} exists already; pick another name", path.display());
            return exit::CONFIG;
        }
    }
    let upstream = match from.map(|f| upstream(&knowledge, layer, f)).transpose() {
        Ok(u) => u,
        Err(message) => {
            crate::logging::print_error!("--from {}: {message}", from.unwrap_or_default());
            return exit::CONFIG;
        }
    };
    let (sql, yml) = scaffold(model, from, upstream.as_ref());
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&sql_path, &sql))
        .and_then(|()| std::fs::write(&yml_path, &yml));
    let remove = || {
        let _ = std::fs::remove_file(&sql_path);
        let _ = std::fs::remove_file(&yml_path);
    };
    if let Err(e) = written {
        remove();
        crate::logging::print_error!("cannot write {}: {e}", sql_path.display());
        return exit::INTERNAL;
    }
    // Validated at once, as `sluice validate` plans models: against the lake's tables.
    if let Err(code) = validate_models(&project).await {
        remove();
        crate::logging::print_error!("the new model did not validate; nothing was written");
        return code;
    }
    let shown = |p: &PathBuf| tidy(p.strip_prefix(&project.config.root).unwrap_or(p));
    match &upstream {
        Some(u) if u.columns.is_empty() => println!(
            "created {} and {} selecting * from {} (its columns are known after the first run); it validates",
            shown(&sql_path),
            shown(&yml_path),
            u.table
        ),
        Some(u) => println!(
            "created {} and {} ({} columns from {}); it validates",
            shown(&sql_path),
            shown(&yml_path),
            u.columns.len(),
            u.table
        ),
        None => println!(
            "created {} and {}; it validates",
            shown(&sql_path),
            shown(&yml_path)
        ),
    }
    println!(
        "  next: edit the SQL, fill the TODO(owner) lines, then `sluice run --select +{name}`"
    );
    exit::OK
}

/// The SQL and YAML of a new model.
fn scaffold(model: &str, from: Option<&str>, upstream: Option<&Upstream>) -> (String, String) {
    let mut yml = format!(
        "# Scaffolded by `sluice new model {model}{}`.\n\
         description: \"\"   # TODO(owner): what this table is and who reads it\n",
        from.map(|f| format!(" --from {f}")).unwrap_or_default()
    );
    let Some(up) = upstream else {
        let sql = "SELECT\n  1 AS id   -- TODO(owner): select from d1.<table>, d2a.<model> …\n"
            .to_string();
        yml.push_str("# primary_key: [id]   # TODO(owner): the columns that identify a row\ncolumns:\n  id: { description: \"\" }   # TODO(owner)\nchecks: []\n");
        return (sql, yml);
    };
    let mut sql = String::from("SELECT\n");
    if up.columns.is_empty() {
        // Columns inferred from data and no run yet: all of them.
        sql.push_str(
            "  *   -- TODO(owner): name the columns (known after the first run: `sluice docs lineage`)\n",
        );
    }
    for (i, (column, _)) in up.columns.iter().enumerate() {
        let comma = if i + 1 < up.columns.len() { "," } else { "" };
        sql.push_str(&format!("  {}{comma}\n", sql_name(column)));
    }
    sql.push_str(&format!("FROM {}\n", up.table));
    if let Some(partition) = &up.partition_by {
        yml.push_str(&format!(
            "materialized: incremental   # like {}: only the days a run touched are recomputed\npartition_by: {partition}\n",
            up.table
        ));
    }
    yml.push_str("# primary_key: []   # TODO(owner): the columns that identify a row\n");
    if !up.columns.is_empty() {
        yml.push_str("columns:\n");
    }
    for (column, description) in &up.columns {
        let key = if is_identifier(column) {
            column.clone()
        } else {
            yaml_string(column)
        };
        match description {
            Some(d) => yml.push_str(&format!(
                "  {key}: {{ description: {} }}   # from {}\n",
                yaml_string(d),
                up.table
            )),
            None => yml.push_str(&format!(
                "  {key}: {{ description: \"\" }}   # TODO(owner)\n"
            )),
        }
    }
    yml.push_str("checks: []   # e.g. - not_null: [id]\n");
    (sql, yml)
}

/// Plans every model as `sluice validate` does; `Err` is the exit code, the error printed.
async fn validate_models(project: &Project) -> Result<(), u8> {
    let models = sluice_transform::ModelProject::load(&project.config).map_err(|e| {
        crate::project::print_config_error(&e);
        exit::CONFIG
    })?;
    let specs: Vec<_> = project.sources.iter().flat_map(|s| s.streams()).collect();
    let models = models.with_streams(specs.iter().cloned());
    sluice_transform::preflight::check_models(&models, &project.lake, &specs)
        .await
        .map_err(|e| crate::project::report_transform_error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_quoted_only_when_sql_needs_it() {
        assert_eq!(sql_name("spend_usd"), "spend_usd");
        assert_eq!(sql_name("Payment Method"), "\"Payment Method\"");
        assert_eq!(sql_name("2x"), "\"2x\"");
    }

    /// Every variable is set (to a value a URL or token accepts).
    struct AllSet;

    impl sluice_core::config::Lookup for AllSet {
        fn var(&self, name: &str) -> Option<String> {
            (name != sluice_core::config::TARGET_VAR).then(|| "x".to_string())
        }
    }

    #[test]
    fn every_source_type_has_a_template_that_builds_and_unknown_types_have_none() {
        let dir = tempfile::tempdir().unwrap();
        for kind in SOURCE_TYPES.split(", ") {
            let (body, vars) = source_template(kind, "x", 4).unwrap();
            assert!(body.starts_with(&format!("    type: {kind}\n")), "{body}");
            assert!(vars.iter().all(|v| body.contains(&format!("${{{v}}}"))));
            let text = format!("name: t\nsources:\n  x:\n{body}");
            let config =
                PipelineConfig::parse("pipeline.yaml".into(), text, dir.path(), &AllSet).unwrap();
            if matches!(kind, "postgres" | "mysql") {
                continue; // building connects to the database
            }
            let ctx = sluice_connectors::BuildContext {
                root: dir.path().to_path_buf(),
                lake: sluice_core::lake::Lake::open("lake", dir.path()).unwrap(),
            };
            let built = sluice_connectors::build_source(&config.doc, &config.sources[0], &ctx);
            assert!(built.is_ok(), "{kind}: {}", built.err().unwrap());
        }
        assert!(source_template("facebook", "x", 4).is_none());
    }
}
