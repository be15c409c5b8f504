//! Mistakes a new user makes end loud, never in a green run that is wrong (issue 14):
//! repeated keys, precision, BOMs, typos in columns and tables, check severities,
//! refused logins, spurious warnings, wrong locations, and logs.

mod common;

use common::*;

fn query(project: &Project, sql: &str) -> std::process::Output {
    project
        .cmd()
        .args(["query", "--format", "csv", sql])
        .output()
        .unwrap()
}

fn query_csv(project: &Project, sql: &str) -> String {
    let out = query(project, sql);
    assert_exit(&out, 0);
    stdout(&out)
}

fn task<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {record}"))
}

fn run_json(project: &Project, code: i32) -> serde_json::Value {
    let out = project.run(&["--json"]);
    assert_exit(&out, code);
    serde_json::from_slice(&out.stdout).expect("run record")
}

/// A run that succeeds and logs `line` (the executor's debug log).
fn run_logging(project: &Project, line: &str) {
    let out = project.run(&["--log", "sluice_core=debug"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains(line), "{}", stderr(&out));
}

fn customers_pipeline(destination: &str, dedupe: &str) -> String {
    format!(
        r#"name: shop
lake: ./lake
{destination}
sources:
  shop:
    type: files
    streams:
      customers:
        path: data/customers.csv
        columns: {{ customer_id: text, visits: bigint }}
        primary_key: [customer_id]
        write_mode: merge
{dedupe}
"#
    )
}

const REPEATED: &str = "customer_id,visits\nC-1,1\nC-2,5\nC-1,2\n";

// Item 2: a key repeated inside one input.
#[test]
fn merge_with_a_repeated_key_keeps_the_declared_row_in_the_warehouse_and_the_lake_alike() {
    let pg = Pg::connect();
    let prefix = unique_prefix("dedupe");
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}",
        pg_url()
    );
    let project = Project::new(&customers_pipeline(&destination, ""));
    project.write("data/customers.csv", REPEATED);
    let record = run_json(&project, 0);
    assert_eq!(task(&record, "shop.customers")["rows_quarantined"], 1);
    assert_eq!(
        pg.strings(&format!(
            "select customer_id || '=' || visits from \"{prefix}d1\".shop_customers order by 1"
        )),
        vec!["C-1=2".to_string(), "C-2=5".to_string()]
    );
    assert_eq!(
        query_csv(
            &project,
            "select customer_id, visits from d1.shop_customers order by 1"
        ),
        "customer_id,visits\nC-1,2\nC-2,5\n"
    );
    // The loser is reported where quarantines are: the warehouse and the lake.
    let reason = query_csv(&project, "select reason from quarantine.d1__shop_customers");
    assert!(
        reason.contains("customer_id=\"\"C-1\"\"") && reason.contains("dedupe: last"),
        "{reason}"
    );
    assert_eq!(
        pg.scalar_i64(&format!(
            "select count(*) from \"{prefix}d1\".shop_customers__quarantine"
        )),
        1
    );
    pg.drop_schemas(&prefix);

    // SQLite streams a merge's load during the extraction; with a repeated key the
    // streamed rows hold both, so the rewritten staged files load instead (else
    // SQLite's merge would keep the later row, 2, against `first`).
    let first = Project::new(&customers_pipeline("", "        dedupe: first"));
    first.write("data/customers.csv", REPEATED);
    run_logging(&first, "publishing from the staged files");
    assert_eq!(
        query_csv(
            &first,
            "select visits from d1.shop_customers where customer_id = 'C-1'"
        ),
        "visits\n1\n"
    );
    assert_eq!(
        sqlite_text_rows(
            &first.sqlite(),
            "select customer_id || '=' || visits from d1__shop_customers order by 1"
        ),
        ["C-1=1", "C-2=5"]
    );
    first.write("data/customers.csv", "customer_id,visits\nC-1,7\nC-3,1\n");
    run_logging(
        &first,
        "published the load that streamed during the extraction",
    );
    assert_eq!(
        sqlite_text_rows(
            &first.sqlite(),
            "select customer_id || '=' || visits from d1__shop_customers order by 1"
        ),
        ["C-1=7", "C-2=5", "C-3=1"]
    );
    let strict = Project::new(&customers_pipeline("", "        dedupe: error"));
    strict.write("data/customers.csv", REPEATED);
    let out = strict.run(&[]);
    assert_exit(&out, 4);
    assert!(
        stdout(&out).contains("appears 2 times in this run's input"),
        "{}",
        stdout(&out)
    );
}

