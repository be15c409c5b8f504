//! End to end: `type: postgres` and `type: mysql` sources through the real binary,
//! against the real PostgreSQL and MariaDB (never skipped: a missing database fails).
//! Each test works in schemas / databases named after its process and test name.

mod common;

use std::process::Command as Process;

use common::*;
use serde_json::Value;

/// MariaDB through its own command-line client (`common::mariadb_cli`).
struct My;

impl My {
    fn connect() -> My {
        mariadb_cli("SELECT 1");
        My
    }

    /// Runs SQL; rows as tab-separated lines.
    fn query(&self, sql: &str) -> Vec<String> {
        mariadb_cli(sql)
    }
}

fn pg_destination(prefix: &str) -> String {
    format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
        pg_url()
    )
}

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

/// SQLite rows of the project's warehouse as strings, `|`-joined, NULL as `∅`.
fn sqlite_rows(project: &Project, sql: &str) -> Vec<String> {
    sqlite_text_rows(&project.sqlite(), sql)
}

// ---------------------------------------------------------------- PostgreSQL types

const PG_TYPES_TABLE: &str = r#"
CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE {s}.every_type (
  id bigint PRIMARY KEY, i2 smallint, i4 integer, n numeric(12,2), n_wide numeric(38,10),
  f4 real, f8 double precision, t text, vc varchar(20), b boolean, d date,
  ts timestamp, tstz timestamptz, tm time, js json, jb jsonb, by bytea, u uuid,
  e {s}.mood, arr integer[], tarr text[]
);
INSERT INTO {s}.every_type VALUES
 (1, -32768, 2147483647, 1234567890.12, 1234567890123456789012345678.0123456789,
  1.5, 0.1, 'héllo "quoted", comma' || chr(10) || 'line', 'short', true, '2024-02-29',
  '2024-07-01 10:11:12.123456', '2024-07-01 12:11:12.654321+02', '23:59:58.5',
  '{"b": 1, "a": [1, 2]}', '{"k": "v", "n": 12.5}', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  'happy', ARRAY[1, NULL, 3], ARRAY['x', 'y,z']),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL),
 (3, 0, 0, -0.01, -1.0000000001, -2.5, 1e300, '', 'ü', false, '1970-01-01',
  '1999-12-31 23:59:59', '2000-01-01 00:00:00+00', '00:00:00', '[]', '{}', '\x', '00000000-0000-0000-0000-000000000000',
  'sad', '{}', '{}');
CREATE TABLE {s}.no_key (v text, n integer);
INSERT INTO {s}.no_key SELECT 'row ' || g, g FROM generate_series(1, 10) g;
"#;

fn pg_types_pipeline(schema: &str, destination: &str) -> String {
    format!(
        r#"name: rel
lake: ./lake
{destination}
sources:
  pg:
    type: postgres
    url: {url}
    batch_size: 2
    streams:
      every:
        table: {schema}.every_type
      no_key:
        table: {schema}.no_key
"#,
        url = pg_url()
    )
}

