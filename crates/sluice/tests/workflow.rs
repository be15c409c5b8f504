//! The data engineer's daily verbs through the CLI (issue 19): `sluice test` (checks
//! over what is published, exit codes, a JUnit report a real parser reads), `show`,
//! `compile`, `ls` and `quarantine list`, each with its failure path.

mod common;

use std::path::Path;
use std::process::Command as Process;

use common::*;
use serde_json::Value;

const PII_KEY: &str = "0123456789abcdef0123456789abcdef-workflow";

fn pipeline() -> &'static str {
    r#"name: shop
lake: ./lake
pii:
  key: ${PII_KEY}
  columns: { "*.email": hash }
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders.ndjson
        columns: { id: bigint, amount: "numeric(12,2)", email: text }
        infer_columns: false
"#
}

/// A project with one stream and a model with a passing check (`not_null(id)`) and
/// one that order 2 fails (`range(amount)`), of `severity`.
fn project(severity: &str) -> Project {
    let project = Project::new(pipeline());
    project.write(
        "data/orders.ndjson",
        "{\"id\": 1, \"amount\": 2, \"email\": \"ann@example.com\"}\n\
         {\"id\": 2, \"amount\": -3, \"email\": \"bob@example.com\"}\n",
    );
    project.write(
        "models/d2a/orders_clean.sql",
        "SELECT id, amount, email FROM d1.shop_orders\n",
    );
    write_checks(&project, severity);
    project
}

fn write_checks(project: &Project, severity: &str) {
    project.write(
        "models/d2a/orders_clean.yml",
        format!(
            "checks:\n  - not_null: [id]\n  - range: {{ column: amount, min: 0 }}\n    severity: {severity}\n"
        ),
    );
}

fn sluice(project: &Project, args: &[&str]) -> std::process::Output {
    project
        .cmd()
        .env("PII_KEY", PII_KEY)
        .args(args)
        .output()
        .expect("run sluice")
}

/// The JUnit report as junitparser reads it (tests/python/junit_report.py).
fn parse_junit(report: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/junit_report.py");
    let out = Process::new(python())
        .arg(&script)
        .arg(report)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "junitparser could not read the report\n--- stderr\n{}\n--- report\n{}",
        stderr(&out),
        std::fs::read_to_string(report).unwrap_or_default()
    );
    serde_json::from_str(stdout(&out).trim()).expect("junit_report.py prints JSON")
}

fn case<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["suites"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["cases"].as_array().unwrap())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no testcase {name} in {report}"))
}