fn amounts_pipeline(destination: &str) -> String {
    format!(
        r#"name: shop
lake: ./lake
{destination}
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders.ndjson
        columns: {{ id: bigint, amount: "numeric(12,2)" }}
"#
    )
}

// Items 3 and 4: precision is enforced; a BOM does not cost the first record.
#[test]
fn numeric_precision_is_created_and_enforced_and_a_bom_is_not_a_bad_record() {
    let pg = Pg::connect();
    let prefix = unique_prefix("precision");
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}",
        pg_url()
    );
    let project = Project::new(&amounts_pipeline(&destination));
    project.write(
        "data/orders.ndjson",
        "\u{feff}{\"id\": 1, \"amount\": \"1234567890.25\"}\n{\"id\": 2, \"amount\": \"12345678901.25\"}\n{\"id\": 3, \"amount\": 7}\n",
    );
    let record = run_json(&project, 0);
    let orders = task(&record, "shop.orders");
    assert_eq!(orders["rows_loaded"], 2, "{orders}");
    assert_eq!(orders["rows_quarantined"], 1, "{orders}");
    assert!(
        orders["warnings"]
            .to_string()
            .contains("data/orders.ndjson:2"),
        "{orders}"
    );
    assert!(
        orders["warnings"]
            .to_string()
            .contains("more than 10 digits before the decimal point"),
        "{orders}"
    );
    assert_eq!(
        pg.strings(&format!("select format_type(atttypid, atttypmod) from pg_attribute where attrelid = '\"{prefix}d1\".shop_orders'::regclass and attname = 'amount'")),
        vec!["numeric(12,2)".to_string()]
    );
    assert_eq!(
        pg.strings(&format!(
            "select amount::text from \"{prefix}d1\".shop_orders order by id"
        )),
        vec!["1234567890.25".to_string(), "7.00".to_string()]
    );
    pg.drop_schemas(&prefix);
}

// Item 5: a declared column that matches no key.
#[test]
fn a_declared_column_that_matches_no_key_stops_the_stream_naming_the_near_key() {
    let project = Project::new(
        r#"name: shop
lake: ./lake
sources:
  shop:
    type: files
    streams:
      customers:
        path: data/customers.csv
        columns: { customer_id: text, signed_upp: date }
"#,
    );
    project.write(
        "data/customers.csv",
        "customer_id,signed_up\nC-1,2024-06-01\nC-2,2024-06-02\n",
    );
    let out = project.run(&[]);
    assert_exit(&out, 4);
    let text = stdout(&out);
    assert!(
        text.contains("declared column `signed_upp` matches no key")
            && text.contains("`signed_up`")
            && text.contains("sources.shop.streams.customers.columns"),
        "{text}"
    );
}

fn models_pipeline() -> &'static str {
    r#"name: shop
lake: ./lake
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

