//! `sluice test`: the models' checks over what the lake holds now, without
//! extracting or rebuilding anything (dbt's `dbt test`), with an exit code and an
//! optional JUnit XML report for CI.
//!
//! Streams declare no checks (their records are typed and quarantined as they load),
//! so the checks are the models'. A failing `error` check exits with
//! [`exit::CHECKS_FAILED`]; a failing `warn` check is printed and exits 0.

use std::path::{Path, PathBuf};

use sluice_transform::checks::Severity;
use sluice_transform::published::{check_published, CheckOutcome, CheckResult};

use super::lake_view::with_registered_marks;
use super::run::build_plan;
use crate::exit;
use crate::project::Project;

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The models (or checks) to test, with `sluice run --select`'s syntax; default: all.
    #[arg(short, long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Also write a JUnit XML report here: one testcase per check.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

pub async fn run(pipeline: &Path, args: TestArgs) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let (plan, models) = match build_plan(&project, &project.sources) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // A selector naming one check (`not_null(id)`, `d2a.orders_clean:not_null(id)`)
    // tests that check alone; the plan would select its model's other checks with
    // it, as `sluice run` runs them together.
    let names_check = |pattern: &str| {
        models.models.iter().any(|m| {
            m.config.checks.iter().any(|c| {
                let name = c.display_name();
                pattern == name || pattern == format!("{}:{name}", m.qualified_name())
            })
        })
    };
    let (named_checks, others): (Vec<String>, Vec<String>) =
        args.select.iter().cloned().partition(|p| names_check(p));
    let selection = if others.is_empty() && !named_checks.is_empty() {
        sluice_core::plan::Selection::default()
    } else {
        match plan.select(&others) {
            Ok(s) => s,
            Err(e) => {
                crate::logging::print_error!("{e}");
                return exit::CONFIG;
            }
        }
    };
    let models = match with_registered_marks(models, &project.lake, &project.config.name).await {
        Ok(m) => m,
        Err(e) => {
            crate::logging::print_error!("{}", sluice_core::secret::redact(&e));
            return exit::RUN_FAILED;
        }
    };
    let selected = |model: &sluice_transform::Model,
                    check: &sluice_transform::checks::CheckSpec| {
        let name = check.display_name();
        let id = format!("{}:{name}", model.qualified_name());
        selection.contains(&id) || named_checks.iter().any(|p| *p == name || *p == id)
    };
    let outcomes = match check_published(&models, &project.lake, selected).await {
        Ok(o) => o,
        Err(e) => {
            crate::logging::print_error!(
                "cannot read the lake: {}",
                sluice_core::secret::redact(&e.to_string())
            );
            return exit::RUN_FAILED;
        }
    };
    print_outcomes(&outcomes);
    if let Some(path) = &args.junit {
        let xml = match junit_xml(&project.config.name, &outcomes) {
            Ok(x) => x,
            Err(e) => {
                crate::logging::print_error!("cannot render the JUnit report: {e}");
                return exit::INTERNAL;
            }
        };
        if let Err(e) = std::fs::write(path, xml) {
            crate::logging::print_error!("cannot write {}: {e}", path.display());
            return exit::INTERNAL;
        }
    }
    if outcomes.iter().any(blocks) {
        exit::CHECKS_FAILED
    } else {
        exit::OK
    }
}

/// Whether an outcome fails the command: an `error` check that failed, or any
/// check that could not run (a model not published is not a pass).
fn blocks(outcome: &CheckOutcome) -> bool {
    match outcome.result {
        CheckResult::Passed => false,
        CheckResult::Failed { .. } => outcome.severity == Severity::Error,
        CheckResult::Error(_) => true,
    }
}

/// Failing rows printed per check; the rest are in the JUnit report's count and in
/// `sluice run`'s quarantine.
const SAMPLE_ROWS: usize = 3;

