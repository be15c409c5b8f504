//! Lake encryption at rest (issue 15), through the CLI: a pipeline on an encrypted
//! lake loads exactly what a plain one does, no lake byte holds a known value in
//! clear, an altered or swapped object is named by `sluice lake verify` and fails a
//! replay, and a master-key rotation leaves the old key opening nothing.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use sluice_sandbox::SandboxOptions;

/// A value that appears in the source data only, so finding it in the lake means
/// the lake holds it in clear (it is also the name of a column, so the plain lake's
/// schema registry and Parquet footers carry it verbatim).
const CANARY: &str = "canaryzq7xw";

fn files_pipeline(encryption: &str) -> String {
    format!(
        r#"name: shop
lake: ./lake
{encryption}
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: {{ order_id: bigint, amount: "numeric(12,2)", order_date: date, {CANARY}: text }}
        primary_key: [order_id]
        partition_column: order_date
        write_mode: overwrite_partitions
"#
    )
}

const KEY_SETTING: &str = "lake_encryption:\n  master_key: ${file:lake.key}";

fn orders(project: &Project) {
    let mut rows = String::new();
    for id in 1..=3000u64 {
        rows.push_str(&format!(
            "{{\"order_id\": {id}, \"amount\": \"{}.{:02}\", \"order_date\": \"2024-07-{:02}\", \"{CANARY}\": \"{CANARY}-{id}\"}}\n",
            id % 300,
            id % 100,
            1 + id % 5
        ));
    }
    // One record that does not fit: quarantined with its raw text.
    rows.push_str(&format!(
        "{{\"order_id\": 9999, \"amount\": \"lots\", \"order_date\": \"2024-07-01\", \"{CANARY}\": \"{CANARY}-bad\"}}\n"
    ));
    project.write("data/orders/a.ndjson", rows);
    project.write(
        "models/d2a/daily_totals.sql",
        "SELECT order_date, count(*) AS orders, sum(amount) AS total FROM d1.shop_orders GROUP BY order_date",
    );
}

