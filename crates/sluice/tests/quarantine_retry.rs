//! `sluice quarantine retry` through the CLI (issue 19): records quarantined by a
//! files stream are retried after the config is fixed; the warehouse gets the
//! recovered rows exactly once (also after a retry killed before it removed the
//! files it consumed), the quarantine keeps only what still fails, and a merge
//! record a later run superseded never overwrites the newer row.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const PII_KEY: &str = "0123456789abcdef0123456789abcdef-retry";

/// A files stream typed by `columns`, into `destination`.
fn pipeline(destination: &str, amount: &str, write_mode: &str) -> String {
    format!(
        r#"name: shop
lake: ./lake
{destination}
pii:
  key: ${{PII_KEY}}
  columns: {{ "*.email": hash }}
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/*.ndjson
        columns: {{ id: bigint, amount: "{amount}", day: date, email: text }}
        primary_key: [id]
        write_mode: {write_mode}
        infer_columns: false
"#
    )
}

/// Order 1 types; order 2's amount is over `numeric(6,2)`; order 3's day is no date.
const ORDERS: &str =
    "{\"id\": 1, \"amount\": 10.5, \"day\": \"2024-07-01\", \"email\": \"ann@example.com\"}\n\
{\"id\": 2, \"amount\": 12345.67, \"day\": \"2024-07-01\", \"email\": \"bob@example.com\"}\n\
{\"id\": 3, \"amount\": 1, \"day\": \"someday\", \"email\": \"cy@example.com\"}\n";

fn sluice(project: &Project, args: &[&str]) -> std::process::Output {
    project
        .cmd()
        .env("PII_KEY", PII_KEY)
        .args(args)
        .output()
        .expect("run sluice")
}

fn quarantined(project: &Project) -> Vec<Value> {
    let out = sluice(
        project,
        &[
            "quarantine",
            "list",
            "--table",
            "d1.shop_orders",
            "--format",
            "json",
        ],
    );
    assert_exit(&out, 0);
    serde_json::from_str(&stdout(&out)).unwrap_or_default()
}

/// Rows of the lake's D1 table (what models read), by id.
fn lake_ids(project: &Project) -> Vec<i64> {
    let out = sluice(
        project,
        &[
            "query",
            "--format",
            "json",
            "SELECT id FROM d1.shop_orders ORDER BY id",
        ],
    );
    assert_exit(&out, 0);
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

fn quarantine_dir(project: &Project) -> std::path::PathBuf {
    project.path().join("lake/quarantine/d1/shop_orders")
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The scenario against a destination; `ids()` reads the warehouse's ids in order.
fn retry_scenario(
    project: &Project,
    destination: &str,
    ids: &dyn Fn() -> Vec<i64>,
    amount_of: &dyn Fn(i64) -> String,
) {
    project.write("data/orders.ndjson", ORDERS);
    assert_exit(&sluice(project, &["run"]), 0);
    assert_eq!(ids(), vec![1]);
    assert_eq!(quarantined(project).len(), 2);

    // Before the fix, a retry loads nothing and loses nothing.
    let out = sluice(project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("2 record(s) retried, 0 loaded, 2 still quarantined"),
        "{}",
        stdout(&out)
    );
    assert_eq!(ids(), vec![1]);
    assert_eq!(quarantined(project).len(), 2);

    // The fix: a wider amount.
    project.write(
        "pipeline.yaml",
        pipeline(destination, "numeric(12,2)", "append"),
    );
    let out = sluice(
        project,
        &["quarantine", "retry", "d1.shop_orders", "--dry-run"],
    );
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("1 would load, 1 still fails"), "{text}");
    assert!(
        text.contains("data/orders.ndjson:2") && text.contains("data/orders.ndjson:3"),
        "{text}"
    );
    // What it prints goes through the pii: policy.
    assert!(!text.contains("@example.com"), "{text}");
    assert_eq!(ids(), vec![1], "a dry run changes nothing");
    assert_eq!(quarantined(project).len(), 2);

    let before = files_in(&quarantine_dir(project));
    let saved: Vec<(String, Vec<u8>)> = before
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::read(quarantine_dir(project).join(f)).unwrap(),
            )
        })
        .collect();
    let out = sluice(project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("2 record(s) retried, 1 loaded, 1 still quarantined"),
        "{}",
        stdout(&out)
    );
    assert_eq!(ids(), vec![1, 2]);
    assert_eq!(amount_of(2), "12345.67");
    assert_eq!(lake_ids(project), vec![1, 2]);
    let left = quarantined(project);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["origin"], "data/orders.ndjson:3");
    assert!(
        left[0]["reason"].as_str().unwrap().contains("day"),
        "{left:?}"
    );
    let run_id = left[0]["run_id"].as_str().unwrap().to_string();
    assert!(run_id.ends_with("-retry"), "{run_id}");

    // It is a run: in the run history and the audit log.
    let out = sluice(project, &["runs", "--json"]);
    assert!(stdout(&out).contains(&run_id), "{}", stdout(&out));
    let out = sluice(project, &["audit", "show"]);
    assert!(
        stdout(&out).contains("quarantine_retry"),
        "{}",
        stdout(&out)
    );

    // A second retry loads nothing.
    let out = sluice(project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("1 record(s) retried, 0 loaded, 1 still quarantined"),
        "{}",
        stdout(&out)
    );
    assert_eq!(ids(), vec![1, 2]);
    assert_eq!(lake_ids(project), vec![1, 2]);
    assert_eq!(quarantined(project).len(), 1);

    // A retry killed after its publish, before it removed the files it consumed: the
    // lake holds the original files again, the retry's mark and its own quarantine.
    let dir = quarantine_dir(project);
    for f in files_in(&dir) {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    for (name, body) in &saved {
        std::fs::write(dir.join(name), body).unwrap();
    }
    let interrupted = "20991231T000000000Z-000000-retry";
    std::fs::write(
        dir.join(format!("{interrupted}.ndjson")),
        std::fs::read(dir.join(&before[0])).unwrap(),
    )
    .unwrap();
    let files: Vec<String> = before
        .iter()
        .map(|f| format!("quarantine/d1/shop_orders/{f}"))
        .collect();
    std::fs::write(
        dir.join(format!("{interrupted}.retry.json")),
        serde_json::json!({ "run_id": interrupted, "files": files }).to_string(),
    )
    .unwrap();
    let out = sluice(project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("finishing an interrupted retry"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ids(), vec![1, 2], "the ledger skips the repeated load");
    assert_eq!(
        lake_ids(project),
        vec![1, 2],
        "the lake's files are replaced, not added"
    );
    assert_eq!(quarantined(project).len(), 1);
    assert!(!files_in(&dir).iter().any(|f| f.ends_with(".retry.json")));
}

#[test]
fn sqlite_retry_recovers_fixed_records_once_and_keeps_what_still_fails() {
    let destination = "destination: { type: sqlite, path: warehouse.db }";
    let project = Project::new(&pipeline(destination, "numeric(6,2)", "append"));
    let db = project.path().join("warehouse.db");
    let ids = || -> Vec<i64> {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut stmt = conn
            .prepare("select id from d1__shop_orders order by id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let amount_of = |id: i64| -> String {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "select cast(amount as text) from d1__shop_orders where id = ?1",
            [id],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
    };
    retry_scenario(&project, destination, &ids, &amount_of);
}

#[test]
fn postgres_retry_recovers_fixed_records_once_and_keeps_what_still_fails() {
    let pg = Pg::connect();
    let prefix = unique_prefix("qretry");
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}",
        pg_url()
    );
    let project = Project::new(&pipeline(&destination, "numeric(6,2)", "append"));
    let table = format!("\"{prefix}d1\".shop_orders");
    let ids = || -> Vec<i64> {
        pg.strings(&format!("select id::text from {table} order by id"))
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    };
    let amount_of = |id: i64| -> String {
        pg.strings(&format!("select amount::text from {table} where id = {id}"))
            .remove(0)
    };
    retry_scenario(&project, &destination, &ids, &amount_of);
    pg.drop_schemas(&prefix);
}

#[test]
fn a_merge_record_a_later_run_superseded_stays_quarantined() {
    let destination = "destination: { type: sqlite, path: warehouse.db }";
    let project = Project::new(&pipeline(destination, "numeric(6,2)", "merge"));
    // Order 5 twice in one run: `dedupe: last` keeps 7.00 and quarantines 6.00.
    project.write(
        "data/a.ndjson",
        format!(
            "{ORDERS}{{\"id\": 5, \"amount\": 6, \"day\": \"2024-07-01\"}}\n\
             {{\"id\": 5, \"amount\": 7, \"day\": \"2024-07-01\"}}\n"
        ),
    );
    assert_exit(&sluice(&project, &["run"]), 0);
    assert_eq!(quarantined(&project).len(), 3);
    // A later file sends order 2 again, with a value that fits: it is the newer row.
    project.write(
        "data/b.ndjson",
        "{\"id\": 2, \"amount\": 5, \"day\": \"2024-07-02\", \"email\": \"bob@example.com\"}\n",
    );
    assert_exit(&sluice(&project, &["run"]), 0);
    project.write(
        "pipeline.yaml",
        pipeline(destination, "numeric(12,2)", "merge"),
    );

    let out = sluice(&project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("0 loaded, 3 still quarantined"),
        "{}",
        stdout(&out)
    );
    let amount: String = project
        .sqlite()
        .query_row(
            "select cast(amount as text) from d1__shop_orders where id = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(amount.parse::<f64>().unwrap(), 5.0, "{amount}");
    let kept: String = project
        .sqlite()
        .query_row(
            "select cast(amount as text) from d1__shop_orders where id = 5",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        kept.parse::<f64>().unwrap(),
        7.0,
        "the row dedupe kept stays"
    );
    let left = quarantined(&project);
    let superseded = left
        .iter()
        .find(|r| r["origin"] == "data/a.ndjson:2")
        .unwrap();
    assert!(
        superseded["reason"]
            .as_str()
            .unwrap()
            .starts_with("superseded"),
        "{left:?}"
    );
}

#[test]
fn retry_refuses_unknown_tables_models_and_replace_streams_and_says_when_nothing_is_quarantined() {
    let destination = "destination: { type: sqlite, path: warehouse.db }";
    let project = Project::new(&pipeline(destination, "numeric(12,2)", "append"));
    project.write(
        "data/orders.ndjson",
        "{\"id\": 1, \"amount\": 10.5, \"day\": \"2024-07-01\", \"email\": \"ann@example.com\"}\n",
    );
    project.write(
        "models/d2a/orders_clean.sql",
        "SELECT id, amount FROM d1.shop_orders\n",
    );
    assert_exit(&sluice(&project, &["run"]), 0);

    let out = sluice(&project, &["quarantine", "retry", "shop_order"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("did you mean `d1.shop_orders`?"),
        "{}",
        stderr(&out)
    );

    let out = sluice(&project, &["quarantine", "retry", "d2a.orders_clean"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("d2a.orders_clean is a model"),
        "{}",
        stderr(&out)
    );

    let out = sluice(&project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("nothing to retry"),
        "{}",
        stdout(&out)
    );

    let out = sluice(
        &project,
        &[
            "quarantine",
            "retry",
            "shop_orders",
            "--run",
            "20240101T000000000Z-nope",
        ],
    );
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("no run 20240101T000000000Z-nope"),
        "{}",
        stderr(&out)
    );

    project.write(
        "pipeline.yaml",
        pipeline(destination, "numeric(12,2)", "replace"),
    );
    let out = sluice(&project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("`replace` stream"),
        "{}",
        stderr(&out)
    );
}

fn partitioned(amount: &str) -> String {
    pipeline(
        "destination: { type: sqlite, path: warehouse.db }",
        amount,
        "overwrite_partitions\n        partition_column: day",
    )
}

fn sqlite_ids(project: &Project) -> Vec<i64> {
    let conn = project.sqlite();
    let mut stmt = conn
        .prepare("select id from d1__shop_orders order by id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn overwrite_partitions_rows_are_added_to_their_partition_unless_a_later_run_reloaded_it() {
    let project = Project::new(&partitioned("numeric(6,2)"));
    project.write("data/orders.ndjson", ORDERS);
    assert_exit(&sluice(&project, &["run"]), 0);
    assert_eq!(sqlite_ids(&project), vec![1]);

    // Recovered order 2 joins order 1 in 2024-07-01; the partition is not replaced.
    project.write("pipeline.yaml", partitioned("numeric(12,2)"));
    let out = sluice(&project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("1 loaded, 1 still quarantined"),
        "{}",
        stdout(&out)
    );
    assert_eq!(sqlite_ids(&project), vec![1, 2]);
    assert_eq!(lake_ids(&project), vec![1, 2]);

    // Another project: the file is reloaded (changed) after the fix, before the retry.
    let project = Project::new(&partitioned("numeric(6,2)"));
    project.write("data/orders.ndjson", ORDERS);
    assert_exit(&sluice(&project, &["run"]), 0);
    project.write("pipeline.yaml", partitioned("numeric(12,2)"));
    project.write("data/orders.ndjson", ORDERS.replace("10.5", "11.5"));
    assert_exit(&sluice(&project, &["run"]), 0);
    assert_eq!(sqlite_ids(&project), vec![1, 2]);
    let out = sluice(&project, &["quarantine", "retry", "shop_orders"]);
    assert_exit(&out, 0);
    assert_eq!(
        sqlite_ids(&project),
        vec![1, 2],
        "order 2 is not loaded twice"
    );
    assert_eq!(lake_ids(&project), vec![1, 2]);
    let left = quarantined(&project);
    let order_2: Vec<&Value> = left
        .iter()
        .filter(|r| r["origin"] == "data/orders.ndjson:2")
        .collect();
    assert!(
        !order_2.is_empty()
            && order_2
                .iter()
                .all(|r| r["reason"].as_str().unwrap().starts_with("superseded")),
        "{left:?}"
    );
}
