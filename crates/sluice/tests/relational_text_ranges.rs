//! `ranges: N` on keys that are not integers (text under a collation that is not
//! byte order, uuid), against the real PostgreSQL and MariaDB: the database cuts
//! the ranges at quantiles in its own ordering, and while transactions commit
//! during the read every row of the one snapshot is loaded exactly once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

const ROWS: i64 = 20_000;
const BALANCE: i64 = 100;

fn pipeline(kind: &str, url: &str, text_table: &str, uuid_table: &str) -> String {
    format!(
        r#"name: textranges
lake: ./lake
sources:
  src:
    type: {kind}
    url: {url}
    batch_size: 500
    max_concurrency: 2
    streams:
      by_text: {{ table: {text_table}, ranges: 4 }}
      by_uuid: {{ table: {uuid_table}, ranges: 4 }}
"#
    )
}

fn one_i64(project: &Project, sql: &str) -> i64 {
    project
        .sqlite()
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs the pipeline while `write(n)` commits transactions (a transfer between two
/// seeded rows and a pair of new rows whose balances cancel out), then checks each
/// stream: 4 slices, no key twice, every seeded row there, the seeded total.
fn read_while_writing(project: &Project, write: impl Fn(i64) + Send + 'static) {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                write(n);
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let out = project.run(&["--json"]);
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert_exit(&out, 0);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        written > 10,
        "only {written} transactions committed during the run"
    );
    for stream in ["by_text", "by_uuid"] {
        let task = record["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task"] == format!("src.{stream}"))
            .unwrap_or_else(|| panic!("no task src.{stream} in {record}"));
        assert_eq!(task["slices"], 4, "{task}");
        let table = format!("d1__src_{stream}");
        let count = one_i64(project, &format!("SELECT count(*) FROM {table}"));
        assert_eq!(
            one_i64(project, &format!("SELECT count(DISTINCT id) FROM {table}")),
            count,
            "{stream}: a key was read twice"
        );
        assert_eq!(
            one_i64(
                project,
                &format!("SELECT count(*) FROM {table} WHERE seeded = 1")
            ),
            ROWS,
            "{stream}: a seeded row was lost"
        );
        assert_eq!(
            one_i64(project, &format!("SELECT sum(balance) FROM {table}")),
            ROWS * BALANCE,
            "{stream}: the ranges saw different snapshots ({written} transactions, {count} rows)"
        );
        assert_eq!((count - ROWS) % 2, 0, "{stream}: a pair was seen half");
    }
}

#[test]
fn postgres_text_and_uuid_keys_split_in_the_collations_order_and_read_each_row_once() {
    let prefix = unique_prefix("relswitch_textranges");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    // Upper- and lower-case first letters under an ICU collation (a < B < c), unlike
    // byte order (B < a < c): cuts made in byte order would overlap ranges here.
    pg.execute(&format!(
        r#"CREATE SCHEMA {schema};
        CREATE TABLE {schema}.by_text (id text COLLATE "en-x-icu" PRIMARY KEY, balance bigint NOT NULL, seeded int NOT NULL);
        INSERT INTO {schema}.by_text SELECT chr(CASE WHEN g % 2 = 0 THEN 65 ELSE 97 END + g % 26) || md5(g::text), {BALANCE}, 1
          FROM generate_series(1, {ROWS}) g;
        CREATE TABLE {schema}.by_uuid (id uuid PRIMARY KEY, balance bigint NOT NULL, seeded int NOT NULL);
        INSERT INTO {schema}.by_uuid SELECT md5(g::text)::uuid, {BALANCE}, 1 FROM generate_series(1, {ROWS}) g;"#
    ));
    let project = Project::new(&pipeline(
        "postgres",
        &pg_url(),
        &format!("{schema}.by_text"),
        &format!("{schema}.by_uuid"),
    ));
    let writer = Pg::connect();
    let s = schema.clone();
    read_while_writing(&project, move |n| {
        let (from, to) = (n % ROWS + 1, (n * 7_919) % ROWS + 1);
        let text = |g: i64| {
            format!("chr(CASE WHEN {g} % 2 = 0 THEN 65 ELSE 97 END + {g} % 26) || md5('{g}')")
        };
        writer.execute(&format!(
            "BEGIN;
             UPDATE {s}.by_text SET balance = balance - 7 WHERE id = {};
             UPDATE {s}.by_text SET balance = balance + 7 WHERE id = {};
             INSERT INTO {s}.by_text VALUES ('A-{n}', 5, 0), ('z-{n}', -5, 0);
             UPDATE {s}.by_uuid SET balance = balance - 7 WHERE id = md5('{from}')::uuid;
             UPDATE {s}.by_uuid SET balance = balance + 7 WHERE id = md5('{to}')::uuid;
             INSERT INTO {s}.by_uuid VALUES (md5('new-a-{n}')::uuid, 5, 0), (md5('new-b-{n}')::uuid, -5, 0);
             COMMIT;",
            text(from),
            text(to)
        ));
    });
    pg.drop_schemas(&prefix);
}