fn print_outcomes(outcomes: &[CheckOutcome]) {
    if outcomes.is_empty() {
        println!("no checks selected: models declare checks under `checks:` in their YAML");
        return;
    }
    for o in outcomes {
        let (status, detail) = match &o.result {
            CheckResult::Passed => ("PASS", String::new()),
            CheckResult::Failed { message, .. } if o.severity == Severity::Warn => {
                ("WARN", message.clone())
            }
            CheckResult::Failed { message, .. } => ("FAIL", message.clone()),
            CheckResult::Error(message) => ("ERROR", message.clone()),
        };
        println!("  {status:<5}  {}  {}", o.model, o.check);
        if !detail.is_empty() {
            println!("         {detail}");
        }
        if let CheckResult::Failed { rows, .. } = &o.result {
            for row in rows.iter().take(SAMPLE_ROWS) {
                println!("         row: {}", row.raw);
            }
            if rows.len() > SAMPLE_ROWS {
                println!("         … and {} more rows", rows.len() - SAMPLE_ROWS);
            }
        }
    }
    let count = |f: &dyn Fn(&CheckOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let passed = count(&|o| matches!(o.result, CheckResult::Passed));
    let failed =
        count(&|o| matches!(o.result, CheckResult::Failed { .. }) && o.severity == Severity::Error);
    let warned =
        count(&|o| matches!(o.result, CheckResult::Failed { .. }) && o.severity == Severity::Warn);
    let errors = count(&|o| matches!(o.result, CheckResult::Error(_)));
    let total = outcomes.len();
    let noun = if total == 1 { "check" } else { "checks" };
    println!(
        "{total} {noun}: {passed} passed, {failed} failed, {warned} warned, {errors} could not run"
    );
}

/// The JUnit XML report: one `<testsuite>` per model, one `<testcase>` per check; a
/// failing `error` check is a `<failure>`, a failing `warn` check passes with its
/// message in `<system-out>`, a check that could not run is an `<error>`.
fn junit_xml(pipeline: &str, outcomes: &[CheckOutcome]) -> Result<String, minijinja::Error> {
    use std::collections::BTreeMap;
    let mut suites: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for o in outcomes {
        let (failure, warning, error) = match &o.result {
            CheckResult::Passed => (None, None, None),
            CheckResult::Failed { message, rows } => {
                let body = rows
                    .iter()
                    .map(|r| r.raw.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                match o.severity {
                    Severity::Error => (Some((xml_text(message), xml_text(&body))), None, None),
                    Severity::Warn => (None, Some(xml_text(&format!("{message}\n{body}"))), None),
                }
            }
            CheckResult::Error(message) => (None, None, Some(xml_text(message))),
        };
        suites.entry(&o.model).or_default().push(serde_json::json!({
            "name": xml_text(&o.check),
            "classname": xml_text(&format!("{pipeline}.{}", o.model)),
            "time": format!("{:.3}", o.duration.as_secs_f64()),
            "failure": failure.map(|(m, b)| serde_json::json!({"message": m, "body": b})),
            "warning": warning,
            "error": error,
        }));
    }
    let suites: Vec<serde_json::Value> = suites
        .into_iter()
        .map(|(model, cases)| {
            let failures = cases.iter().filter(|c| !c["failure"].is_null()).count();
            let errors = cases.iter().filter(|c| !c["error"].is_null()).count();
            let time: f64 = cases
                .iter()
                .filter_map(|c| c["time"].as_str()?.parse::<f64>().ok())
                .sum();
            serde_json::json!({
                "name": xml_text(model),
                "tests": cases.len(),
                "failures": failures,
                "errors": errors,
                "time": format!("{time:.3}"),
                "cases": cases,
            })
        })
        .collect();
    let mut env = minijinja::Environment::new();
    // HTML escaping is XML escaping for text and attribute values.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.add_template("junit.xml", JUNIT_TEMPLATE)?;
    let total = outcomes.len();
    let failures = outcomes
        .iter()
        .filter(|o| matches!(o.result, CheckResult::Failed { .. }) && o.severity == Severity::Error)
        .count();
    let errors = outcomes
        .iter()
        .filter(|o| matches!(o.result, CheckResult::Error(_)))
        .count();
    env.get_template("junit.xml")?.render(minijinja::context! {
        name => format!("sluice test {pipeline}"),
        tests => total,
        failures => failures,
        errors => errors,
        suites => minijinja::value::Serde(&suites),
    })
}

const JUNIT_TEMPLATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="{{ name }}" tests="{{ tests }}" failures="{{ failures }}" errors="{{ errors }}">
{%- for suite in suites %}
  <testsuite name="{{ suite.name }}" tests="{{ suite.tests }}" failures="{{ suite.failures }}" errors="{{ suite.errors }}" skipped="0" time="{{ suite.time }}">
  {%- for case in suite.cases %}
    <testcase name="{{ case.name }}" classname="{{ case.classname }}" time="{{ case.time }}">
    {%- if case.failure %}
      <failure message="{{ case.failure.message }}" type="check">{{ case.failure.body }}</failure>
    {%- endif %}
    {%- if case.error %}
      <error message="{{ case.error }}" type="error">{{ case.error }}</error>
    {%- endif %}
    {%- if case.warning %}
      <system-out>warning: {{ case.warning }}</system-out>
    {%- endif %}
    </testcase>
  {%- endfor %}
  </testsuite>
{%- endfor %}
</testsuites>
"#;

/// Text as XML 1.0 allows it: control characters other than tab, newline and
/// carriage return cannot appear in an XML document, even escaped.
fn xml_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_report_escapes_markup_and_drops_characters_xml_cannot_hold() {
        let outcomes = vec![CheckOutcome {
            model: "d2a.m".into(),
            check: "sql<&>\"'".into(),
            severity: Severity::Error,
            result: CheckResult::Failed {
                message: "bad \u{1} </failure>".into(),
                rows: Vec::new(),
            },
            duration: Duration::from_millis(5),
        }];
        let xml = junit_xml("p", &outcomes).unwrap();
        assert!(xml.contains("sql&lt;&amp;&gt;&quot;"), "{xml}");
        assert!(
            !xml.contains('\u{1}') && !xml.contains("</failure>\""),
            "{xml}"
        );
        assert!(xml.contains("bad \u{FFFD} &lt;"), "{xml}");
    }
}
