//! End to end: a `files` pipeline through the real binary into SQLite and PostgreSQL.

mod common;

use common::*;

fn pipeline(destination: &str) -> String {
    format!(
        r#"name: shop
lake: ./lake
{destination}
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: {{ order_id: bigint, customer_id: text, amount: "numeric(12,2)", order_date: date }}
        primary_key: [order_id]
        partition_column: order_date
        write_mode: append
      customers:
        path: data/customers.csv
        columns: {{ customer_id: text, signed_up: date, visits: bigint }}
        primary_key: [customer_id]
        write_mode: merge
"#
    )
}

const CUSTOMERS: &str = "customer_id,name,signed_up,visits\nC-1,\"Smith, Ann\",2024-06-01,3\nC-2,Bob Müller,2024-06-15,\n";

/// Runs the incremental scenario; `count(table)` reads the destination.
fn incremental_scenario(project: &Project, count: &dyn Fn(&str) -> i64) {
    project.write("data/orders/a.ndjson", orders_ndjson(1, 500));
    project.write("data/orders/b.ndjson", orders_ndjson(501, 250));
    project.write("data/customers.csv", CUSTOMERS);

    let first = project.run(&[]);
    assert_exit(&first, 0);
    assert_eq!(count("orders"), 750);
    assert_eq!(count("customers"), 2);

    // No new files: nothing changes, and it is quick.
    let started = std::time::Instant::now();
    let second = project.run(&["--json"]);
    assert_exit(&second, 0);
    let record: serde_json::Value =
        serde_json::from_slice(&second.stdout).expect("run record JSON");
    for task in record["tasks"].as_array().unwrap() {
        assert_eq!(task["status"], "up_to_date", "{task}");
        assert_eq!(task["rows_loaded"], 0);
    }
    assert!(
        started.elapsed().as_secs_f64() < 5.0,
        "an up-to-date run took {:?}",
        started.elapsed()
    );
    assert_eq!(count("orders"), 750);

    // One new file: exactly its rows are added.
    project.write("data/orders/c.ndjson", orders_ndjson(751, 40));
    let third = project.run(&["--json"]);
    assert_exit(&third, 0);
    let record: serde_json::Value = serde_json::from_slice(&third.stdout).unwrap();
    let orders = record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "shop.orders")
        .unwrap();
    assert_eq!(orders["rows_loaded"], 40);
    assert_eq!(orders["slices"], 1);
    assert_eq!(count("orders"), 790);

    // Full refresh rebuilds from every file, without duplicates.
    let fourth = project.run(&["--full-refresh", "--json"]);
    assert_exit(&fourth, 0);
    let record: serde_json::Value = serde_json::from_slice(&fourth.stdout).unwrap();
    let orders = record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "shop.orders")
        .unwrap();
    assert_eq!(orders["status"], "succeeded", "{orders}");
    assert_eq!(
        orders["rows_loaded"], 790,
        "a full refresh reloads every file"
    );
    assert_eq!(count("orders"), 790);
    assert_eq!(count("customers"), 2);

    // History lists the four runs.
    let runs = project.cmd().args(["runs", "--json"]).output().unwrap();
    assert_exit(&runs, 0);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 4);
}