#[test]
fn mariadb_text_and_uuid_keys_split_in_the_collations_order_and_read_each_row_once() {
    let prefix = unique_prefix("relswitch_mytextranges");
    let db = format!("{prefix}src");
    // utf8mb4_general_ci: case-insensitive, unlike byte order; MariaDB's UUID type
    // orders time-based UUIDs by time, unlike their text.
    mariadb_cli(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} COLLATE utf8mb4_general_ci;
         CREATE TABLE {db}.by_text (id varchar(40) PRIMARY KEY, balance bigint NOT NULL, seeded int NOT NULL) ENGINE=InnoDB;
         INSERT INTO {db}.by_text SELECT CONCAT(CHAR(IF(seq % 2 = 0, 65, 97) + seq % 26), MD5(seq)), {BALANCE}, 1 FROM {db}.seq_1_to_{ROWS};
         CREATE TABLE {db}.by_uuid (id uuid PRIMARY KEY, balance bigint NOT NULL, seeded int NOT NULL) ENGINE=InnoDB;
         INSERT INTO {db}.by_uuid SELECT UUID(), {BALANCE}, 1 FROM {db}.seq_1_to_{ROWS};"
    ));
    let project = Project::new(&pipeline(
        "mysql",
        &mysql_url(),
        &format!("{db}.by_text"),
        &format!("{db}.by_uuid"),
    ));
    let d = db.clone();
    read_while_writing(&project, move |n| {
        let (from, to) = (n % ROWS + 1, (n * 7_919) % ROWS + 1);
        let text = |g: i64| format!("CONCAT(CHAR(IF({g} % 2 = 0, 65, 97) + {g} % 26), MD5({g}))");
        mariadb_cli(&format!(
            "START TRANSACTION;
             UPDATE {d}.by_text SET balance = balance - 7 WHERE id = {};
             UPDATE {d}.by_text SET balance = balance + 7 WHERE id = {};
             INSERT INTO {d}.by_text VALUES ('A-{n}', 5, 0), ('z-{n}', -5, 0);
             UPDATE {d}.by_uuid SET balance = balance - 7 WHERE id = (SELECT id FROM (SELECT id FROM {d}.by_uuid WHERE seeded = 1 ORDER BY id LIMIT 1 OFFSET {}) AS x);
             UPDATE {d}.by_uuid SET balance = balance + 7 WHERE id = (SELECT id FROM (SELECT id FROM {d}.by_uuid WHERE seeded = 1 ORDER BY id LIMIT 1 OFFSET {}) AS x);
             INSERT INTO {d}.by_uuid VALUES (UUID(), 5, 0), (UUID(), -5, 0);
             COMMIT;",
            text(from),
            text(to),
            from - 1,
            to - 1
        ));
    });
    mariadb_cli(&format!("DROP DATABASE {db}"));
}
