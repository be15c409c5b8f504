//! Security properties of the CLI, end to end with the real binary: `sluice query`
//! shows personal columns only through the `pii:` policy (even when the sources can
//! no longer be built), its SQL can only read, and there is no raw D1 to read around
//! the policy. The data comes from the CleverTap sandbox over HTTP.

mod common;

use chrono::{Duration, NaiveDate, Utc};
use common::*;
use sluice_sandbox::{credentials, SandboxOptions};

const PII_KEY: &str = "security-test-pii-key-0123456789abcdef";

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// CleverTap profiles (email, phone, … marked PII by the connector); `passcode_line`
/// lets a test remove the credential after the run.
fn pipeline(passcode_line: &str) -> String {
    format!(
        r#"name: secure
lake: ./lake
sources:
  app:
    type: clevertap
    base_url: ${{SANDBOX_URL:-http://127.0.0.1:9}}
    account_id: {account}
    {passcode_line}
    start_date: "{start}"
    lookback_days: 1
    streams:
      profiles: {{}}
pii:
  key: {PII_KEY}
  columns:
    "*.PHONE": mask_last4
"#,
        account = credentials::CLEVERTAP_ACCOUNT_ID,
        start = today() - Duration::days(2),
    )
}

fn query(project: &Project, sql: &str) -> std::process::Output {
    project
        .cmd()
        .args(["query", "--format", "csv", sql])
        .output()
        .unwrap()
}

/// An email-shaped value anywhere in `text`.
fn has_email(text: &str) -> bool {
    text.split(|c: char| c == ',' || c.is_whitespace() || c == '"')
        .any(|w| w.contains('@') && w.contains('.'))
}

#[test]
fn query_shows_personal_columns_only_through_the_policy_and_only_reads() {
    let passcode = format!("passcode: {}", credentials::CLEVERTAP_PASSCODE);
    let project = Project::new(&pipeline(&passcode));
    {
        let sandbox = TestSandbox::start(SandboxOptions::new(7, 1, today()));
        let out = project
            .cmd()
            .env("SANDBOX_URL", sandbox.url())
            .args(["run", "--today", &today().to_string()])
            .output()
            .unwrap();
        assert_exit(&out, 0);
    }

    // The landed data does hold clear emails (so the checks below can fail).
    let clear = query_unmasked(&project);
    assert!(has_email(&clear), "no clear email landed:\n{clear}");

    let check_masked = |project: &Project| {
        let out = query(project, "SELECT email, phone FROM d1.app_profiles");
        assert_exit(&out, 0);
        let text = stdout(&out);
        assert!(text.lines().count() > 2, "{text}");
        assert!(!has_email(&text), "a clear email was printed:\n{text}");
        for line in text.lines().skip(1) {
            let (email, phone) = line.split_once(',').unwrap();
            assert!(
                email.is_empty()
                    || email.len() == 64 && email.chars().all(|c| c.is_ascii_hexdigit()),
                "email is not a hash: {line}"
            );
            // `*.PHONE` matches `phone`: rule globs ignore case.
            assert!(
                phone.is_empty() || phone.contains("****"),
                "phone is not masked: {line}"
            );
        }
    };
    check_masked(&project);

    // Raw D1 is not reachable by name.
    let out = query(&project, "SELECT email FROM d1_raw.app_profiles");
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(!has_email(&stdout(&out)));

    // SQL only reads: no COPY to a file, no external table over any file, no SET.
    let copy = project.path().join("copied.csv");
    let out = query(
        &project,
        &format!(
            "COPY (SELECT * FROM d1.app_profiles) TO '{}' STORED AS CSV",
            copy.display()
        ),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("not supported"), "{}", stderr(&out));
    assert!(!copy.exists(), "COPY wrote a file");
    let out = query(
        &project,
        "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/hostname'",
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("not supported"), "{}", stderr(&out));
    let out = query(&project, "SET datafusion.execution.batch_size = 1");
    assert_ne!(out.status.code(), Some(0));

    // Without the credential the source cannot be built to say which columns are
    // personal: the schema registry still knows, and the policy still applies.
    std::fs::write(project.path().join("pipeline.yaml"), pipeline("")).unwrap();
    check_masked(&project);
}

fn query_unmasked(project: &Project) -> String {
    let out = project
        .cmd()
        .args([
            "query",
            "--unmasked",
            "--format",
            "csv",
            "SELECT email FROM d1.app_profiles",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    stdout(&out)
}

#[test]
fn lake_state_and_warehouse_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let project = Project::new(
        r#"name: private
lake: ./lake
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/*.ndjson
        write_mode: append
"#,
    );
    project.write("data/a.ndjson", orders_ndjson(1, 20));
    assert_exit(&project.run(&[]), 0);
    // Every file and folder sluice created: lake pages, D1 Parquet, state, the warehouse.
    let mut created = vec![project.path().join("lake")];
    let mut stack = created.clone();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            created.push(path);
        }
    }
    assert!(
        created
            .iter()
            .any(|p| p.to_string_lossy().contains("/raw/")),
        "{created:?}"
    );
    created.push(project.path().join("warehouse.db"));
    for path in &created {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{} is {mode:o}", path.display());
    }
}

#[test]
fn a_short_pii_key_is_a_config_error_naming_the_key() {
    let project = Project::new(
        "name: shortkey\nlake: ./lake\npii:\n  key: ${PII_HMAC_KEY}\n  columns: { \"*.email\": hash }\n",
    );
    for key in ["", "changeme", "0123456789abcdef0123456789abcdef"] {
        let out = project
            .cmd()
            .env("PII_HMAC_KEY", key)
            .arg("validate")
            .output()
            .unwrap();
        assert_exit(&out, 3);
        let err = stderr(&out);
        assert!(err.contains("pii.key"), "{key:?}: {err}");
        assert!(err.contains("at least 32"), "{key:?}: {err}");
        if !key.is_empty() {
            assert!(!err.contains(key), "the key was echoed: {err}");
        }
    }
    let out = project
        .cmd()
        .env("PII_HMAC_KEY", PII_KEY)
        .arg("validate")
        .output()
        .unwrap();
    assert_exit(&out, 0);
}
