//! Parallel key ranges (`ranges: N`) of `type: postgres` and `type: mysql` sources,
//! through the real binary against the real PostgreSQL and MariaDB: the ranges of a
//! run see one snapshot while transactions commit across them, and a run killed
//! with SIGKILL re-reads only its unfinished ranges and converges on the source.

mod common;

use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn run_json(project: &Project, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = project.run(&all);
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).expect("run record JSON")
}

fn task<'a>(record: &'a Value, name: &str) -> &'a Value {
    record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {record}"))
}

fn one_i64(project: &Project, sql: &str) -> i64 {
    project
        .sqlite()
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

const ACCOUNTS: i64 = 40_000;
const BALANCE: i64 = 100;

fn accounts_pipeline(kind: &str, url: &str, table: &str) -> String {
    format!(
        r#"name: ranges
lake: ./lake
sources:
  src:
    type: {kind}
    url: {url}
    batch_size: 500
    max_concurrency: 2
    streams:
      accounts: {{ table: {table}, ranges: 4 }}
"#
    )
}

/// While `transfer(n)` commits transactions that move money between an account of
/// the first range and one of the last (and open pairs of accounts at both ends),
/// a 4-range read with 2 at a time loads a table whose total is the seeded total.
fn ranges_see_one_snapshot(project: &Project, transfer: impl Fn(i64) + Send + 'static) {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                transfer(n);
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let record = run_json(project, &[]);
    stop.store(true, Ordering::Relaxed);
    let transfers = writer.join().unwrap();
    let task = task(&record, "src.accounts");
    assert_eq!(task["slices"], 4, "{task}");
    assert!(
        transfers > 20,
        "only {transfers} transfers committed during the run"
    );
    let count = one_i64(project, "SELECT count(*) FROM d1__src_accounts");
    let total = one_i64(project, "SELECT sum(balance) FROM d1__src_accounts");
    assert_eq!(
        total,
        ACCOUNTS * BALANCE,
        "the ranges saw different snapshots ({transfers} transfers, {count} rows)"
    );
    assert_eq!(
        (count - ACCOUNTS) % 2,
        0,
        "an account pair was seen half: {count} rows"
    );
    assert_eq!(
        one_i64(project, "SELECT count(DISTINCT id) FROM d1__src_accounts"),
        count
    );
}

#[test]
fn postgres_ranges_read_one_exported_snapshot_while_transfers_commit() {
    let prefix = unique_prefix("rangesnap");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let table = format!("{prefix}src.accounts");
    pg.execute(&format!(
        "CREATE SCHEMA {prefix}src; CREATE TABLE {table} (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO {table} SELECT g, {BALANCE} FROM generate_series(1, {ACCOUNTS}) g;"
    ));
    let project = Project::new(&accounts_pipeline("postgres", &pg_url(), &table));
    let writer = Pg::connect();
    let written = table.clone();
    ranges_see_one_snapshot(&project, move |n| {
        let (from, to) = (n % 5_000 + 1, ACCOUNTS - n % 5_000);
        writer.execute(&format!(
            "BEGIN;
             UPDATE {written} SET balance = balance - 7 WHERE id = {from};
             UPDATE {written} SET balance = balance + 7 WHERE id = {to};
             INSERT INTO {written} VALUES (-{n}, 5), ({ACCOUNTS} + {n}, -5);
             COMMIT;"
        ));
    });
    pg.drop_schemas(&prefix);
}

#[test]
fn mysql_ranges_start_their_snapshots_together_while_transfers_commit() {
    let prefix = unique_prefix("myrangesnap");
    let db = format!("{prefix}src");
    let table = format!("{db}.accounts");
    mariadb_cli(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};
         CREATE TABLE {table} (id bigint PRIMARY KEY, balance bigint NOT NULL) ENGINE=InnoDB;
         INSERT INTO {table} SELECT seq, {BALANCE} FROM {db}.seq_1_to_{ACCOUNTS};"
    ));
    let project = Project::new(&accounts_pipeline("mysql", &mysql_url(), &table));
    let written = table.clone();
    ranges_see_one_snapshot(&project, move |n| {
        let (from, to) = (n % 5_000 + 1, ACCOUNTS - n % 5_000);
        mariadb_cli(&format!(
            "START TRANSACTION;
             UPDATE {written} SET balance = balance - 7 WHERE id = {from};
             UPDATE {written} SET balance = balance + 7 WHERE id = {to};
             INSERT INTO {written} VALUES (-{n}, 5), ({ACCOUNTS} + {n}, -5);
             COMMIT;"
        ));
    });
    mariadb_cli(&format!("DROP DATABASE {db}"));
}