#[test]
fn postgres_types_round_trip_into_sqlite_and_postgres() {
    let prefix = unique_prefix("pgtypes");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    pg.execute(&format!("CREATE SCHEMA {schema};"));
    pg.execute(&PG_TYPES_TABLE.replace("{s}", &schema));

    // SQLite (the embedded default).
    let project = Project::new(&pg_types_pipeline(&schema, ""));
    let record = run_json(&project, &[]);
    let every = task(&record, "pg.every");
    assert_eq!(every["rows_extracted"], 3, "{every}");
    assert_eq!(every["rows_quarantined"], 0, "{every}");
    assert_eq!(every["pages"], 2, "three rows in pages of two: {every}");
    let no_key = task(&record, "pg.no_key");
    assert_eq!(no_key["rows_extracted"], 10, "{no_key}");
    assert_eq!(no_key["pages"], 5, "{no_key}");
    let rows = sqlite_rows(
        &project,
        "SELECT id, i2, i4, n, n_wide, f4, f8, t, vc, b, d, ts, tstz, tm, js, jb, by, u, e, arr, tarr \
         FROM d1__pg_every ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            "1|-32768|2147483647|1234567890.12|1234567890123456789012345678.0123456789|1.5|0.1|héllo \"quoted\", comma\nline|short|1|2024-02-29|2024-07-01T10:11:12.123456Z|2024-07-01T10:11:12.654321Z|23:59:58.5|{\"b\":1,\"a\":[1,2]}|{\"k\":\"v\",\"n\":12.5}|00ff10|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|happy|[1,null,3]|[\"x\",\"y,z\"]",
            "2|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅",
            "3|0|0|-0.01|-1.0000000001|-2.5|1e300||ü|0|1970-01-01|1999-12-31T23:59:59.000000Z|2000-01-01T00:00:00.000000Z|00:00:00|[]|{}||00000000-0000-0000-0000-000000000000|sad|[]|[]",
        ]
    );
    assert_eq!(
        sqlite_rows(
            &project,
            "SELECT count(*), count(DISTINCT v) FROM d1__pg_no_key"
        ),
        ["10|10"]
    );

    // PostgreSQL: each value compared with the source's own, in SQL.
    let project = Project::new(&pg_types_pipeline(&schema, &pg_destination(&prefix)));
    run_json(&project, &[]);
    let d1 = format!("{prefix}d1");
    let differing = pg.strings(&format!(
        "SELECT s.id::text FROM {schema}.every_type s FULL JOIN {d1}.pg_every d ON d.id = s.id \
         WHERE d.id IS NULL OR s.id IS NULL \
         OR (s.i2, s.i4, s.n, s.n_wide, s.f4::float8, s.f8, s.t, s.vc::text, s.b, s.d) \
            IS DISTINCT FROM (d.i2::int2, d.i4::int4, d.n, d.n_wide, d.f4, d.f8, d.t, d.vc, d.b, d.d) \
         OR (s.ts AT TIME ZONE 'UTC') IS DISTINCT FROM d.ts OR s.tstz IS DISTINCT FROM d.tstz \
         OR s.tm::text IS DISTINCT FROM d.tm OR s.js::jsonb IS DISTINCT FROM d.js OR s.jb IS DISTINCT FROM d.jb \
         OR s.by IS DISTINCT FROM decode(d.by, 'hex') OR s.u::text IS DISTINCT FROM d.u \
         OR s.e::text IS DISTINCT FROM d.e OR to_jsonb(s.arr) IS DISTINCT FROM d.arr \
         OR to_jsonb(s.tarr) IS DISTINCT FROM d.tarr"
    ));
    assert!(
        differing.is_empty(),
        "rows differing from the source: {differing:?}"
    );
    let types = pg.strings(&format!(
        "SELECT column_name || ' ' || data_type || coalesce('(' || numeric_precision || ',' || numeric_scale || ')', '') \
         FROM information_schema.columns WHERE table_schema = '{d1}' AND table_name = 'pg_every' \
         AND column_name IN ('n', 'n_wide', 'ts', 'tstz', 'js', 'b') ORDER BY column_name"
    ));
    assert_eq!(
        types,
        [
            "b boolean",
            "js jsonb",
            "n numeric(12,2)",
            "n_wide numeric(38,10)",
            "ts timestamp with time zone",
            "tstz timestamp with time zone"
        ]
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn an_unsupported_column_type_is_a_config_error_naming_table_and_column() {
    let prefix = unique_prefix("pgunsupported");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    pg.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.shapes (id int PRIMARY KEY, spot point);"
    ));
    let project = Project::new(&pg_types_pipeline(&schema, "").replace("every_type", "shapes"));
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains(&format!("{schema}.shapes"))
            && text.contains("`spot`")
            && text.contains("point"),
        "{text}"
    );
    assert!(
        text.contains("pipeline.yaml:"),
        "the error points into the file: {text}"
    );
    pg.drop_schemas(&prefix);
}

// ---------------------------------------------------------------- MariaDB types