// Item 7: models are planned against the declared streams before anything runs.
#[test]
fn validate_plans_every_model_and_fails_on_unknown_tables_columns_and_check_columns() {
    let project = Project::new(models_pipeline());
    project.write(
        "models/d2a/orders_clean.sql",
        "SELECT id,\n       amount\nFROM d1.shop_order\n",
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains("orders_clean.sql:3:")
            && text.contains("`d1.shop_order` is not a table any stream loads")
            && text.contains("did you mean `d1.shop_orders`?"),
        "{text}"
    );
    // `run` refuses the same before extracting anything.
    project.write("data/orders.ndjson", "{\"id\": 1, \"amount\": 2}\n");
    let out = project.run(&[]);
    assert_exit(&out, 3);
    assert!(!project.path().join("lake/d1").exists());

    // A column the stream does not declare, before its first run.
    project.write(
        "models/d2a/orders_clean.sql",
        "SELECT id,\n       amont\nFROM d1.shop_orders\n",
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(text.contains("orders_clean.sql:2:"), "{text}");

    // A check on a column the model does not have.
    project.write(
        "models/d2a/orders_clean.sql",
        "SELECT id, amount FROM d1.shop_orders\n",
    );
    project.write(
        "models/d2a/orders_clean.yml",
        "checks:\n  - not_null: [id]\n  - not_null: [amunt]\n",
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains("orders_clean.yml:3:")
            && text.contains("no column `amunt`; did you mean `amount`?"),
        "{text}"
    );
    project.write(
        "models/d2a/orders_clean.yml",
        "checks:\n  - not_null: [id]\n",
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 0);
}

// Item 8: severities say what happened, and every quarantine can be queried.
#[test]
fn check_severities_report_what_was_published_and_failing_rows_are_queryable() {
    let project = Project::new(models_pipeline());
    project.write(
        "data/orders.ndjson",
        "{\"id\": 1, \"amount\": 2}\n{\"id\": 2, \"amount\": -3}\n",
    );
    project.write(
        "models/d2a/orders_clean.sql",
        "SELECT id, amount FROM d1.shop_orders\n",
    );
    project.write(
        "models/d2a/orders_clean.yml",
        "checks:\n  - range: { column: amount, min: 0 }\n",
    );
    let record = run_json(&project, 5);
    let model = task(&record, "d2a.orders_clean");
    let error = model["error"]["message"].as_str().unwrap();
    assert!(
        error.contains("not published (there is no previous table)")
            && error.contains("quarantine.d2a__orders_clean"),
        "{error}"
    );
    let rows = query_csv(
        &project,
        "select origin, raw from quarantine.d2a__orders_clean",
    );
    assert!(rows.contains("-3"), "{rows}");
    // ... and in the warehouse, next to where the table would be (which is not there).
    let db = project.sqlite();
    let blocked: String = db
        .query_row("select raw from d2a__orders_clean__quarantine", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(blocked.contains("-3"), "{blocked}");
    let published: i64 = db
        .query_row(
            "select count(*) from sqlite_master where name = 'd2a__orders_clean'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(published, 0, "an error-severity failure publishes no table");
    drop(db);

    // `warn`: published, flagged, not counted as quarantined.
    project.write(
        "models/d2a/orders_clean.yml",
        "checks:\n  - range: { column: amount, min: 0 }\n    severity: warn\n",
    );
    let out = project.run(&["--json"]);
    assert_exit(&out, 0);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = task(&record, "d2a.orders_clean");
    assert_eq!(model["rows_quarantined"], 0, "{model}");
    assert_eq!(
        query_csv(&project, "select count(*) as n from d2a.orders_clean"),
        "n\n2\n"
    );
    let db = project.sqlite();
    let flagged: i64 = db
        .query_row(
            "select count(*) from d2a__orders_clean__quarantine where run_id = ?1",
            [record["run_id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(flagged, 1);
}

// Item 9: a login PostgreSQL refuses is not retried.
#[test]
fn a_refused_postgres_login_fails_at_once_without_retries() {
    let project = Project::new(
        "name: shop\nlake: ./lake\ndestination:\n  type: postgres\n  url: postgres://no_such_role_sluice@127.0.0.1:5432/test\nsources:\n  shop:\n    type: files\n    streams:\n      orders:\n        path: data/orders.ndjson\nexecution:\n  retries: 3\n  initial_backoff_ms: 1000\n"
    );
    project.write("data/orders.ndjson", "{\"id\": 1}\n");
    let started = std::time::Instant::now();
    let out = project.run(&["--json"]);
    assert_exit(&out, 4);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let orders = task(&record, "shop.orders");
    assert_eq!(orders["retries"], 0, "{orders}");
    assert_eq!(orders["error"]["class"], "configuration", "{orders}");
    assert!(
        started.elapsed().as_secs_f64() < 3.0,
        "took {:?}",
        started.elapsed()
    );
    assert!(!stderr(&out).contains("retrying"), "{}", stderr(&out));
}

// Item 10: a normal PostgreSQL run warns about nothing.
#[test]
fn a_normal_postgres_run_prints_no_warnings() {
    let pg = Pg::connect();
    let prefix = unique_prefix("quiet");
    let project = Project::new(&format!(
        r#"name: shop
lake: ./lake
destination:
  type: postgres
  url: {}
  schema_prefix: {prefix}
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: {{ order_id: bigint, amount: "numeric(12,2)", order_date: date }}
        partition_column: order_date
      customers:
        path: data/customers/*.csv
        columns: {{ customer_id: text, visits: bigint }}
        primary_key: [customer_id]
        write_mode: merge
"#,
        pg_url()
    ));
    project.write("data/orders/a.ndjson", orders_ndjson(1, 300));
    project.write(
        "data/customers/a.csv",
        "customer_id,name,visits\nC-1,Ann,3\nC-2,Bob,\n",
    );
    let out = project.run(&[]);
    assert_exit(&out, 0);
    project.write("data/orders/b.ndjson", orders_ndjson(301, 20));
    project.write(
        "data/customers/b.csv",
        "customer_id,name,visits\nC-3,Cy,1\n",
    );
    let second = project.run(&[]);
    assert_exit(&second, 0);
    for o in [&out, &second] {
        let text = stderr(o) + &stdout(o);
        assert!(
            !text.contains("WARN") && !text.contains("schema:"),
            "{text}"
        );
    }
    pg.drop_schemas(&prefix);
}

// Item 11: locations point at the right line and column.
#[test]
fn errors_point_at_the_real_line_and_column() {
    // A CSV row's line is its line in the file, CRLF line ends too.
    let project = Project::new(
        "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      visits:\n        path: data/v.csv\n        columns: { id: bigint }\n",
    );
    project.write("data/v.csv", "id,page\r\n1,/a\r\n2,/b\r\nx,/c\r\n");
    let record = run_json(&project, 0);
    let warnings = task(&record, "shop.visits")["warnings"].to_string();
    assert!(warnings.contains("data/v.csv:4"), "{warnings}");

    // A misspelt key: the marker sits under the key, on its line, even after
    // characters longer than a byte.
    let project = Project::new("name: shop # boutique → entrepôt\nlake: ./lake\nsourcs:\n  x: 1\n");
    let out = project
        .cmd()
        .arg("validate")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(text.contains("[pipeline.yaml:3:1]"), "{text}");
    let marker = text
        .lines()
        .skip_while(|l| !l.contains("3 │ sourcs:"))
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let key_column = text
        .lines()
        .find(|l| l.contains("3 │ sourcs:"))
        .and_then(|l| l.find("sourcs").map(|byte| l[..byte].chars().count()))
        .unwrap();
    assert_eq!(
        marker.chars().position(|c| c == '─' || c == '┬'),
        Some(key_column),
        "{text}"
    );

    // A tab in the indentation is named.
    let project = Project::new("name: shop\nlake: ./lake\nsources:\n\tshop:\n    type: files\n");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains("line 4 is indented with a tab") && text.contains("pipeline.yaml:4:1"),
        "{text}"
    );

    // SQL that ends too early points at its end.
    let project = Project::new(models_pipeline());
    project.write("models/d2a/x.sql", "SELECT id\nFROM\n");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(text.contains("x.sql:2:"), "{text}");
}

// Item 12: logs fit where they go.
#[test]
fn logs_carry_no_colour_when_piped_json_lines_name_the_run_and_config_errors_follow_the_format() {
    let project = Project::new(
        "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      visits:\n        path: data/v.csv\n",
    );
    project.write("data/v.csv", "id\n1\n");
    let out = project.run(&[]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("INFO"), "{}", stderr(&out));
    assert!(!stderr(&out).contains('\u{1b}'), "{:?}", stderr(&out));

    let out = project
        .cmd()
        .args(["--log-format", "json", "run"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line["run_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{line}"
        );
    }

    let broken = Project::new("name: shop\nlake: ./lake\nsourcs: {}\n");
    let out = broken
        .cmd()
        .args(["--log-format", "json", "validate"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    let line: serde_json::Value = serde_json::from_str(stderr(&out).trim())
        .unwrap_or_else(|e| panic!("{}: {e}", stderr(&out)));
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["line"], 3);
    assert!(
        line["message"].as_str().unwrap().contains("sourcs"),
        "{line}"
    );
}

// Under `--log-format json` every failure a CI job meets is one JSON line on stderr
// (model errors with their file and line), and `validate` reports as one JSON document.
#[test]
fn json_log_format_makes_every_error_and_the_validate_report_machine_readable() {
    let project = Project::new(
        "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      visits:\n        path: data/v.csv\n        allow_empty: true\n        infer_columns: false\n        columns: { id: bigint }\n",
    );
    let json_cmd = |args: &[&str]| {
        project
            .cmd()
            .args(["--log-format", "json"])
            .args(args)
            .output()
            .unwrap()
    };
    let error_line = |out: &std::process::Output| -> serde_json::Value {
        let text = stderr(out);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect();
        lines
            .into_iter()
            .find(|l| l["level"] == "ERROR")
            .unwrap_or_else(|| panic!("no ERROR line in:\n{text}"))
    };

    let out = json_cmd(&["validate", "--connections"]);
    assert_exit(&out, 0);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{}: {e}", stdout(&out)));
    assert!(
        report["summary"].as_str().unwrap().contains("is valid"),
        "{report}"
    );
    assert_eq!(report["checks"].as_array().unwrap().len(), 2, "{report}");
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{report}"
    );

    // A model that reads a column the stream does not have: file and line.
    project.write(
        "models/d2a/visits_daily.sql",
        "SELECT id,\n       no_such_column\nFROM d1.shop_visits\n",
    );
    project.write("data/v.csv", "id\n1\n");
    let out = json_cmd(&["validate"]);
    assert_exit(&out, 3);
    let line = error_line(&out);
    assert!(
        line["file"].as_str().unwrap().ends_with("visits_daily.sql"),
        "{line}"
    );
    assert!(line["line"].as_u64().is_some(), "{line}");
    assert!(
        line["message"].as_str().unwrap().contains("no_such_column"),
        "{line}"
    );
    std::fs::remove_file(project.path().join("models/d2a/visits_daily.sql")).unwrap();

    // Errors without a file: an unknown run, a bad selector.
    let out = json_cmd(&["runs", "no-such-run"]);
    assert_exit(&out, 3);
    assert!(
        error_line(&out)["message"]
            .as_str()
            .unwrap()
            .contains("no-such-run"),
        "{}",
        stderr(&out)
    );
    let out = json_cmd(&["run", "--select", "nope"]);
    assert_exit(&out, 3);
    assert!(
        error_line(&out)["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{}",
        stderr(&out)
    );
}

// A model row with no partition date is quarantined (never a `dt=none` folder), and
// the lake and the warehouse hold the same dated rows.
#[test]
fn a_model_row_with_a_null_partition_date_is_quarantined_not_published() {
    let project = Project::new(models_pipeline());
    project.write(
        "data/orders.ndjson",
        "{\"id\": 1, \"amount\": 2}\n{\"id\": 2, \"amount\": 3}\n",
    );
    project.write(
        "models/d2a/orders_daily.sql",
        "SELECT id, amount, CASE WHEN id = 2 THEN NULL ELSE DATE '2024-07-01' END AS day\n\
         FROM d1.shop_orders\n",
    );
    project.write("models/d2a/orders_daily.yml", "partition_by: day\n");
    let record = run_json(&project, 0);
    let model = task(&record, "d2a.orders_daily");
    assert_eq!(model["rows_quarantined"], 1, "{model}");
    assert_eq!(
        query_csv(&project, "select id from d2a.orders_daily"),
        "id\n1\n"
    );
    let db = project.sqlite();
    let (published, quarantined): (i64, String) = (
        db.query_row("select count(*) from d2a__orders_daily", [], |r| r.get(0))
            .unwrap(),
        db.query_row(
            "select reason from d2a__orders_daily__quarantine",
            [],
            |r| r.get(0),
        )
        .unwrap(),
    );
    assert_eq!(published, 1);
    assert!(quarantined.contains("`day` is NULL"), "{quarantined}");
    assert!(!project
        .path()
        .join("lake/d2a/orders_daily/dt=none")
        .exists());
}

// A source field a model reads stops arriving (renamed upstream): the model is held —
// its previous table kept, the run partial, the field named — instead of publishing NULLs.
#[test]
fn a_model_reading_a_field_that_stopped_arriving_is_held_not_filled_with_nulls() {
    let project = Project::new(
        "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      orders:\n        path: data/*.ndjson\n        primary_key: [id]\n        write_mode: merge\n",
    );
    project.write(
        "data/day1.ndjson",
        "{\"id\": 1, \"amount\": 10}\n{\"id\": 2, \"amount\": 5}\n",
    );
    project.write(
        "models/d2a/order_totals.sql",
        "SELECT count(*) AS orders, sum(amount) AS amount FROM d1.shop_orders\n",
    );
    run_json(&project, 0);
    let before = query_csv(&project, "select orders, amount from d2a.order_totals");

    // Upstream renamed `amount` to `amount_value`.
    project.write("data/day2.ndjson", "{\"id\": 3, \"amount_value\": 7}\n");
    let record = run_json(&project, 5);
    let model = task(&record, "d2a.order_totals");
    assert_eq!(model["status"], "failed", "{model}");
    let message = model["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("held (previous table kept)")
            && message.contains("`amount` of d1.shop_orders")
            && message.contains("schema.renames"),
        "{message}"
    );
    assert_eq!(
        query_csv(&project, "select orders, amount from d2a.order_totals"),
        before,
        "the previous table is kept"
    );

    // Once the model reads the new field too, it runs again over every row.
    project.write(
        "models/d2a/order_totals.sql",
        "SELECT count(*) AS orders, sum(coalesce(amount, amount_value)) AS amount FROM d1.shop_orders\n",
    );
    run_json(&project, 0);
    assert_eq!(
        query_csv(
            &project,
            "select orders, cast(amount as bigint) as amount from d2a.order_totals"
        ),
        "orders,amount\n3,22\n"
    );
}