#[test]
fn test_runs_checks_over_the_published_tables_with_exit_codes_and_a_junit_report() {
    // A warn check lets the run publish the model, failing row and all.
    let project = project("warn");
    let out = sluice(&project, &["run"]);
    assert_exit(&out, 0);
    let published = project.lake_files();

    // warn: the failure prints, the exit code is 0, and the report says so.
    let report = project.path().join("report.xml");
    let out = sluice(&project, &["test", "--junit", report.to_str().unwrap()]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("PASS   d2a.orders_clean  not_null(id)")
            && text.contains("WARN   d2a.orders_clean  range(amount)")
            && text.contains("2 checks: 1 passed, 0 failed, 1 warned"),
        "{text}"
    );
    // Failing rows print as the model sees them: the e-mail through the pii: policy.
    assert!(
        text.contains("\"id\":2") && !text.contains("bob@example.com"),
        "{text}"
    );
    let junit = parse_junit(&report);
    assert_eq!(junit["suites"][0]["name"], "d2a.orders_clean");
    assert_eq!(junit["suites"][0]["tests"], 2);
    assert_eq!(junit["suites"][0]["failures"], 0);
    assert_eq!(
        case(&junit, "not_null(id)")["results"],
        serde_json::json!([])
    );
    let warned = case(&junit, "range(amount)");
    assert_eq!(warned["results"], serde_json::json!([]));
    assert!(
        warned["system_out"]
            .as_str()
            .is_some_and(|s| s.contains("range(amount): 1 failing rows")),
        "{warned}"
    );

    // The same check as an error: exit 7, a <failure> with the message and the row.
    write_checks(&project, "error");
    let out = sluice(&project, &["test", "--junit", report.to_str().unwrap()]);
    assert_exit(&out, 7);
    assert!(
        stdout(&out).contains("FAIL   d2a.orders_clean  range(amount)"),
        "{}",
        stdout(&out)
    );
    let junit = parse_junit(&report);
    assert_eq!(junit["suites"][0]["failures"], 1);
    assert_eq!(
        case(&junit, "not_null(id)")["results"],
        serde_json::json!([])
    );
    let failed = &case(&junit, "range(amount)")["results"][0];
    assert_eq!(failed["kind"], "failure");
    assert_eq!(failed["message"], "range(amount): 1 failing rows");
    assert!(
        failed["text"]
            .as_str()
            .is_some_and(|t| t.contains("\"id\":2")),
        "{failed}"
    );

    // A selector naming one check tests that check alone.
    let out = sluice(&project, &["test", "--select", "not_null(id)"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("1 check: 1 passed") && !stdout(&out).contains("range(amount)"),
        "{}",
        stdout(&out)
    );
    let out = sluice(
        &project,
        &["test", "--select", "d2a.orders_clean:range(amount)"],
    );
    assert_exit(&out, 7);
    assert!(
        stdout(&out).contains("1 check: 0 passed, 1 failed"),
        "{}",
        stdout(&out)
    );

    // Nothing was extracted, rebuilt, published or quarantined by `sluice test`.
    assert_eq!(project.lake_files(), published);

    // Selecting only a model without checks tests nothing, and passes.
    project.write(
        "models/d2a/no_checks.sql",
        "SELECT id FROM d1.shop_orders\n",
    );
    let out = sluice(&project, &["test", "--select", "no_checks"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("no checks selected"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn test_fails_loudly_on_unpublished_models_unknown_selectors_and_unwritable_reports() {
    let project = project("error");
    // Before any run nothing is published: a check that cannot run is not a pass.
    let report = project.path().join("report.xml");
    let out = sluice(&project, &["test", "--junit", report.to_str().unwrap()]);
    assert_exit(&out, 7);
    assert!(
        stdout(&out).contains(
            "d2a.orders_clean is not published in the lake: run `sluice run --select d2a.orders_clean` first"
        ),
        "{}",
        stdout(&out)
    );
    let junit = parse_junit(&report);
    assert_eq!(junit["suites"][0]["errors"], 2);
    assert_eq!(case(&junit, "not_null(id)")["results"][0]["kind"], "error");

    // A selector that matches nothing is a usage error naming what exists.
    let out = sluice(&project, &["test", "--select", "orders_clen"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("models: d2a.orders_clean"),
        "{}",
        stderr(&out)
    );

    // A report that cannot be written fails the command.
    let out = sluice(&project, &["test", "--junit", "no/such/dir/report.xml"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("cannot write no/such/dir/report.xml"),
        "{}",
        stderr(&out)
    );

    // A broken pipeline file is a config error with its line.
    project.write("pipeline.yaml", "name: shop\nlake: ./lake\nsourcs: {}\n");
    let out = sluice(&project, &["test"]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("pipeline.yaml:3"), "{}", stderr(&out));
}

#[test]
fn show_previews_rows_through_the_pii_policy_and_compile_prints_the_resolved_sql() {
    let project = project("error");
    // The error check keeps the model unpublished: show still computes it.
    let out = sluice(&project, &["run"]);
    assert_exit(&out, 5);
    let before = project.lake_files();
    let tables_before = warehouse_tables(&project);

    let out = sluice(
        &project,
        &["show", "orders_clean", "--limit", "1", "--format", "csv"],
    );
    assert_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row: {text}");
    assert_eq!(lines[0], "id,amount,email");
    assert!(
        !text.contains("@example.com"),
        "e-mail shown in clear: {text}"
    );
    // The hash is the policy's: what `sluice query` shows of the D1 column.
    let hashed = stdout(&sluice(
        &project,
        &[
            "query",
            "select email from d1.shop_orders order by id",
            "--format",
            "csv",
        ],
    ));
    let hashes: Vec<&str> = hashed.lines().skip(1).collect();
    assert_eq!(hashes.len(), 2, "{hashed}");
    assert!(
        lines[1].ends_with(hashes[0]) || lines[1].ends_with(hashes[1]),
        "{text} vs {hashed}"
    );
    let out = sluice(&project, &["show", "d2a.orders_clean", "--format", "csv"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
    // Nothing was published.
    assert_eq!(project.lake_files(), before);
    assert_eq!(warehouse_tables(&project), tables_before);

    // compile: the D1 view with the policy's function, then the model's SQL.
    let out = sluice(&project, &["compile", "orders_clean"]);
    assert_exit(&out, 0);
    let sql = stdout(&out);
    assert!(
        sql.contains("CREATE VIEW d1.shop_orders AS")
            && sql.contains("hmac_sha256(CAST(\"email\" AS VARCHAR)) AS \"email\"")
            && sql.contains("SELECT id, amount, email FROM d1.shop_orders"),
        "{sql}"
    );
    assert!(!sql.contains(PII_KEY), "the key leaked: {sql}");

    // Unknown models: a config error that names the nearest one.
    for verb in ["show", "compile"] {
        let out = sluice(&project, &[verb, "orders_clen"]);
        assert_exit(&out, 3);
        assert!(
            stderr(&out).contains("no model `orders_clen`; did you mean `d2a.orders_clean`?"),
            "{verb}: {}",
            stderr(&out)
        );
    }
    // --dates only means something for an incremental model.
    let out = sluice(
        &project,
        &["compile", "orders_clean", "--dates", "2024-07-01"],
    );
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("is not incremental"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn compile_shows_the_incremental_filter_and_show_reports_sql_errors_with_their_line() {
    let project = Project::new(pipeline());
    project.write(
        "data/orders.ndjson",
        "{\"id\": 1, \"amount\": 2, \"email\": \"ann@example.com\"}\n",
    );
    project.write(
        "models/d2a/daily.sql",
        "SELECT CAST(dt AS DATE) AS day, count(*) AS orders\nFROM d1.shop_orders\nGROUP BY 1\n",
    );
    project.write(
        "models/d2a/daily.yml",
        "materialized: incremental\npartition_by: day\n",
    );
    // Before the stream ran, compile says the view does not exist yet.
    let out = sluice(&project, &["compile", "daily"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("d1.shop_orders: not in the lake yet"),
        "{}",
        stdout(&out)
    );
    assert_exit(&sluice(&project, &["run"]), 0);
    let out = sluice(
        &project,
        &["compile", "daily", "--dates", "2024-07-01,2024-07-02"],
    );
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("AS __model WHERE \"day\" IN (DATE '2024-07-01', DATE '2024-07-02')"),
        "{}",
        stdout(&out)
    );
    // A column the table does not have: file:line, exit 3.
    project.write(
        "models/d2a/daily.sql",
        "SELECT CAST(dt AS DATE) AS day,\n       count(nope) AS orders\nFROM d1.shop_orders\nGROUP BY 1\n",
    );
    let out = sluice(&project, &["show", "daily"]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("daily.sql:2:"), "{}", stderr(&out));
}

fn warehouse_tables(project: &Project) -> Vec<String> {
    let db = project.sqlite();
    let mut stmt = db
        .prepare("select name from sqlite_master where type = 'table' order by name")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn ls_lists_what_the_project_defines_narrowed_by_select() {
    let project = project("warn");
    project.write(
        "models/d2b/order_totals.sql",
        "SELECT sum(amount) AS total FROM d2a.orders_clean\n",
    );
    project.write("models/d2b/order_totals.yml", "tags: [finance]\n");
    // Before a run nothing is in the lake.
    let out = sluice(&project, &["ls", "tables"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.contains("d1.shop_orders") && l.contains("not yet")),
        "{}",
        stdout(&out)
    );
    assert_exit(&sluice(&project, &["run"]), 0);

    let out = sluice(&project, &["ls", "--json"]);
    assert_exit(&out, 0);
    let all: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(all["streams"][0]["id"], "shop.orders");
    assert_eq!(all["streams"][0]["table"], "d1.shop_orders");
    let models: Vec<&str> = all["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["d2a.orders_clean", "d2b.order_totals"]);
    let tables: Vec<(&str, bool)> = all["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap(),
                t["in_lake"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tables,
        [
            ("d1.shop_orders", true),
            ("d2a.orders_clean", true),
            ("d2b.order_totals", true)
        ]
    );
    let checks: Vec<(&str, &str)> = all["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap(),
                c["severity"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        checks,
        [("not_null(id)", "error"), ("range(amount)", "warn")]
    );

    // --select narrows every kind the way `run --select` does.
    let out = sluice(
        &project,
        &["ls", "models", "--select", "tag:finance", "--json"],
    );
    assert_exit(&out, 0);
    let finance: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(finance.as_array().unwrap().len(), 1);
    assert_eq!(finance[0]["id"], "d2b.order_totals");
    assert_eq!(finance[0]["reads"][0], "d2a.orders_clean");
    let out = sluice(&project, &["ls", "streams", "--select", "+order_totals"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("shop.orders"), "{}", stdout(&out));
    let out = sluice(&project, &["ls", "checks", "--select", "shop"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("(none)"), "{}", stdout(&out));

    // Failure paths: an unknown selector (3) and an unknown kind (usage, 2).
    let out = sluice(&project, &["ls", "--select", "tag:nope"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("matches no stream"),
        "{}",
        stderr(&out)
    );
    let out = sluice(&project, &["ls", "sources"]);
    assert_exit(&out, 2);
}

#[test]
fn quarantine_list_filters_by_table_run_date_and_reason_through_the_pii_policy() {
    let project = project("warn");
    // Order 3's amount does not type: D1 quarantines it; order 2 fails the warn check.
    project.write(
        "data/orders.ndjson",
        "{\"id\": 1, \"amount\": 2, \"email\": \"ann@example.com\"}\n\
         {\"id\": 2, \"amount\": -3, \"email\": \"bob@example.com\"}\n\
         {\"id\": 3, \"amount\": \"abc\", \"email\": \"cy@example.com\"}\n",
    );
    let out = sluice(&project, &["quarantine", "list"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("no quarantined records"),
        "{}",
        stdout(&out)
    );
    assert_exit(&sluice(&project, &["run"]), 0);

    let list = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["quarantine", "list", "--format", "json"];
        all.extend_from_slice(args);
        let out = sluice(&project, &all);
        assert_exit(&out, 0);
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let rows = list(&[]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let d1 = rows
        .iter()
        .find(|r| r["table"] == "d1.shop_orders")
        .unwrap();
    assert_eq!(d1["origin"], "data/orders.ndjson:3");
    assert!(
        d1["reason"].as_str().unwrap().contains("field `amount`"),
        "{d1}"
    );
    // The record is shown through the pii: policy.
    let record = d1["record"].as_str().unwrap();
    assert!(
        record.contains("\"id\":3") && !record.contains("cy@example.com"),
        "{record}"
    );
    let text = serde_json::to_string(&rows).unwrap();
    assert!(!text.contains("@example.com"), "{text}");

    assert_eq!(list(&["--table", "d1.shop_orders"]).len(), 1);
    assert_eq!(
        list(&["--table", "orders_clean"])[0]["table"],
        "d2a.orders_clean"
    );
    let by_reason = list(&["--reason", "CHECK RANGE"]);
    assert_eq!(by_reason.len(), 1);
    assert_eq!(by_reason[0]["origin"], "check:range(amount):1");
    assert_eq!(list(&["--since", "2000-01-01"]).len(), 2);
    assert_eq!(list(&["--since", "2999-01-01"]).len(), 0);

    // Failure paths: a table the lake does not hold (3, with the nearest), a bad date (2).
    let out = sluice(&project, &["quarantine", "list", "--table", "shop_order"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("did you mean `d1.shop_orders`?"),
        "{}",
        stderr(&out)
    );
    let out = sluice(&project, &["quarantine", "list", "--since", "yesterday"]);
    assert_exit(&out, 2);
}

fn targets_pipeline() -> &'static str {
    r#"name: shop
lake: ./lake
targets:
  dev:
    lake: ./lake-dev
    destination: { type: sqlite, path: dev.db }
  prod:
    lake: ./lake-prod
    destination: { type: sqlite, path: "${PROD_DB_FILE}" }
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders.ndjson
        columns: { id: bigint, amount: "numeric(12,2)" }
        infer_columns: false
"#
}

fn orders_in(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
        .query_row("select count(*) from d1__shop_orders", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
}

#[test]
fn targets_write_dev_and_prod_to_their_own_destinations_and_lakes() {
    let project = Project::new(targets_pipeline());
    project.write(
        "data/orders.ndjson",
        "{\"id\": 1, \"amount\": 2}\n{\"id\": 2, \"amount\": 3}\n",
    );
    let dir = project.path();

    // dev runs without prod's variables, and nothing of prod's reaches its logs.
    let out = project
        .cmd()
        .env_remove("PROD_DB_FILE")
        .env("SLUICE_LOG", "debug")
        .args(["--target", "dev", "run"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(orders_in(&dir.join("dev.db")), 2);
    assert!(dir.join("lake-dev/d1").exists());
    assert!(!dir.join("lake").exists() && !dir.join("lake-prod").exists());
    assert!(!dir.join("warehouse.db").exists());
    let prod_file = "prod-only-7f3a9c.db";
    let out = project
        .cmd()
        .env("PROD_DB_FILE", prod_file)
        .env("SLUICE_LOG", "debug")
        .args(["run", "--target", "dev"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let logs = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!logs.contains("prod-only-7f3a9c"), "{logs}");
    assert!(!dir.join(prod_file).exists());

    // prod (here by SLUICE_TARGET) writes its own file and lake, from the start.
    let out = project
        .cmd()
        .env("PROD_DB_FILE", prod_file)
        .env("SLUICE_TARGET", "prod")
        .arg("run")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(orders_in(&dir.join(prod_file)), 2);
    assert!(dir.join("lake-prod/d1").exists());
    assert_eq!(orders_in(&dir.join("dev.db")), 2);
    // Each target's run history is its own lake's.
    let out = project
        .cmd()
        .env("PROD_DB_FILE", prod_file)
        .args(["--target", "prod", "runs", "--json"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let runs: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");

    // Without --target the top level applies (the embedded default).
    assert_exit(&project.run(&[]), 0);
    assert_eq!(orders_in(&dir.join("warehouse.db")), 2);

    // A target that does not exist: a config error naming the nearest.
    let out = project
        .cmd()
        .args(["--target", "prd", "run"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("--target prd: no such target")
            && stderr(&out).contains("did you mean `prod`?"),
        "{}",
        stderr(&out)
    );
    // A misspelt key in any target fails every run, at its line.
    project.write(
        "pipeline.yaml",
        targets_pipeline().replace("    lake: ./lake-prod", "    lakee: ./lake-prod"),
    );
    let out = project
        .cmd()
        .args(["--target", "dev", "validate"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("pipeline.yaml:8:"),
        "{}",
        stderr(&out)
    );
}

/// Distinct `date_start` days of the Facebook insights in `db`.
fn insight_days(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("select distinct cast(date_start as text) from d1__facebook_insights order by 1")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_dev_target_with_a_sample_reads_only_its_last_days_and_moves_no_cursor() {
    let today = chrono::Utc::now().date_naive();
    let sandbox = TestSandbox::start(sluice_sandbox::SandboxOptions::new(7, 1, today));
    let start = today - chrono::Duration::days(9);
    let project = Project::new(&format!(
        r#"name: ads
lake: ./lake
targets:
  dev:
    lake: ./lake-dev
    destination: {{ type: sqlite, path: dev.db }}
    sample: {{ days: 3 }}
sources:
  facebook:
    type: facebook_ads
    base_url: {url}
    access_token: {token}
    api_version: v26.0
    accounts: all
    start_date: "{start}"
    streams:
      insights: {{ level: ad, fields: [impressions, clicks, spend] }}
"#,
        url = sandbox.url(),
        token = sluice_sandbox::credentials::FACEBOOK_ACCESS_TOKEN,
    ));
    let dir = project.path();
    let out = project
        .cmd()
        .args(["--target", "dev", "run"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let sample: Vec<String> = (0..3)
        .rev()
        .map(|n| (today - chrono::Duration::days(n)).to_string())
        .collect();
    assert_eq!(insight_days(&dir.join("dev.db")), sample);
    // The run says so, and its window is the sample's.
    let out = project
        .cmd()
        .args(["--target", "dev", "runs", "--json"])
        .output()
        .unwrap();
    let runs: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        runs[0]["window"]["since"],
        Value::String(sample[0].clone()),
        "{runs}"
    );
    // No cursor moved: a second dev run reads the same sample again.
    let cursors = |lake: &str| -> usize {
        walk(&dir.join(lake))
            .iter()
            .filter(|p| p.to_string_lossy().contains("cursor"))
            .count()
    };
    assert_eq!(cursors("lake-dev"), 0);
    assert_exit(
        &project
            .cmd()
            .args(["--target", "dev", "run"])
            .output()
            .unwrap(),
        0,
    );
    assert_eq!(insight_days(&dir.join("dev.db")), sample);

    // Without the target: the whole history from start_date, and a cursor.
    assert_exit(&project.run(&[]), 0);
    assert_eq!(insight_days(&dir.join("warehouse.db")).len(), 10);
    assert!(cursors("lake") > 0);
    // An explicit window wins over the sample.
    let out = project
        .cmd()
        .args(["--target", "dev", "run", "--since"])
        .arg((today - chrono::Duration::days(5)).to_string())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(insight_days(&dir.join("dev.db")).len(), 6);

    // A sample of 0 days is a config error at its key.
    project.write(
        "pipeline.yaml",
        std::fs::read_to_string(dir.join("pipeline.yaml"))
            .unwrap()
            .replace("days: 3", "days: 0"),
    );
    let out = project
        .cmd()
        .args(["--target", "dev", "validate"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("targets.dev.sample.days"),
        "{}",
        stderr(&out)
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