#[test]
fn mysql_types_round_trip_into_sqlite_and_postgres() {
    let prefix = unique_prefix("mytypes");
    let my = My::connect();
    let db = format!("{prefix}src");
    my.query(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"
    ));
    my.query(&format!(
        r#"CREATE TABLE {db}.every_type (
  id bigint PRIMARY KEY, ti tinyint, si smallint, mi mediumint, i int, ub bigint unsigned,
  n decimal(12,2), n_wide decimal(38,10), f float, f8 double, t text, vc varchar(20), ch char(3),
  b tinyint(1), d date, dt datetime(6), ts timestamp(6) NULL, tm time(6), js json,
  bl blob, vb varbinary(8), e enum('sad','ok','happy'), st set('a','b'), y year
) ENGINE=InnoDB;
INSERT INTO {db}.every_type VALUES
 (1, -128, -32768, -8388608, 2147483647, 18446744073709551615, 1234567890.12,
  1234567890123456789012345678.0123456789, 1.5, 0.1, 'héllo "quoted", comma\nline', 'short', 'abc',
  1, '2024-02-29', '2024-07-01 10:11:12.123456', '2024-07-01 10:11:12.654321', '838:59:58.5',
  '{{"b": 1, "a": [1, 2]}}', X'00ff10', X'01', 'happy', 'a,b', 2024),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, 0, 0, 0, 0, 0, -0.01, -1.0000000001, -0.5, 1e300, '', 'ü', '', 0, '1970-01-01',
  '1999-12-31 23:59:59', '2000-01-01 00:00:00', '-00:00:01', '[]', X'', X'', 'sad', '', 1999);
CREATE TABLE {db}.no_key (v text, n int) ENGINE=InnoDB;
INSERT INTO {db}.no_key VALUES ('a', 1), ('b', 2), ('c', 3), ('d', 4), ('e', 5);"#
    ));
    let pipeline = |destination: &str| {
        format!(
            r#"name: rel
lake: ./lake
{destination}
sources:
  my:
    type: mysql
    url: {url}
    batch_size: 2
    streams:
      every:
        table: {db}.every_type
      no_key:
        table: {db}.no_key
"#,
            url = mysql_url()
        )
    };
    let project = Project::new(&pipeline(""));
    let record = run_json(&project, &[]);
    let every = task(&record, "my.every");
    assert_eq!(every["rows_extracted"], 3, "{every}");
    assert_eq!(every["rows_quarantined"], 0, "{every}");
    let no_key = task(&record, "my.no_key");
    assert_eq!(no_key["rows_extracted"], 5, "{no_key}");
    assert_eq!(
        no_key["pages"], 3,
        "one streamed query in pages of two: {no_key}"
    );
    assert_eq!(
        sqlite_rows(&project, "SELECT v, n FROM d1__my_no_key ORDER BY n"),
        ["a|1", "b|2", "c|3", "d|4", "e|5"]
    );
    let rows = sqlite_rows(
        &project,
        "SELECT id, ti, si, mi, i, ub, n, n_wide, f, f8, t, vc, ch, b, d, dt, ts, tm, js, bl, vb, e, st, y \
         FROM d1__my_every ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            "1|-128|-32768|-8388608|2147483647|18446744073709551615|1234567890.12|1234567890123456789012345678.0123456789|1.5|0.1|héllo \"quoted\", comma\nline|short|abc|1|2024-02-29|2024-07-01T10:11:12.123456Z|2024-07-01T10:11:12.654321Z|838:59:58.500000|{\"b\":1,\"a\":[1,2]}|00ff10|01|happy|a,b|2024",
            "2|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅",
            "3|0|0|0|0|0|-0.01|-1.0000000001|-0.5|1e300||ü||0|1970-01-01|1999-12-31T23:59:59.000000Z|2000-01-01T00:00:00.000000Z|-00:00:01|[]|||sad||1999",
        ]
    );

    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let project = Project::new(&pipeline(&pg_destination(&prefix)));
    run_json(&project, &[]);
    let d1 = format!("{prefix}d1");
    let got = pg.strings(&format!(
        "SELECT concat_ws('|', id, ub, n, n_wide, f, f8, b, d, dt, ts, tm, js, bl, e) FROM {d1}.my_every WHERE id = 1"
    ));
    assert_eq!(
        got,
        ["1|18446744073709551615|1234567890.12|1234567890123456789012345678.0123456789|1.5|0.1|t|2024-02-29|2024-07-01 10:11:12.123456+00|2024-07-01 10:11:12.654321+00|838:59:58.500000|{\"a\": [1, 2], \"b\": 1}|00ff10|happy"]
    );
    my.query(&format!("DROP DATABASE {db}"));
    pg.drop_schemas(&prefix);
}