#[test]
fn sqlite_incremental_loads_new_files_only_and_full_refresh_rebuilds() {
    let project = Project::new(&pipeline(""));
    incremental_scenario(&project, &|table| {
        project
            .sqlite()
            .query_row(
                &format!("select count(*) from \"d1__shop_{table}\""),
                [],
                |r| r.get(0),
            )
            .unwrap()
    });
    // Exact values survive: decimals as exact text, quotes/newlines/unicode intact.
    let db = project.sqlite();
    let (amount, note): (String, String) = db
        .query_row(
            "select amount, note from d1__shop_orders where order_id = 123",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(amount, "123.23");
    assert_eq!(note, "a \"quoted\", comma\nline ü");
    let distinct: i64 = db
        .query_row(
            "select count(distinct order_id) from d1__shop_orders",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(distinct, 790);
    // The lake holds the raw pages and the D1 Parquet files.
    let files = project.lake_files();
    assert!(files
        .iter()
        .any(|p| p.to_string_lossy().contains("/raw/shop/orders/")));
    assert!(files.iter().any(|p| p
        .to_string_lossy()
        .contains("/d1/shop_orders/dt=2024-07-02/")));
}

#[test]
fn postgres_incremental_loads_new_files_only_and_full_refresh_rebuilds() {
    let pg = Pg::connect();
    let prefix = unique_prefix("files");
    let project = Project::new(&pipeline(&format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}",
        pg_url()
    )));
    incremental_scenario(&project, &|table| {
        pg.scalar_i64(&format!(
            "select count(*) from \"{prefix}d1\".\"shop_{table}\""
        ))
    });
    assert_eq!(
        pg.scalar_i64(&format!(
            "select count(distinct order_id) from \"{prefix}d1\".shop_orders"
        )),
        790
    );
    assert_eq!(
        pg.strings(&format!(
            "select amount::text from \"{prefix}d1\".shop_orders where order_id = 123"
        )),
        vec!["123.23".to_string()]
    );
    assert_eq!(
        pg.strings(&format!("select data_type::text from information_schema.columns where table_schema = '{prefix}d1' and table_name = 'shop_orders' and column_name = 'order_date'")),
        vec!["date".to_string()]
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn bad_records_are_quarantined_with_file_and_line_and_good_rows_load() {
    let project = Project::new(&pipeline(""));
    project.write(
        "data/orders/a.ndjson",
        concat!(
            "{\"order_id\": 1, \"customer_id\": \"C-1\", \"amount\": \"1.00\", \"order_date\": \"2024-07-01\"}\n",
            "{\"order_id\": 2, \"customer_id\": \"C-2\", \"amount\": \"2.00\", \"order_date\": \n",
            "{\"order_id\": \"three\", \"customer_id\": \"C-3\", \"amount\": \"3.00\", \"order_date\": \"2024-07-01\"}\n",
            "{\"order_id\": 4, \"customer_id\": \"C-4\", \"amount\": \"4.00\", \"order_date\": \"2024-07-02\"}\n",
        ),
    );
    project.write(
        "data/customers.csv",
        "customer_id,name,signed_up,visits\nC-1,Ann,2024-06-01,3\nC-2,Bob\nC-3,Cy,2024-06-03,x\n",
    );
    let out = project.run(&[]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("data/orders/a.ndjson:2"), "{text}");
    assert!(text.contains("data/orders/a.ndjson:3"), "{text}");
    assert!(text.contains("data/customers.csv:3"), "{text}");

    let db = project.sqlite();
    let good: i64 = db
        .query_row("select count(*) from d1__shop_orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(good, 2);
    let mut stmt = db
        .prepare("select origin, line, reason, raw from d1__shop_orders__quarantine order by line")
        .unwrap();
    let rows: Vec<(String, i64, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("data/orders/a.ndjson", 2));
    assert!(rows[0].2.contains("malformed JSON"), "{}", rows[0].2);
    assert!(
        rows[0].3.contains("\"order_id\": 2"),
        "the raw line is kept: {}",
        rows[0].3
    );
    assert_eq!(rows[1].1, 3);
    assert!(rows[1].2.contains("order_id"), "{}", rows[1].2);

    let customers: i64 = db
        .query_row("select count(*) from d1__shop_customers", [], |r| r.get(0))
        .unwrap();
    let quarantined: Vec<(i64, String)> = db
        .prepare("select line, reason from d1__shop_customers__quarantine order by line")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(customers, 1);
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    assert!(quarantined[0].1.contains("ragged row"), "{quarantined:?}");
    assert!(quarantined[1].1.contains("visits"), "{quarantined:?}");
}

#[test]
fn config_errors_name_file_line_and_the_nearest_key() {
    let project = Project::new("name: shop\nsources:\n  shop:\n    type: files\n    streams:\n      orders:\n        path: x/*.ndjson\n        primary_kye: [id]\n");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("pipeline.yaml:8:9"), "{err}");
    assert!(err.contains("unknown key `primary_kye`"), "{err}");
    assert!(err.contains("did you mean `primary_key`?"), "{err}");

    let project = Project::new("name: shop\nsources:\n  shop:\n    type: filez\n");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("did you mean `files`?"),
        "{}",
        stderr(&out)
    );

    let project = Project::new(&pipeline(""));
    let out = project.run(&["--select", "nope.*"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("matches no stream"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_secret_from_the_environment_never_reaches_logs_run_records_or_the_lake() {
    let pg = Pg::connect();
    let prefix = unique_prefix("secret");
    // Trust auth ignores the password, so the run succeeds while carrying a secret.
    let secret = "Sup3r-S3cret-Passw0rd-4711";
    let url = pg_url().replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{secret}@"),
        1,
    );
    let project = Project::new(&pipeline(&format!(
        "destination:\n  type: postgres\n  url: ${{WAREHOUSE_URL}}\n  schema_prefix: {prefix}"
    )));
    project.write("data/orders/a.ndjson", orders_ndjson(1, 20));
    project.write("data/customers.csv", CUSTOMERS);
    let out = project
        .cmd()
        .env("WAREHOUSE_URL", &url)
        .env("SLUICE_LOG", "debug")
        .args(["run"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let json_logs = project
        .cmd()
        .env("WAREHOUSE_URL", &url)
        .args([
            "--log-format",
            "json",
            "--log",
            "trace",
            "validate",
            "--connections",
        ])
        .output()
        .unwrap();
    assert_exit(&json_logs, 0);
    for o in [&out, &json_logs] {
        assert!(
            !stdout(o).contains(secret) && !stderr(o).contains(secret),
            "secret in output"
        );
    }
    assert!(
        !stderr(&out).is_empty(),
        "debug logging produced output to check"
    );
    let files = project.lake_files();
    assert!(files.len() > 3);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let text = if file.extension().is_some_and(|e| e == "zst") {
            zstd_decode(&bytes)
        } else {
            bytes
        };
        assert!(
            !String::from_utf8_lossy(&text).contains(secret),
            "secret found in {}",
            file.display()
        );
    }
    pg.drop_schemas(&prefix);
}

/// Raw pages are zstd frames: the secret must not be in their decompressed text either.
fn zstd_decode(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(bytes).expect("zstd page")
}

/// Every file of `data/` as one slice, one slice at a time (the resume tests).
const RESUME_PIPELINE: &str = r#"name: resume
sources:
  shop:
    type: files
    max_concurrency: 1
    streams:
      events:
        path: data/*
        write_mode: append
"#;

#[test]
fn a_failed_run_resumes_from_its_finished_slices() {
    let project = Project::new(RESUME_PIPELINE);
    project.write("data/a.ndjson", orders_ndjson(1, 300));
    // Not Parquet at all: the slice fails with a data error and nothing is published.
    project.write("data/b.parquet", "this is not parquet");
    let failed = project.run(&["--json"]);
    assert_exit(&failed, 4);
    let record: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    let task = &record["tasks"][0];
    assert_eq!(task["status"], "failed");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("data/b.parquet"),
        "{task}"
    );
    let exists: i64 = project
        .sqlite()
        .query_row(
            "select count(*) from sqlite_master where name = 'd1__shop_events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(exists, 0, "a failed task publishes nothing");

    // Replace the bad file with a good one: the finished slice (a.ndjson) is reused, not re-read.
    std::fs::remove_file(project.path().join("data/b.parquet")).unwrap();
    project.write("data/b.ndjson", orders_ndjson(301, 10));
    let resumed = project.run(&["--json"]);
    assert_exit(&resumed, 0);
    let record: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    let task = &record["tasks"][0];
    assert_eq!(task["slices"], 2, "{task}");
    assert_eq!(task["slices_resumed"], 1, "{task}");
    assert_eq!(task["rows_loaded"], 310);
    let n: i64 = project
        .sqlite()
        .query_row(
            "select count(distinct order_id) from d1__shop_events",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 310);
}

/// A slice reused from a failed run keeps what it inferred: a column only its rows
/// carried, and a type only its rows needed (1.5 in a column the other slice reads
/// as whole numbers), are in the published table, not dropped or cast away.
#[test]
fn a_resumed_slice_keeps_the_columns_and_types_it_inferred() {
    let project = Project::new(RESUME_PIPELINE);
    let lines = |ids: std::ops::Range<u64>, extra: &dyn Fn(u64) -> String| {
        ids.map(|id| format!("{{\"order_id\": {id}{}}}\n", extra(id)))
            .collect::<String>()
    };
    project.write(
        "data/a.ndjson",
        lines(1..4, &|id| {
            format!(", \"coupon\": \"C{id}\", \"weight\": {id}.5")
        }),
    );
    project.write("data/b.parquet", "this is not parquet");
    assert_exit(&project.run(&[]), 4);

    std::fs::remove_file(project.path().join("data/b.parquet")).unwrap();
    project.write(
        "data/b.ndjson",
        lines(4..6, &|id| format!(", \"weight\": {id}")),
    );
    let resumed = project.run(&["--json"]);
    assert_exit(&resumed, 0);
    let record: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(
        record["tasks"][0]["slices_resumed"], 1,
        "{}",
        record["tasks"][0]
    );
    let rows = sqlite_text_rows(
        &project.sqlite(),
        "select order_id, coupon, weight from d1__shop_events order by order_id",
    );
    assert_eq!(
        rows,
        ["1|C1|1.5", "2|C2|2.5", "3|C3|3.5", "4|∅|4.0", "5|∅|5.0"]
    );
}

/// A big NDJSON file is read as several slices in parallel (`split_bytes`), cut at
/// line ends: every row loads once, bad lines keep their line number in the whole
/// file, and a replay of the run decodes the same rows and line numbers.
#[test]
fn a_large_file_is_read_in_parallel_parts_with_exact_line_numbers() {
    let project = Project::new(&pipeline("").replace(
        "        path: data/orders/*.ndjson\n",
        "        path: data/orders/*.ndjson\n        split_bytes: 4096\n",
    ));
    let mut text = orders_ndjson(1, 300);
    // A malformed line far into the file (line 251), in a later part.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(250, "{\"order_id\": broken");
    text = lines.join("\n") + "\n";
    assert!(text.len() > 4 * 4096, "the file spans several parts");
    project.write("data/orders/big.ndjson", &text);

    let out = project.run(&["--select", "shop.orders"]);
    assert_exit(&out, 0);
    let db = project.sqlite();
    let (rows, distinct): (i64, i64) = db
        .query_row(
            "select count(*), count(distinct order_id) from d1__shop_orders",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, distinct), (300, 300));
    let bad: Vec<(String, i64)> = db
        .prepare("select origin, line from d1__shop_orders__quarantine")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(bad, [("data/orders/big.ndjson".to_string(), 251)]);
    let runs: serde_json::Value = serde_json::from_slice(
        &project
            .cmd()
            .args(["runs", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let run_id = runs[0]["run_id"].as_str().unwrap().to_string();
    let task = &runs[0]["tasks"][0];
    assert!(task["slices"].as_u64().unwrap() >= 4, "{task}");

    // Replay the run into a fresh warehouse: same rows, same line numbers.
    std::fs::remove_file(project.path().join("warehouse.db")).unwrap();
    let replay = project
        .cmd()
        .args(["replay", "--run", &run_id, "--select", "shop.orders"])
        .output()
        .unwrap();
    assert_exit(&replay, 0);
    let db = project.sqlite();
    let rows: i64 = db
        .query_row(
            "select count(distinct order_id) from d1__shop_orders",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 300);
    let line: i64 = db
        .query_row("select line from d1__shop_orders__quarantine", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(line, 251);
}