#[test]
fn a_ranged_first_load_killed_with_sigkill_rereads_only_unfinished_ranges_and_converges() {
    const ROWS: i64 = 120_000;
    let prefix = unique_prefix("rangekill");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let table = format!("{prefix}src.items");
    pg.execute(&format!(
        "CREATE SCHEMA {prefix}src;
         CREATE TABLE {table} (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, v text NOT NULL);
         INSERT INTO {table} SELECT g, '2024-01-01'::timestamptz + g * interval '1 second', md5(g::text)
         FROM generate_series(1, {ROWS}) g;"
    ));
    // One range at a time, so a kill finds some finished and some not.
    let project = Project::new(&format!(
        r#"name: ranges
lake: ./lake
sources:
  src:
    type: postgres
    url: {}
    batch_size: 1000
    max_concurrency: 1
    streams:
      items: {{ table: {table}, sync: incremental, cursor: updated_at, ranges: 4 }}
"#,
        pg_url()
    ));
    let mut child = Process::new(assert_cmd::cargo::cargo_bin("sluice"))
        .arg("run")
        .current_dir(project.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoints = project
        .path()
        .join("lake/_state/ranges/checkpoints/src_items");
    let started = Instant::now();
    // Finished checkpoints only: the lake writes each through a temporary file
    // beside it (`<digest>.json#<n>`) that is renamed when complete.
    let finished = || {
        std::fs::read_dir(&checkpoints).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
        })
    };
    while finished() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before two of its ranges were checkpointed"
        );
        assert!(
            started.elapsed().as_secs() < 120,
            "no range finished in two minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap();

    let record = run_json(&project, &[]);
    let items = task(&record, "src.items");
    assert_eq!(items["slices"], 4, "{items}");
    let resumed = items["slices_resumed"].as_u64().unwrap();
    assert!(
        (2..4).contains(&resumed),
        "the re-run should reuse the finished ranges and read the rest: {items}"
    );
    let source = || pg.strings(&format!("SELECT id || '|' || v FROM {table} ORDER BY id"));
    let loaded = |project: &Project| -> Vec<String> {
        let db = project.sqlite();
        let mut statement = db
            .prepare("SELECT id || '|' || v FROM d1__src_items ORDER BY id")
            .unwrap();
        let rows = statement.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(loaded(&project), source());

    // Later runs are incremental: only the changed rows, not in ranges.
    pg.execute(&format!(
        "UPDATE {table} SET v = 'changed', updated_at = now() WHERE id IN (7, 60001, 119999);"
    ));
    let record = run_json(&project, &[]);
    let items = task(&record, "src.items");
    assert_eq!(items["rows_extracted"], 3, "{items}");
    assert_eq!(items["slices"], 1, "{items}");
    assert_eq!(loaded(&project), source());
    pg.drop_schemas(&prefix);
}

#[test]
fn ranges_need_an_ordered_leading_key() {
    let prefix = unique_prefix("rangekey");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    pg.execute(&format!(
        "CREATE SCHEMA {prefix}src; CREATE TABLE {prefix}src.tags (name jsonb PRIMARY KEY);"
    ));
    let project = Project::new(&format!(
        "name: ranges\nlake: ./lake\nsources:\n  src:\n    type: postgres\n    url: {}\n    streams:\n      tags:\n        table: {prefix}src.tags\n        ranges: 3\n",
        pg_url()
    ));
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("pipeline.yaml:10")
            && err.contains("ranges")
            && err.contains("`name` (jsonb)"),
        "{err}"
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn mysql_ranges_without_the_reload_privilege_warn_and_read_each_row_once() {
    let prefix = unique_prefix("myrangenolock");
    let db = format!("{prefix}src");
    let table = format!("{db}.accounts");
    let user = format!("{prefix}ro");
    mariadb_cli(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};
         CREATE TABLE {table} (id bigint PRIMARY KEY, balance bigint NOT NULL) ENGINE=InnoDB;
         INSERT INTO {table} SELECT seq, {BALANCE} FROM {db}.seq_1_to_{ACCOUNTS};
         DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%';
         GRANT SELECT ON {db}.* TO '{user}'@'%';"
    ));
    let mut url = reqwest::Url::parse(&mysql_url()).unwrap();
    url.set_username(&user).unwrap();
    url.set_password(None).unwrap();
    url.set_path(&db);
    let project = Project::new(&accounts_pipeline("mysql", url.as_str(), &table));
    let out = project.run(&[]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("each range reads in a snapshot of its own") && err.contains("RELOAD"),
        "{err}"
    );
    assert_eq!(
        one_i64(&project, "SELECT count(DISTINCT id) FROM d1__src_accounts"),
        ACCOUNTS
    );
    assert_eq!(
        one_i64(&project, "SELECT sum(balance) FROM d1__src_accounts"),
        ACCOUNTS * BALANCE
    );
    mariadb_cli(&format!("DROP USER '{user}'@'%'; DROP DATABASE {db}"));
}