// ---------------------------------------------------------------- incremental

/// A database the incremental scenario changes between runs.
trait Changes {
    fn exec(&self, sql: &str);
}

impl Changes for Pg {
    fn exec(&self, sql: &str) {
        self.execute(sql);
    }
}

impl Changes for My {
    fn exec(&self, sql: &str) {
        self.query(sql);
    }
}

/// 25 rows over five cursor values (ties everywhere, pages of 4); then inserts
/// and updates, some at the old maximum's value; every run loads exactly the
/// changes, and a re-run nothing.
fn incremental_scenario(
    db: &dyn Changes,
    table: &str,
    ts: &dyn Fn(u32) -> String,
    project: &Project,
    rows: &dyn Fn() -> Vec<String>,
) {
    let values: Vec<String> = (1..=25)
        .map(|id| format!("({id}, {}, 'v{id}')", ts(id % 5)))
        .collect();
    db.exec(&format!(
        "INSERT INTO {table} (id, updated_at, v) VALUES {}",
        values.join(", ")
    ));

    let first = run_json(project, &[]);
    let t = task(&first, "src.items");
    assert_eq!(t["rows_extracted"], 25, "{t}");
    assert_eq!(t["pages"], 7, "25 rows in pages of 4: {t}");
    assert_eq!(rows().len(), 25);

    // Nothing changed: nothing read.
    let second = run_json(project, &[]);
    assert_eq!(task(&second, "src.items")["rows_extracted"], 0);

    // Three new rows and two updates, all later than the stored cursor.
    db.exec(&format!(
        "INSERT INTO {table} (id, updated_at, v) VALUES (26, {t5}, 'v26'), (27, {t5}, 'v27'), (28, {t6}, 'v28')",
        t5 = ts(5),
        t6 = ts(6)
    ));
    db.exec(&format!(
        "UPDATE {table} SET updated_at = {}, v = 'changed' WHERE id IN (3, 7)",
        ts(5)
    ));
    let third = run_json(project, &[]);
    let t = task(&third, "src.items");
    assert_eq!(t["rows_extracted"], 5, "exactly the changes: {t}");
    let all = rows();
    assert_eq!(all.len(), 28, "{all:?}");
    assert!(all.contains(&"3|changed".to_string()) && all.contains(&"7|changed".to_string()));
    assert!(all.contains(&"28|v28".to_string()));

    // A re-run is exact: nothing new, nothing read, the same rows.
    let fourth = run_json(project, &[]);
    assert_eq!(task(&fourth, "src.items")["rows_extracted"], 0);
    assert_eq!(rows(), all);

    // A full refresh reads every row once.
    let fifth = run_json(project, &["--full-refresh"]);
    assert_eq!(task(&fifth, "src.items")["rows_extracted"], 28);
    assert_eq!(rows(), all);
}

fn items_pipeline(kind: &str, url: &str, table: &str, destination: &str) -> String {
    format!(
        r#"name: rel
lake: ./lake
{destination}
sources:
  src:
    type: {kind}
    url: {url}
    batch_size: 4
    streams:
      items:
        table: {table}
        sync: incremental
        cursor: updated_at
"#
    )
}

#[test]
fn postgres_incremental_by_cursor_loads_exactly_the_changes() {
    let prefix = unique_prefix("pginc");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    pg.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.items (id int PRIMARY KEY, updated_at timestamptz NOT NULL, v text);"
    ));
    let table = format!("{schema}.items");
    let ts = |n: u32| format!("'2024-07-01 10:00:00.00000{n}+00'");

    let project = Project::new(&items_pipeline("postgres", &pg_url(), &table, ""));
    let rows = || sqlite_rows(&project, "SELECT id, v FROM d1__src_items ORDER BY id");
    incremental_scenario(&pg, &table, &ts, &project, &rows);

    // The same into PostgreSQL.
    pg.execute(&format!("TRUNCATE {table}"));
    let project = Project::new(&items_pipeline(
        "postgres",
        &pg_url(),
        &table,
        &pg_destination(&prefix),
    ));
    let d1 = format!("{prefix}d1");
    let rows = || {
        pg.strings(&format!(
            "SELECT id || '|' || v FROM {d1}.src_items ORDER BY id"
        ))
    };
    incremental_scenario(&Pg::connect(), &table, &ts, &project, &rows);
    pg.drop_schemas(&prefix);
}

