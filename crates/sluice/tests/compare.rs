//! Replacing a source: `replaces:` on a stream, `sluice compare` over what both
//! streams landed, and the switch, after which models reading the replaced D1 name
//! read the replacing stream without an SQL edit. Real files, lake and SQLite.

mod common;

use common::{assert_exit, mariadb_cli, pg_url, stderr, stdout, unique_prefix, Pg, Project};
use serde_json::Value;

const VENDOR_STREAM: &str = r#"  vendor:
    type: files
    streams:
      customers:
        path: data/vendor.csv
        columns: { id: bigint, email: text, city: text, balance: "numeric(12,2)", signup_date: date }
        infer_columns: false
        primary_key: [id]
"#;

/// The vendor feed and its in-house replacement, which names two columns otherwise.
fn pipeline(vendor: bool, switch: bool) -> String {
    with_destination(vendor, switch, "")
}

/// The pipeline with `top_level` keys (a destination, a `pii:` policy) added.
fn with_destination(vendor: bool, switch: bool, top_level: &str) -> String {
    format!(
        r#"name: migrate
{top_level}
sources:
{vendor}  crm:
    type: files
    streams:
      customers:
        path: data/crm/*.csv
        columns: {{ customer_id: bigint, email_address: text, city: text, balance: "numeric(12,2)", signup_date: date }}
        infer_columns: false
        primary_key: [customer_id]
        replaces:
          stream: vendor.customers
          columns: {{ customer_id: id, email_address: email }}
          switch: {switch}
"#,
        vendor = if vendor { VENDOR_STREAM } else { "" },
    )
}

const VENDOR_CSV: &str = "id,email,city,balance,signup_date
1,ann@example.com,Pune,10.00,2024-07-01
2,bob@example.com,Pune,20.00,2024-07-01
3,cy@example.com,Goa,30.00,2024-07-02
4,dee@example.com,Goa,40.00,2024-07-02
5,eve@example.com,Agra,10.00,2024-07-03
6,fay@example.com,Agra,60.00,2024-07-03
";

/// The in-house copy of `VENDOR_CSV` (renamed columns, same rows).
fn crm_csv(rows: &str) -> String {
    format!("customer_id,email_address,city,balance,signup_date\n{rows}")
}

const SAME_ROWS: &str = "1,ann@example.com,Pune,10.00,2024-07-01
2,bob@example.com,Pune,20.00,2024-07-01
3,cy@example.com,Goa,30.00,2024-07-02
4,dee@example.com,Goa,40.00,2024-07-02
5,eve@example.com,Agra,10.00,2024-07-03
6,fay@example.com,Agra,60.00,2024-07-03
";

/// Known differences: 2's email changed, 4 missing, 5's balance changed, 7 new.
const DIFFERENT_ROWS: &str = "1,ann@example.com,Pune,10.00,2024-07-01
2,bob@example.org,Pune,20.00,2024-07-01
3,cy@example.com,Goa,30.00,2024-07-02
5,eve@example.com,Agra,12.50,2024-07-03
6,fay@example.com,Agra,60.00,2024-07-03
7,gus@example.com,Goa,45.00,2024-07-02
";

fn landed(rows: &str) -> Project {
    landed_into(rows, "")
}

fn landed_into(rows: &str, destination: &str) -> Project {
    let project = Project::new(&with_destination(true, false, destination));
    project.write("data/vendor.csv", VENDOR_CSV);
    project.write("data/crm/1.csv", crm_csv(rows));
    let out = project.run(&[]);
    assert_exit(&out, 0);
    project
}

fn compare(project: &Project, args: &[&str]) -> std::process::Output {
    project
        .cmd()
        .args(["compare", "vendor.customers", "crm.customers"])
        .args(args)
        .output()
        .expect("run sluice")
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// `sluice compare` of the vendor's rows with `DIFFERENT_ROWS` reports exactly 4 only
/// in the old, 7 only in the new, 2's email and 5's balance, and the two days whose
/// sums moved.
fn assert_known_differences(project: &Project) {
    let out = compare(
        project,
        &["--day-column", "signup_date", "--format", "json"],
    );
    assert_exit(&out, 8);
    let report = &json(&out)["report"];
    assert_eq!(report["key"], serde_json::json!(["id"]));
    assert_eq!(report["old_rows"], 6);
    assert_eq!(report["new_rows"], 6);
    assert_eq!(
        report["only_in_old"],
        serde_json::json!({ "total": 1, "shown": [["4"]] })
    );
    assert_eq!(
        report["only_in_new"],
        serde_json::json!({ "total": 1, "shown": [["7"]] })
    );
    assert_eq!(
        report["changed"],
        serde_json::json!({ "total": 2, "shown": [
            { "key": ["2"], "columns": [{ "column": "email", "old": "bob@example.com", "new": "bob@example.org" }] },
            { "key": ["5"], "columns": [{ "column": "balance", "old": "10.00", "new": "12.50" }] },
        ] })
    );
    // 2024-07-01 only changed an email: its count and sums agree, so it is not listed.
    let days = &report["days"];
    assert_eq!(days["total"], 2, "{days:#}");
    // Sums of numeric(12,2) keep their scale.
    assert_eq!(
        days["shown"],
        serde_json::json!([
            { "day": "2024-07-02", "old_rows": 2, "new_rows": 2,
              "sums": [{ "column": "balance", "old": "70.00", "new": "75.00" }] },
            { "day": "2024-07-03", "old_rows": 2, "new_rows": 2,
              "sums": [{ "column": "balance", "old": "70.00", "new": "72.50" }] },
        ])
    );
}

#[test]
fn compare_reports_exactly_the_rows_and_days_that_differ() {
    let project = landed(DIFFERENT_ROWS);
    assert_known_differences(&project);

    // The text report says the same for people.
    let out = compare(&project, &["--day-column", "signup_date"]);
    assert_exit(&out, 8);
    let text = stdout(&out);
    for line in [
        "Rows only in vendor.customers: 1\n  id=4\n",
        "Rows only in crm.customers: 1\n  id=7\n",
        "id=2  email: bob@example.com → bob@example.org",
        "id=5  balance: 10.00 → 12.50",
        "2024-07-02  rows 2 → 2; sum(balance) 70.00 → 75.00",
        "email (← email_address)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("2024-07-01"), "{text}");

    // A window: only 2024-07-03's rows are compared.
    let out = compare(
        &project,
        &[
            "--day-column",
            "signup_date",
            "--since",
            "2024-07-03",
            "--until",
            "2024-07-03",
            "--format",
            "json",
        ],
    );
    assert_exit(&out, 8);
    let report = &json(&out)["report"];
    assert_eq!(report["only_in_old"]["total"], 0);
    assert_eq!(report["only_in_new"]["total"], 0);
    assert_eq!(report["changed"]["total"], 1);
    assert_eq!(
        report["changed"]["shown"][0]["key"],
        serde_json::json!(["5"])
    );
    assert_eq!(report["days"]["total"], 1);
    assert_eq!(report["days"]["shown"][0]["day"], "2024-07-03");

    // --limit lists fewer and counts the rest.
    let out = compare(&project, &["--limit", "1"]);
    assert_exit(&out, 8);
    assert!(
        stdout(&out).contains(
            "Rows that differ: 2\n  id=2  email: bob@example.com → bob@example.org\n  … and 1 more"
        ),
        "{}",
        stdout(&out)
    );
}

#[test]
fn identical_streams_exit_zero_with_no_differences() {
    let project = landed(SAME_ROWS);
    let out = compare(&project, &["--day-column", "signup_date"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("No differences"), "{}", stdout(&out));
    let out = compare(&project, &["--format", "json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["identical"], true);

    // Arguments that name nothing are usage errors, not "no differences".
    let out = project
        .cmd()
        .args(["compare", "vendor.custmers", "crm.customers"])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("did you mean `vendor.customers`?"),
        "{}",
        stderr(&out)
    );
    let out = compare(&project, &["--key", "nope"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("key column `nope`"),
        "{}",
        stderr(&out)
    );
}

/// Rows of the model as the SQLite warehouse holds them, as text.
fn sqlite_rows(project: &Project) -> Vec<String> {
    let db = project.sqlite();
    let mut stmt = db
        .prepare("SELECT city, customers, CAST(balance AS TEXT), last_email FROM d2b__customers_by_city ORDER BY city")
        .unwrap();
    stmt.query_map([], |row| {
        Ok((0..4)
            .map(|i| match row.get::<_, rusqlite::types::Value>(i).unwrap() {
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Integer(n) => n.to_string(),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join("|"))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn after_the_switch_models_read_the_old_name_from_the_new_stream_unedited() {
    let project = landed(SAME_ROWS);
    switch_scenario(&project, "", &|| sqlite_rows(&project));
}

#[test]
fn after_the_switch_models_load_the_same_rows_into_postgres() {
    let pg = Pg::connect();
    let prefix = unique_prefix("compare_switch");
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}",
        pg_url()
    );
    let project = landed_into(SAME_ROWS, &destination);
    switch_scenario(&project, &destination, &|| {
        pg.strings(&format!(
            "select concat_ws('|', city, customers::text, balance::text, last_email) from \"{prefix}d2b\".customers_by_city order by city"
        ))
    });
    pg.drop_schemas(&prefix);
}

/// A model reading `d1.vendor_customers` gives the same rows before and after the
/// switch (its SQL untouched), and after it follows what the in-house stream loads.
fn switch_scenario(project: &Project, destination: &str, model_rows: &dyn Fn() -> Vec<String>) {
    let sql = "SELECT city, count(*) AS customers, sum(balance) AS balance, max(email) AS last_email\nFROM d1.vendor_customers\nGROUP BY city\n";
    project.write("models/d2b/customers_by_city.sql", sql);
    assert_exit(&project.run(&[]), 0);
    let before = model_rows();
    assert_eq!(
        before,
        vec![
            "Agra|2|70.00|fay@example.com",
            "Goa|2|70.00|dee@example.com",
            "Pune|2|30.00|bob@example.com"
        ]
    );

    // The switch: the vendor stream goes, the in-house one takes over its D1 name.
    project.write("pipeline.yaml", with_destination(false, true, destination));
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 0);
    let out = project.run(&[]);
    assert_exit(&out, 0);
    assert_eq!(model_rows(), before);
    assert_eq!(
        std::fs::read_to_string(project.path().join("models/d2b/customers_by_city.sql")).unwrap(),
        sql
    );
    // The plan wires the model to the stream that now feeds it.
    let out = project
        .cmd()
        .args(["plan", "--select", "+customers_by_city"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("crm.customers"), "{}", stdout(&out));

    // It is the in-house stream they read: a customer it adds shows up.
    project.write(
        "data/crm/2.csv",
        crm_csv("8,hal@example.com,Pune,5.00,2024-07-04\n"),
    );
    assert_exit(&project.run(&[]), 0);
    let after = model_rows();
    assert_eq!(after[2], "Pune|3|35.00|hal@example.com", "{after:?}");
    assert_eq!(after[..2], before[..2]);
    let out = project
        .cmd()
        .args([
            "query",
            "SELECT id, email FROM d1.vendor_customers WHERE id = 8",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("hal@example.com"), "{}", stdout(&out));

    // What the vendor landed stays comparable after its stream is gone.
    let out = compare(project, &["--format", "json"]);
    assert_exit(&out, 8);
    assert_eq!(
        json(&out)["report"]["only_in_new"],
        serde_json::json!({ "total": 1, "shown": [["8"]] })
    );
}

fn validate(pipeline: &str) -> (std::process::Output, String) {
    let project = Project::new(pipeline);
    project.write("data/vendor.csv", VENDOR_CSV);
    project.write("data/crm/1.csv", crm_csv(SAME_ROWS));
    let out = project.cmd().arg("validate").output().unwrap();
    let err = stderr(&out);
    (out, err)
}

/// The line of `pipeline` holding `needle`, 1-based.
fn line_of(pipeline: &str, needle: &str) -> usize {
    pipeline.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn replaces_naming_nothing_is_a_config_error_at_its_line() {
    let good = pipeline(true, false);

    let bad = good.replace("stream: vendor.customers", "stream: vendor.custmers");
    let (out, err) = validate(&bad);
    assert_exit(&out, 3);
    let at = format!("pipeline.yaml:{}:", line_of(&bad, "vendor.custmers"));
    assert!(err.contains(&at), "{at} in {err}");
    assert!(
        err.contains("source vendor has no stream `custmers`"),
        "{err}"
    );
    assert!(err.contains("did you mean `vendor.customers`?"), "{err}");

    let bad = good.replace("stream: vendor.customers", "stream: vendr.customers");
    let (out, err) = validate(&bad);
    assert_exit(&out, 3);
    assert!(err.contains("unknown source `vendr`"), "{err}");
    assert!(err.contains("did you mean `vendor.customers`?"), "{err}");

    let bad = good.replace("customer_id: id,", "customer_idd: id,");
    let (out, err) = validate(&bad);
    assert_exit(&out, 3);
    let at = format!("pipeline.yaml:{}:", line_of(&bad, "customer_idd: id"));
    assert!(err.contains(&at), "{at} in {err}");
    assert!(
        err.contains("crm.customers has no column `customer_idd`"),
        "{err}"
    );

    let bad = good.replace("email_address: email }", "email_address: mail }");
    let (out, err) = validate(&bad);
    assert_exit(&out, 3);
    assert!(
        err.contains("vendor.customers has no column `mail`"),
        "{err}"
    );
    assert!(err.contains("did you mean `email`?"), "{err}");

    // Switched while the replaced stream still runs: two streams would publish one name.
    let bad = pipeline(true, true);
    let (out, err) = validate(&bad);
    assert_exit(&out, 3);
    assert!(
        err.contains("remove stream `customers` from sources.vendor"),
        "{err}"
    );

    // Switched away from a stream that never was: a typo must not pass as retired.
    let bad = pipeline(false, true).replace("stream: vendor.customers", "stream: vendr.customers");
    let (out, err) = validate(&bad);
    assert_exit(&out, 3);
    assert!(err.contains("no model reads it"), "{err}");
    let at = format!("pipeline.yaml:{}:", line_of(&bad, "vendr.customers"));
    assert!(err.contains(&at), "{at} in {err}");

    let (out, _) = validate(&good);
    assert_exit(&out, 0);
}

/// The values of `rows` (CSV lines) as SQL tuples.
fn sql_values(rows: &str) -> String {
    rows.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            format!("({}, '{}', '{}', {}, '{}')", f[0], f[1], f[2], f[3], f[4])
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn a_postgres_table_replacing_a_mariadb_table_is_compared_and_switched() {
    let prefix = unique_prefix("compare_rel");
    let my_db = format!("{prefix}vendor");
    mariadb_cli(&format!(
        "DROP DATABASE IF EXISTS {my_db}; CREATE DATABASE {my_db};
         CREATE TABLE {my_db}.customers (id bigint PRIMARY KEY, email varchar(80), city varchar(40), balance decimal(12,2), signup_date date);
         INSERT INTO {my_db}.customers VALUES {}",
        sql_values(VENDOR_CSV.split_once('\n').unwrap().1)
    ));
    let pg = Pg::connect();
    let pg_schema = format!("{prefix}crm");
    pg.execute(&format!(
        "CREATE SCHEMA \"{pg_schema}\";
         CREATE TABLE \"{pg_schema}\".customers (customer_id bigint PRIMARY KEY, email_address text, city text, balance numeric(12,2), signup_date date);
         INSERT INTO \"{pg_schema}\".customers VALUES {}",
        sql_values(DIFFERENT_ROWS)
    ));
    let mysql_url = std::env::var("SLUICE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let pipeline = |switch: bool| {
        let vendor = if switch {
            String::new()
        } else {
            format!(
                "  vendor:\n    type: mysql\n    url: {mysql_url}\n    streams:\n      customers:\n        table: {my_db}.customers\n"
            )
        };
        format!(
            r#"name: migrate
sources:
{vendor}  crm:
    type: postgres
    url: {pg}
    streams:
      customers:
        table: {pg_schema}.customers
        replaces:
          stream: vendor.customers
          columns: {{ customer_id: id, email_address: email }}
          switch: {switch}
"#,
            pg = pg_url()
        )
    };
    let project = Project::new(&pipeline(false));
    assert_exit(&project.run(&[]), 0);
    assert_known_differences(&project);

    let sql = "SELECT id, email, balance FROM d1.vendor_customers WHERE city = 'Goa'\n";
    project.write("models/d2b/goa_customers.sql", sql);
    project.write("pipeline.yaml", pipeline(true));
    assert_exit(&project.run(&[]), 0);
    let db = project.sqlite();
    let rows: Vec<String> = db
        .prepare("SELECT id || '|' || email || '|' || balance FROM d2b__goa_customers ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // The in-house rows, under the vendor's column names.
    assert_eq!(rows, ["3|cy@example.com|30.00", "7|gus@example.com|45.00"]);
    mariadb_cli(&format!("DROP DATABASE IF EXISTS {my_db}"));
    pg.drop_schemas(&prefix);
}

#[test]
fn repeated_keys_and_mappings_of_undeclared_columns_are_reported() {
    // The vendor sent customer 6 twice: rows cannot be matched one to one.
    let project = Project::new(&pipeline(true, false));
    project.write(
        "data/vendor.csv",
        format!("{VENDOR_CSV}6,fay@example.com,Agra,60.00,2024-07-03\n"),
    );
    project.write("data/crm/1.csv", crm_csv(SAME_ROWS));
    assert_exit(&project.run(&[]), 0);
    let out = compare(&project, &["--format", "json"]);
    assert_exit(&out, 8);
    let report = &json(&out)["report"];
    assert_eq!(report["duplicate_keys_old"], 1, "{report:#}");
    assert_eq!(report["duplicate_keys_new"], 0, "{report:#}");
    assert_eq!(report["only_in_old"]["total"], 0);
    assert_eq!(report["only_in_new"]["total"], 0);
    assert_eq!(report["changed"]["total"], 0);

    // A stream inferring its columns is checked against its data: the misspelt
    // mapping is an error at its line when compare (or the switch) reads it.
    let declared = "        columns: { customer_id: bigint, email_address: text, city: text, balance: \"numeric(12,2)\", signup_date: date }\n        infer_columns: false\n";
    let inferred = pipeline(true, false)
        .replacen(declared, "", 1)
        .replace("email_address: email }", "email_adress: email }");
    assert!(!inferred.contains("customer_id: bigint"), "{inferred}");
    let project = Project::new(&inferred);
    project.write("data/vendor.csv", VENDOR_CSV);
    project.write("data/crm/1.csv", crm_csv(SAME_ROWS));
    assert_exit(&project.run(&[]), 0);
    let out = compare(&project, &[]);
    assert_exit(&out, 3);
    let at = format!("pipeline.yaml:{}:", line_of(&inferred, "email_adress"));
    assert!(stderr(&out).contains(&at), "{at} in {}", stderr(&out));
    assert!(
        stderr(&out).contains("d1.crm_customers has no column `email_adress`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn partitioned_streams_are_compared_by_their_partition_date_by_default() {
    let partitioned = pipeline(true, false)
        .replace(
            "primary_key: [id]\n",
            "primary_key: [id]\n        partition_column: signup_date\n",
        )
        .replace(
            "primary_key: [customer_id]\n",
            "primary_key: [customer_id]\n        partition_column: signup_date\n",
        );
    assert_eq!(partitioned.matches("partition_column").count(), 2);
    let project = Project::new(&partitioned);
    project.write("data/vendor.csv", VENDOR_CSV);
    project.write("data/crm/1.csv", crm_csv(DIFFERENT_ROWS));
    assert_exit(&project.run(&[]), 0);
    let out = compare(&project, &["--format", "json", "--since", "2024-07-02"]);
    assert_exit(&out, 8);
    let report = &json(&out)["report"];
    assert_eq!(report["day_column"], "dt");
    let days: Vec<&str> = report["days"]["shown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["day"].as_str().unwrap())
        .collect();
    assert_eq!(days, ["2024-07-02", "2024-07-03"]);
    // 2's changed email is on 2024-07-01, before the window.
    assert_eq!(report["changed"]["total"], 1);
    assert_eq!(report["only_in_old"]["shown"], serde_json::json!([["4"]]));
    assert_eq!(report["only_in_new"]["shown"], serde_json::json!([["7"]]));

    // Unpartitioned streams have no day unless told: a window then needs one.
    let project = landed(DIFFERENT_ROWS);
    let out = compare(&project, &["--since", "2024-07-02"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--day-column"), "{}", stderr(&out));
}

#[test]
fn a_pii_rule_written_for_the_old_name_still_holds_after_the_switch() {
    let pii = "pii:\n  columns: { \"vendor_customers.email\": mask_last4 }";
    let project = landed_into(SAME_ROWS, pii);
    let email_of_1 = |project: &Project| {
        let out = project
            .cmd()
            .args([
                "query",
                "SELECT email FROM d1.vendor_customers WHERE id = 1",
                "--format",
                "csv",
            ])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        stdout(&out).lines().nth(1).unwrap_or_default().to_string()
    };
    assert_eq!(email_of_1(&project), "***********.com");
    project.write("pipeline.yaml", with_destination(false, true, pii));
    assert_exit(&project.run(&[]), 0);
    // Now read from crm_customers.email_address, which no rule names.
    assert_eq!(email_of_1(&project), "***********.com");
    let out = project
        .cmd()
        .args([
            "query",
            "SELECT email_address FROM d1.crm_customers WHERE customer_id = 1",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("ann@example.com"), "{}", stdout(&out));
}