/// Every user table of the SQLite warehouse as sorted text rows, without the
/// columns that differ between any two runs (run ids, load times).
fn warehouse(project: &Project) -> Vec<(String, Vec<String>)> {
    let db = project.sqlite();
    let mut tables: Vec<String> = db
        .prepare("select name from sqlite_master where type = 'table' and name not like '\\_sluice%' escape '\\' order by name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables.sort();
    let varying = |column: &str| {
        column.starts_with("_sluice") || ["run_id", "quarantined_at", "loaded_at"].contains(&column)
    };
    tables
        .into_iter()
        .map(|table| {
            let mut stmt = db.prepare(&format!("select * from \"{table}\"")).unwrap();
            let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
            let mut rows: Vec<String> = stmt
                .query_map([], |row| {
                    let mut cells = Vec::new();
                    for (i, name) in names.iter().enumerate() {
                        if varying(name) {
                            continue;
                        }
                        let value: rusqlite::types::Value = row.get(i)?;
                        let text = match value {
                            rusqlite::types::Value::Text(t) if t.starts_with("enc:") => {
                                "enc:*".to_string()
                            }
                            // Float sums depend on the order rows are added in.
                            rusqlite::types::Value::Real(f) => format!("Real({f:.9e})"),
                            other => format!("{other:?}"),
                        };
                        cells.push(format!("{name}={text}"));
                    }
                    Ok(cells.join("|"))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            rows.sort();
            (table, rows)
        })
        .collect()
}

/// The warehouse's tables without quarantines.
fn published(project: &Project) -> Vec<(String, Vec<String>)> {
    warehouse(project)
        .into_iter()
        .filter(|(table, _)| !table.ends_with("__quarantine"))
        .collect()
}

/// Asserts two warehouses are equal, naming the first table and rows that differ.
fn assert_same(actual: &[(String, Vec<String>)], expected: &[(String, Vec<String>)]) {
    let names = |w: &[(String, Vec<String>)]| w.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(actual), names(expected), "tables");
    for ((table, rows), (_, want)) in actual.iter().zip(expected) {
        let extra: Vec<_> = rows.iter().filter(|r| !want.contains(r)).take(3).collect();
        let missing: Vec<_> = want.iter().filter(|r| !rows.contains(r)).take(3).collect();
        assert!(
            rows.len() == want.len() && extra.is_empty() && missing.is_empty(),
            "{table}: {} rows, expected {}; unexpected {extra:?}; missing {missing:?}",
            rows.len(),
            want.len()
        );
    }
}

/// Whether any file of the lake holds `needle`, as stored or once zstd-decoded.
fn lake_holds(project: &Project, needle: &str) -> Option<PathBuf> {
    project.lake_files().into_iter().find(|path| {
        let bytes = std::fs::read(path).unwrap();
        let found = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
        found(&bytes) || zstd::stream::decode_all(bytes.as_slice()).is_ok_and(|d| found(&d))
    })
}

fn lake_cmd(project: &Project, args: &[&str]) -> std::process::Output {
    project.cmd().arg("lake").args(args).output().unwrap()
}

fn relative(project: &Project, path: &Path) -> String {
    path.strip_prefix(project.path().join("lake"))
        .unwrap()
        .display()
        .to_string()
}

fn run_id(project: &Project) -> String {
    let out = project.cmd().args(["runs", "--json"]).output().unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    let runs: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let first = runs
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or(runs);
    first["run_id"].as_str().unwrap().to_string()
}

#[test]
fn an_encrypted_lake_loads_the_same_rows_holds_no_clear_byte_and_names_tampering() {
    let plain = Project::new(&files_pipeline(""));
    orders(&plain);
    assert_exit(&plain.run(&[]), 0);

    let sealed = Project::new(&files_pipeline(KEY_SETTING));
    sealed.write("lake.key", "11".repeat(32));
    orders(&sealed);
    assert_exit(&sealed.run(&[]), 0);

    // The same warehouse, row for row.
    let expected = warehouse(&plain);
    assert!(expected
        .iter()
        .any(|(t, rows)| t == "d1__shop_orders" && rows.len() == 3000));
    assert!(expected
        .iter()
        .any(|(t, rows)| t.contains("daily_totals") && rows.len() == 5));
    assert_same(&warehouse(&sealed), &expected);

    // The plain lake holds the canary (so this check can fail); the encrypted one
    // holds it nowhere: no page, Parquet file, quarantine or state object.
    assert!(lake_holds(&plain, CANARY).is_some());
    assert_eq!(lake_holds(&sealed, CANARY), None);
    let files = sealed.lake_files();
    assert!(files.iter().any(|p| p.to_string_lossy().ends_with(".dek")));

    // Reads go through the key: the lake's tables and run history read as usual.
    let out = sealed
        .cmd()
        .args([
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM d1.shop_orders",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "n\n3000\n");
    let run = run_id(&sealed);

    let out = lake_cmd(&sealed, &["verify"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains(", 0 failed"), "{}", stdout(&out));

    // Without the key: refused, naming the setting.
    std::fs::write(sealed.path().join("pipeline.yaml"), files_pipeline("")).unwrap();
    let out = sealed.cmd().args(["runs"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("is encrypted"), "{}", stderr(&out));
    assert!(stderr(&out).contains("lake_encryption"), "{}", stderr(&out));
    // With a wrong key: refused, naming both key ids.
    std::fs::write(
        sealed.path().join("pipeline.yaml"),
        files_pipeline(KEY_SETTING),
    )
    .unwrap();
    sealed.write("lake.key", "22".repeat(32));
    let out = sealed.cmd().args(["runs"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("configured master key is"),
        "{}",
        stderr(&out)
    );
    sealed.write("lake.key", "11".repeat(32));

    // One flipped byte in a D1 file: verify names it, a query over it fails loudly.
    let parquet = files
        .iter()
        .find(|p| {
            p.to_string_lossy().contains("/d1/") && p.extension().is_some_and(|e| e == "parquet")
        })
        .unwrap()
        .clone();
    let original = std::fs::read(&parquet).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x01;
    std::fs::write(&parquet, &flipped).unwrap();
    let out = lake_cmd(&sealed, &["verify"]);
    assert_exit(&out, 4);
    let report = stdout(&out);
    assert!(
        report.contains(&format!("FAILED  {}", relative(&sealed, &parquet))),
        "{report}"
    );
    assert!(report.contains("does not authenticate"), "{report}");
    assert_eq!(report.matches("FAILED").count(), 1, "{report}");
    let out = sealed
        .cmd()
        .args([
            "query",
            "--format",
            "csv",
            "SELECT sum(amount) FROM d1.shop_orders",
        ])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("does not authenticate"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&parquet, &original).unwrap();

    // A landed page swapped, with its key, onto another page's path: named too.
    let mut pages: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("/raw/") && p.to_string_lossy().ends_with(".zst"))
        .collect();
    pages.sort();
    let page = pages[0].clone();
    let decoy_dir = sealed.path().join("decoy");
    std::fs::create_dir_all(&decoy_dir).unwrap();
    let decoy = decoy_dir.join("page.json.zst");
    std::fs::copy(&page, &decoy).unwrap();
    let quarantine = files
        .iter()
        .find(|p| {
            p.to_string_lossy().contains("/quarantine/") && !p.to_string_lossy().ends_with(".dek")
        })
        .unwrap()
        .clone();
    let quarantine_original = std::fs::read(&quarantine).unwrap();
    let page_key = files
        .iter()
        .find(|p| {
            let s = p.to_string_lossy();
            s.starts_with(&*page.to_string_lossy()) && s.ends_with(".dek")
        })
        .unwrap();
    let key_id = page_key
        .to_string_lossy()
        .rsplit('.')
        .nth(1)
        .unwrap()
        .to_string();
    std::fs::copy(&page, &quarantine).unwrap();
    let swapped_key = PathBuf::from(format!("{}.{key_id}.dek", quarantine.display()));
    std::fs::copy(page_key, &swapped_key).unwrap();
    let out = lake_cmd(&sealed, &["verify"]);
    assert_exit(&out, 4);
    let report = stdout(&out);
    assert!(
        report.contains(&format!(
            "FAILED  {}: its data key does not authenticate for this path",
            relative(&sealed, &quarantine)
        )),
        "{report}"
    );
    std::fs::write(&quarantine, &quarantine_original).unwrap();
    std::fs::remove_file(&swapped_key).unwrap();

    // A replay reads every landed page back: fine while intact, loud when not.
    let out = sealed
        .cmd()
        .args(["replay", "--run", &run])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let mut cut = std::fs::read(&page).unwrap();
    cut.truncate(cut.len() - 1);
    std::fs::write(&page, &cut).unwrap();
    let out = sealed
        .cmd()
        .args(["replay", "--run", &run, "--json"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("truncated"), "{said}");
    std::fs::copy(&decoy, &page).unwrap();
    // (A replay quarantines its rejects again, so quarantines are compared only before.)
    assert_same(&published(&sealed), &published(&plain));

    // Rotation: every data key re-wrapped, no data object rewritten.
    let data_before: Vec<(PathBuf, Vec<u8>)> = sealed
        .lake_files()
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".dek") && !p.ends_with("_encryption.json"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    sealed.write("new.key", "33".repeat(32));
    let out = lake_cmd(&sealed, &["rotate-key", "--new-key-file", "new.key"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("re-wrapped"), "{}", stdout(&out));
    for (path, bytes) in &data_before {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            bytes,
            "{} was rewritten",
            path.display()
        );
    }
    // The old key opens nothing now…
    let out = sealed
        .cmd()
        .args(["replay", "--run", &run])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("master key"), "{}", stderr(&out));
    // …the new one everything.
    std::fs::copy(
        sealed.path().join("new.key"),
        sealed.path().join("lake.key"),
    )
    .unwrap();
    let out = sealed
        .cmd()
        .args(["replay", "--run", &run])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_same(&published(&sealed), &published(&plain));
    let out = lake_cmd(&sealed, &["verify"]);
    assert_exit(&out, 0);
}

#[test]
fn encryption_settings_are_checked_where_they_are_written() {
    // A short key: a config error at its line.
    let project = Project::new(&files_pipeline(KEY_SETTING));
    project.write("lake.key", "too-short");
    orders(&project);
    let out = project.run(&[]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("pipeline.yaml:4"), "{}", stderr(&out));
    assert!(stderr(&out).contains("at least 32"), "{}", stderr(&out));

    // A command that only reads the lake still needs the key's variable, and says so.
    std::fs::write(
        project.path().join("pipeline.yaml"),
        files_pipeline("lake_encryption:\n  master_key: ${SLUICE_TEST_UNSET_LAKE_KEY}"),
    )
    .unwrap();
    let out = project.cmd().args(["runs"]).output().unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("SLUICE_TEST_UNSET_LAKE_KEY is not set"),
        "{}",
        stderr(&out)
    );

    // A key command that fails: its message, at `key_command`.
    std::fs::write(
        project.path().join("pipeline.yaml"),
        files_pipeline(
            "lake_encryption:\n  key_command: [sh, -c, \"echo vault is sealed >&2; exit 2\"]",
        ),
    )
    .unwrap();
    let out = project.run(&[]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("vault is sealed"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lake_encryption.key_command"),
        "{}",
        stderr(&out)
    );

    // A key command that prints the key: the lake is encrypted with it.
    std::fs::write(
        project.path().join("pipeline.yaml"),
        files_pipeline(&format!(
            "lake_encryption:\n  key_command: [printf, \"{}\"]",
            "ab".repeat(32)
        )),
    )
    .unwrap();
    assert_exit(&project.run(&[]), 0);
    assert!(project.path().join("lake/_encryption.json").exists());
    assert_eq!(lake_holds(&project, CANARY), None);

    // A plain lake with data cannot be switched to encrypted in place.
    let plain = Project::new(&files_pipeline(""));
    orders(&plain);
    assert_exit(&plain.run(&[]), 0);
    std::fs::write(
        plain.path().join("pipeline.yaml"),
        files_pipeline(KEY_SETTING),
    )
    .unwrap();
    plain.write("lake.key", "11".repeat(32));
    let out = plain.run(&[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("holds unencrypted objects"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_example_pipeline_on_an_encrypted_lake_matches_a_plain_one() {
    let today = chrono::Utc::now().date_naive();
    let sandbox = TestSandbox::start(SandboxOptions::new(7, 1, today));
    let run = |encrypted: bool| {
        let project = example_project(&sandbox.url());
        if encrypted {
            let text = std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap();
            let text = text.replacen(
                "lake: ./lake\n",
                "lake: ./lake\nlake_encryption: { master_key: \"${LAKE_KEY}\" }\n",
                1,
            );
            std::fs::write(project.path().join("pipeline.yaml"), text).unwrap();
        }
        let out = project
            .cmd()
            .env("LAKE_KEY", "5f".repeat(32))
            .args(["run", "--today", &today.to_string()])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        project
    };
    let plain = run(false);
    let sealed = run(true);
    let expected = warehouse(&plain);
    assert!(
        expected.len() > 8,
        "{:?}",
        expected.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    assert_same(&warehouse(&sealed), &expected);

    // Landed CleverTap profile pages hold emails in the plain lake, none in the encrypted one.
    let email = {
        let db = plain.sqlite();
        let email: String = db
            .query_row(
                "select email from d1__app_profiles where email like '%@%' limit 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        email
    };
    assert!(lake_holds(&plain, &email).is_some());
    assert_eq!(lake_holds(&sealed, &email), None);
    let out = sealed
        .cmd()
        .env("LAKE_KEY", "5f".repeat(32))
        .args(["lake", "verify"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
}