#[test]
fn mysql_incremental_by_cursor_loads_exactly_the_changes() {
    let prefix = unique_prefix("myinc");
    let my = My::connect();
    let db = format!("{prefix}src");
    my.query(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}; \
         CREATE TABLE {db}.items (id int PRIMARY KEY, updated_at datetime(6) NOT NULL, v text) ENGINE=InnoDB"
    ));
    let table = format!("{db}.items");
    let ts = |n: u32| format!("'2024-07-01 10:00:00.00000{n}'");
    let project = Project::new(&items_pipeline("mysql", &mysql_url(), &table, ""));
    let rows = || sqlite_rows(&project, "SELECT id, v FROM d1__src_items ORDER BY id");
    incremental_scenario(&my, &table, &ts, &project, &rows);
    my.query(&format!("DROP DATABASE {db}"));
}

#[test]
fn an_overlap_rereads_late_commits_and_merges_them() {
    let prefix = unique_prefix("pgoverlap");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    pg.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.items (id int PRIMARY KEY, updated_at timestamptz NOT NULL, v text);
         INSERT INTO {schema}.items VALUES (1, '2024-07-01 10:00:00+00', 'a'), (2, '2024-07-01 10:05:00+00', 'b');"
    ));
    let pipeline = items_pipeline("postgres", &pg_url(), &format!("{schema}.items"), "").replace(
        "cursor: updated_at",
        "cursor: updated_at\n        overlap: 10 minutes",
    );
    let project = Project::new(&pipeline);
    assert_eq!(
        task(&run_json(&project, &[]), "src.items")["rows_extracted"],
        2
    );
    // A row committed late, with a cursor value before the stored one.
    pg.execute(&format!(
        "INSERT INTO {schema}.items VALUES (3, '2024-07-01 10:01:00+00', 'late')"
    ));
    let second = run_json(&project, &[]);
    // Rows from 09:55 on are read again: the two loaded and the late one.
    assert_eq!(task(&second, "src.items")["rows_extracted"], 3);
    assert_eq!(
        sqlite_rows(&project, "SELECT id, v FROM d1__src_items ORDER BY id"),
        ["1|a", "2|b", "3|late"]
    );
    pg.drop_schemas(&prefix);
}

// ---------------------------------------------------------------- discover

