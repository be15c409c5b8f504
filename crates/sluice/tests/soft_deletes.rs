//! Soft deletes by key scan (`deletes: { scan: key, every: … }`) on incremental
//! streams, against the real PostgreSQL and MariaDB sources: rows deleted at the
//! source are marked (`_sluice_deleted_at`), the others untouched; a re-run changes
//! nothing; a row inserted again is unmarked.

mod common;

use common::*;
use serde_json::Value;

fn run_json(project: &Project) -> Value {
    let out = project.run(&["--json"]);
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).expect("run record JSON")
}

fn rows_read(record: &Value) -> u64 {
    record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "src.items")
        .unwrap_or_else(|| panic!("no task src.items in {record}"))["rows_extracted"]
        .as_u64()
        .unwrap()
}

fn pipeline(kind: &str, url: &str, table: &str, every: &str, destination: &str) -> String {
    format!(
        r#"name: deletes
lake: ./lake
{destination}
sources:
  src:
    type: {kind}
    url: {url}
    batch_size: 3
    streams:
      items:
        table: {table}
        sync: incremental
        cursor: updated_at
        deletes: {{ scan: key, every: {every} }}
"#
    )
}

/// The destination's rows as `id|v|deleted?` plus each row's deletion time and
/// load time, in id order.
type Rows = Vec<(String, Option<String>, String)>;

/// The scenario, on a source table `items (id, updated_at, v)` with ids 1..=10.
fn scenario(
    source: &dyn Fn(&str),
    table: &str,
    project: &Project,
    write_pipeline: &dyn Fn(&str),
    rows: &dyn Fn() -> Rows,
) {
    let values: Vec<String> = (1..=10)
        .map(|id| format!("({id}, '2024-07-01 10:00:0{}', 'v{id}')", id % 3))
        .collect();
    source(&format!(
        "INSERT INTO {table} (id, updated_at, v) VALUES {}",
        values.join(", ")
    ));

    // A daily scan: the first run scans (nothing in D1 yet), the second is not due.
    write_pipeline("1d");
    let first = run_json(project);
    assert_eq!(rows_read(&first), 10);
    let loaded = rows();
    assert_eq!(loaded.len(), 10);
    assert!(
        loaded.iter().all(|(_, deleted, _)| deleted.is_none()),
        "{loaded:?}"
    );

    source(&format!("DELETE FROM {table} WHERE id IN (3, 7)"));
    let second = run_json(project);
    assert_eq!(rows_read(&second), 0);
    assert_eq!(rows(), loaded, "a scan that is not due marks nothing");

    // Due on every run from now on: exactly the two deleted rows are marked, with
    // their last values kept; the others are untouched (not even reloaded).
    write_pipeline("0");
    let third = run_json(project);
    assert_eq!(
        rows_read(&third),
        2,
        "the two marked rows are published again"
    );
    let marked = rows();
    let (gone, kept): (Vec<_>, Vec<_>) = marked.iter().partition(|(_, d, _)| d.is_some());
    let gone_ids: Vec<&str> = gone.iter().map(|(row, _, _)| row.as_str()).collect();
    assert_eq!(gone_ids, ["3|v3", "7|v7"], "{marked:?}");
    let untouched: Vec<_> = loaded
        .iter()
        .filter(|(row, _, _)| row != "3|v3" && row != "7|v7")
        .collect();
    assert_eq!(kept, untouched, "the other rows are as they were");

    // Idempotent: the next scan finds the same two keys gone, already marked.
    let fourth = run_json(project);
    assert_eq!(rows_read(&fourth), 0);
    assert_eq!(rows(), marked);

    // Row 3 comes back with its old cursor value (the incremental read cannot see
    // it); the scan finds it at the source again and publishes it unmarked.
    source(&format!(
        "INSERT INTO {table} (id, updated_at, v) VALUES (3, '2024-07-01 10:00:00', 'back')"
    ));
    let fifth = run_json(project);
    assert_eq!(rows_read(&fifth), 1);
    let after = rows();
    let now_marked: Vec<&str> = after
        .iter()
        .filter(|(_, d, _)| d.is_some())
        .map(|(row, _, _)| row.as_str())
        .collect();
    assert_eq!(now_marked, ["7|v7"], "{after:?}");
    assert!(
        after
            .iter()
            .any(|(row, d, _)| row == "3|back" && d.is_none()),
        "{after:?}"
    );
    assert_eq!(after.len(), 10);
}

#[test]
fn postgres_deleted_rows_are_marked_into_postgres() {
    let prefix = unique_prefix("pgdeletes");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    pg.execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, v text);"
    ));
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
        pg_url()
    );
    let table = format!("{schema}.items");
    let project = Project::new("");
    let write = |every: &str| {
        project.write(
            "pipeline.yaml",
            pipeline("postgres", &pg_url(), &table, every, &destination),
        )
    };
    let rows = || -> Rows {
        pg.strings(&format!(
            "SELECT id || '|' || coalesce(v, '') || '|' || coalesce(_sluice_deleted_at::text, '') \
             || '|' || _sluice_loaded_at::text FROM {prefix}d1.src_items ORDER BY id"
        ))
        .into_iter()
        .map(|line| {
            let parts: Vec<&str> = line.split('|').collect();
            (
                format!("{}|{}", parts[0], parts[1]),
                Some(parts[2].to_string()).filter(|d| !d.is_empty()),
                parts[3].to_string(),
            )
        })
        .collect()
    };
    scenario(&|sql| pg.execute(sql), &table, &project, &write, &rows);
    pg.drop_schemas(&prefix);
}

#[test]
fn mariadb_deleted_rows_are_marked_into_sqlite() {
    let db = format!("{}src", unique_prefix("mydeletes"));
    mariadb_cli(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};
         CREATE TABLE {db}.items (id bigint PRIMARY KEY, updated_at datetime(6) NOT NULL, v text) ENGINE=InnoDB;"
    ));
    let table = format!("{db}.items");
    let project = Project::new("");
    let write = |every: &str| {
        project.write(
            "pipeline.yaml",
            pipeline("mysql", &mysql_url(), &table, every, ""),
        )
    };
    let rows = || -> Rows {
        let warehouse = project.sqlite();
        let mut statement = warehouse
            .prepare(
                "SELECT id, v, _sluice_deleted_at, _sluice_loaded_at FROM d1__src_items ORDER BY id",
            )
            .unwrap();
        let rows = statement
            .query_map([], |r| {
                Ok((
                    format!("{}|{}", r.get::<_, i64>(0)?, r.get::<_, String>(1)?),
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    };
    scenario(
        &|sql| {
            mariadb_cli(sql);
        },
        &table,
        &project,
        &write,
        &rows,
    );

    // The lake's D1 view (what models read) agrees with the warehouse.
    let out = project
        .cmd()
        .args([
            "query",
            "--format",
            "csv",
            "SELECT id FROM d1.src_items WHERE _sluice_deleted_at IS NOT NULL ORDER BY id",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(stdout(&out).trim().lines().collect::<Vec<_>>(), ["id", "7"]);
    mariadb_cli(&format!("DROP DATABASE {db}"));
}