#[test]
fn discover_lists_tables_and_writes_streams_keeping_comments() {
    let prefix = unique_prefix("pgdiscover");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    pg.execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.orders (id bigint PRIMARY KEY, amount numeric(12,2), updated_at timestamptz NOT NULL);
         INSERT INTO {schema}.orders VALUES (1, 9.99, now()), (2, 0.01, now());
         CREATE TABLE {schema}.events (id bigint PRIMARY KEY, name text);
         CREATE TABLE {schema}.shapes (id int PRIMARY KEY, spot point);"
    ));
    let pipeline = format!(
        "# the shop's pipeline\nname: rel\nlake: ./lake\nsources:\n  pg:   # the operational database\n    type: postgres\n    url: {}\n    # streams are added by discover\n    streams: \n",
        pg_url()
    );
    let pipeline = pipeline.replace("streams: \n", "streams:\n      # keep me\n");
    let project = Project::new(&pipeline);
    let out = project
        .cmd()
        .args([
            "discover",
            "pg",
            &format!("{schema}.orders"),
            &format!("{schema}.events"),
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let listing = stdout(&out);
    assert!(
        listing.contains(&format!(
            "{schema}.orders  (primary key: id; suggested sync: incremental, cursor: updated_at)"
        )),
        "{listing}"
    );
    assert!(listing.contains("numeric(12,2)"), "{listing}");
    assert!(
        listing.contains("suggested sync: incremental, append_key: id"),
        "{listing}"
    );

    let out = project
        .cmd()
        .args([
            "discover",
            "pg",
            &format!("{schema}.orders"),
            &format!("{schema}.shapes"),
            "--write",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("`spot`"), "{}", stderr(&out));
    let written = std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap();
    assert_eq!(
        written,
        format!("{pipeline}      orders:\n        table: {schema}.orders\n        sync: incremental\n        cursor: updated_at\n")
    );
    let record = run_json(&project, &[]);
    assert_eq!(task(&record, "pg.orders")["rows_extracted"], 2);
    pg.drop_schemas(&prefix);
}

#[test]
fn a_query_stream_by_append_key_with_a_secret_url_replays_from_the_lake() {
    let prefix = unique_prefix("pgquery");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    pg.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.events (id bigint PRIMARY KEY, name text, amount numeric(10,3));
         INSERT INTO {schema}.events SELECT g, CASE WHEN g = 3 THEN 'skip' ELSE 'e' || g END, g * 1.125 FROM generate_series(1, 7) g;"
    ));
    let pipeline = format!(
        r#"name: rel
lake: ./lake
sources:
  src:
    type: postgres
    url: ${{SRC_DB_URL}}
    batch_size: 2
    streams:
      recent:
        query: SELECT id, name, amount FROM {schema}.events WHERE name <> 'skip'
        sync: incremental
        append_key: id
"#
    );
    let project = Project::new(&pipeline);
    let run = |args: &[&str]| {
        let out = project
            .cmd()
            .env("SRC_DB_URL", pg_url())
            .arg("run")
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert_exit(&out, 0);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = run(&[]);
    assert_eq!(task(&first, "src.recent")["rows_extracted"], 6);
    pg.execute(&format!(
        "INSERT INTO {schema}.events VALUES (8, 'e8', 9.000), (9, 'skip', 1), (10, 'e10', 11.250)"
    ));
    let second = run(&[]);
    assert_eq!(task(&second, "src.recent")["rows_extracted"], 2);
    let rows = || {
        sqlite_rows(
            &project,
            "SELECT id, name, amount FROM d1__src_recent ORDER BY id",
        )
    };
    let expected = [
        "1|e1|1.125",
        "2|e2|2.250",
        "4|e4|4.500",
        "5|e5|5.625",
        "6|e6|6.750",
        "7|e7|7.875",
        "8|e8|9.000",
        "10|e10|11.250",
    ];
    assert_eq!(rows(), expected);

    // The first run's pages, typed again from the lake with no database call.
    pg.execute(&format!("DROP TABLE {schema}.events"));
    pg.execute(&format!(
        "CREATE TABLE {schema}.events (id bigint PRIMARY KEY, name text, amount numeric(10,3))"
    ));
    let run_id = first["run_id"].as_str().expect("run id").to_string();
    let out = project
        .cmd()
        .env("SRC_DB_URL", pg_url())
        .args(["replay", "--run", &run_id, "--json"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let replayed: Value = serde_json::from_slice(&out.stdout).expect("replay record JSON");
    // The table is empty now: six rows can only come from the landed pages.
    assert_eq!(
        task(&replayed, "src.recent")["rows_extracted"],
        6,
        "{replayed}"
    );
    assert_eq!(rows(), expected);
    pg.drop_schemas(&prefix);
}

// ---------------------------------------------------------------- writes during runs

const SEEDED: i64 = 20_000;

/// While `write(n)` commits an insert and an update after the seeded rows, a run is
/// killed mid-extraction and two more run; once the writes stop, one more run makes
/// the D1 table equal `source_rows()` (`id|v`), and a last one reads nothing.
fn converge_under_writes(
    project: &Project,
    write: impl Fn(i64) + Send + 'static,
    source_rows: &dyn Fn() -> Vec<String>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut next = SEEDED + 1;
            while !stop.load(Ordering::Relaxed) {
                write(next);
                next += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            next - SEEDED - 1
        })
    };

    let mut child = Process::new(assert_cmd::cargo::cargo_bin("sluice"))
        .arg("run")
        .current_dir(project.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has landed pages: mid-extraction, before any publish.
    let started = std::time::Instant::now();
    while !project
        .lake_files()
        .iter()
        .any(|f| f.to_string_lossy().contains("raw/src/items"))
    {
        assert!(
            started.elapsed().as_secs() < 60,
            "no page landed in a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed"
    );
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap();
    run_json(project, &[]);
    run_json(project, &[]);
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(
        writes > 10,
        "the writer made only {writes} inserts and updates"
    );

    run_json(project, &[]);
    let source = source_rows();
    let loaded = sqlite_rows(project, "SELECT id, v FROM d1__src_items ORDER BY id");
    assert_eq!(loaded.len(), source.len());
    let differing: Vec<_> = source
        .iter()
        .zip(&loaded)
        .filter(|(s, l)| s != l)
        .take(5)
        .collect();
    assert!(differing.is_empty(), "rows differ: {differing:?}");
    let last = run_json(project, &[]);
    assert_eq!(task(&last, "src.items")["rows_extracted"], 0);
}

#[test]
fn postgres_writes_during_runs_and_a_sigkill_then_reruns_converge_exactly() {
    let prefix = unique_prefix("pgwrites");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    let table = format!("{schema}.items");
    // Seven rows share each cursor value: ties at most page boundaries.
    pg.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {table} (id int PRIMARY KEY, updated_at timestamptz NOT NULL, v int NOT NULL);
         INSERT INTO {table} SELECT g, '2024-01-01'::timestamptz + (g / 7) * interval '1 millisecond', 0
         FROM generate_series(1, {SEEDED}) g;"
    ));
    let project = Project::new(
        &items_pipeline("postgres", &pg_url(), &table, "")
            .replace("batch_size: 4", "batch_size: 500"),
    );
    let writer = Pg::connect();
    let written = table.clone();
    converge_under_writes(
        &project,
        move |n| {
            writer.execute(&format!(
                "INSERT INTO {written} VALUES ({n}, clock_timestamp(), 0);
                 UPDATE {written} SET v = v + 1, updated_at = clock_timestamp() WHERE id = {};",
                (n * 7919) % SEEDED + 1
            ))
        },
        &|| pg.strings(&format!("SELECT id || '|' || v FROM {table} ORDER BY id")),
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn mysql_writes_during_runs_and_a_sigkill_then_reruns_converge_exactly() {
    let prefix = unique_prefix("mywrites");
    let my = My::connect();
    let db = format!("{prefix}src");
    let table = format!("{db}.items");
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
                  UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
    my.query(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};
         CREATE TABLE {table} (id int PRIMARY KEY, updated_at datetime(6) NOT NULL, v int NOT NULL) ENGINE=InnoDB;
         INSERT INTO {table} SELECT n, TIMESTAMPADD(MICROSECOND, (n DIV 7) * 1000, '2024-01-01'), 0 FROM
           (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS n
            FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f) s
         WHERE n BETWEEN 1 AND {SEEDED};"
    ));
    let project = Project::new(
        &items_pipeline("mysql", &mysql_url(), &table, "")
            .replace("batch_size: 4", "batch_size: 500"),
    );
    let writer = My::connect();
    let written = table.clone();
    converge_under_writes(
        &project,
        move |n| {
            writer.query(&format!(
                "INSERT INTO {written} VALUES ({n}, NOW(6), 0);
                 UPDATE {written} SET v = v + 1, updated_at = NOW(6) WHERE id = {};",
                (n * 7919) % SEEDED + 1
            ));
        },
        &|| {
            my.query(&format!(
                "SELECT CONCAT(id, '|', v) FROM {table} ORDER BY id"
            ))
        },
    );
    my.query(&format!("DROP DATABASE {db}"));
}

#[test]
fn a_value_that_does_not_fit_is_quarantined_with_its_page_and_line() {
    let prefix = unique_prefix("pgquarantine");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let schema = format!("{prefix}src");
    // `infinity` is a PostgreSQL timestamp no D1 timestamp holds; NaN no decimal.
    pg.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.every_type (id int PRIMARY KEY, at timestamptz, amount numeric(8,2));
         INSERT INTO {schema}.every_type VALUES (1, '2024-07-01 00:00:00+00', 1.50), (2, 'infinity', 2), (3, now(), 'NaN');"
    ));
    let project = Project::new(&pg_types_pipeline(&schema, "").replace(
        &format!("      no_key:\n        table: {schema}.no_key\n"),
        "",
    ));
    let record = run_json(&project, &[]);
    let every = task(&record, "pg.every");
    assert_eq!(every["rows_loaded"], 1, "{every}");
    assert_eq!(every["rows_quarantined"], 2, "{every}");
    // Pages of two rows: `infinity` is line 2 of the first page, NaN line 1 of the second.
    let quarantined = sqlite_rows(
        &project,
        "SELECT origin, line, reason, raw FROM d1__pg_every__quarantine ORDER BY origin",
    );
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let (infinity, nan) = (&quarantined[0], &quarantined[1]);
    assert!(
        infinity.contains("p00001.ndjson.zst|2|field `at`")
            && infinity.contains(r#""at":"infinity""#),
        "{infinity}"
    );
    assert!(
        nan.contains("p00002.ndjson.zst|1|field `amount`") && nan.contains(r#""amount":"NaN""#),
        "{nan}"
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn discover_reads_the_mariadb_catalog() {
    let my = My::connect();
    let table = format!("{}orders", unique_prefix("mydiscover"));
    my.query(&format!(
        "USE test; DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id bigint PRIMARY KEY, paid tinyint(1), amount decimal(12,2), doc json, modified_at datetime(6) NOT NULL);
         INSERT INTO {table} VALUES (1, 1, 9.99, '{{\"a\": 1}}', '2024-07-01 10:00:00')"
    ));
    let pipeline = format!(
        "name: rel\nlake: ./lake\nsources:\n  my:\n    type: mysql\n    url: {}\n",
        mysql_url()
    );
    let project = Project::new(&pipeline);
    let out = project
        .cmd()
        .args(["discover", "my", &table, "--write"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let listing = stdout(&out);
    assert!(
        listing.contains("(primary key: id; suggested sync: incremental, cursor: modified_at)"),
        "{listing}"
    );
    for (column, ty) in [
        ("paid", "boolean"),
        ("amount", "numeric(12,2)"),
        ("doc", "json"),
        ("modified_at", "timestamp"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(column) && l.trim_end().ends_with(ty)),
            "{column} {ty}: {listing}"
        );
    }
    let written = std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap();
    assert_eq!(
        written,
        format!("{pipeline}    streams:\n      {table}:\n        table: test.{table}\n        sync: incremental\n        cursor: modified_at\n")
    );
    let record = run_json(&project, &[]);
    assert_eq!(task(&record, &format!("my.{table}"))["rows_extracted"], 1);
    my.query(&format!("DROP TABLE test.{table}"));
}

#[test]
fn a_database_that_does_not_answer_fails_its_runs_but_not_plan_or_validate() {
    // Nothing listens on port 1: the connection is refused.
    let project = Project::new(
        "name: rel\nlake: ./lake\nsources:\n  db:\n    type: postgres\n    url: postgres://postgres@127.0.0.1:1/test\n    streams:\n      items: { table: public.items, sync: incremental, cursor: updated_at, primary_key: [id] }\n",
    );
    let plan = project.cmd().arg("plan").output().unwrap();
    assert_exit(&plan, 0);
    assert!(stdout(&plan).contains("db.items"), "{}", stdout(&plan));
    let validate = project.cmd().arg("validate").output().unwrap();
    assert_exit(&validate, 0);
    assert!(
        stdout(&validate).contains("did not answer"),
        "validate says the columns were not checked: {}",
        stdout(&validate)
    );
    let connections = project
        .cmd()
        .args(["validate", "--connections"])
        .output()
        .unwrap();
    assert_exit(&connections, 6);
    let run = project.run(&["--json"]);
    assert_ne!(run.status.code(), Some(0));
    let text = format!("{}{}", stdout(&run), stderr(&run));
    assert!(text.contains("did not answer"), "{text}");
}
