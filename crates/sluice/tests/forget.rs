//! `sluice forget` (issue 15): one person is erased from the lake's D1/D2 tables and
//! quarantines and from PostgreSQL, other rows stay byte for byte, and the audit log
//! records the erasure without the subject in clear.

mod common;

use common::*;

const PII_KEY: &str = "forget-test-pii-key-0123456789abcdef-xyz";

fn query_csv(project: &Project, sql: &str) -> String {
    let out = project
        .cmd()
        .args(["query", "--unmasked", "--format", "csv", sql])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    stdout(&out)
}

#[test]
fn forget_removes_the_subject_everywhere_and_leaves_the_others_untouched() {
    let pg = Pg::connect();
    let prefix = unique_prefix("forget");
    let project = Project::new(&format!(
        r#"name: shop
lake: ./lake
destination:
  type: postgres
  url: {url}
  schema_prefix: {prefix}
sources:
  shop:
    type: files
    streams:
      customers:
        path: data/customers.ndjson
        columns: {{ customer_id: text, email: text, visits: bigint }}
pii:
  key: {PII_KEY}
  columns:
    "*.email": hash
"#,
        url = pg_url()
    ));
    project.write(
        "data/customers.ndjson",
        concat!(
            "{\"customer_id\": \"C-1\", \"email\": \"Ann@Example.com\", \"visits\": 3}\n",
            "{\"customer_id\": \"C-2\", \"email\": \"bob@example.com\", \"visits\": 5}\n",
            "{\"customer_id\": \"C-3\", \"email\": \"cy@example.com\", \"visits\": 7}\n",
            "{\"customer_id\": \"C-4\", \"email\": \"Ann@Example.com\", \"visits\": \"lots\"}\n",
            "{\"customer_id\": \"C-5\", \"email\": \"dee@example.com\", \"visits\": \"many\"}\n",
        ),
    );
    project.write(
        "models/d2a/customers_clean.sql",
        "SELECT customer_id, email AS email_hash, visits FROM d1.shop_customers",
    );
    assert_exit(&project.run(&[]), 0);

    let d1 = format!("\"{prefix}d1\".shop_customers");
    let d2a = format!("\"{prefix}d2a\".customers_clean");
    let d1_quarantine = format!("\"{prefix}d1\".shop_customers__quarantine");
    let checksum = |table: &str| {
        pg.strings(&format!(
            "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t \
             WHERE customer_id <> 'C-1'"
        ))
    };
    let (d1_before, d2a_before) = (checksum(&d1), checksum(&d2a));
    assert_eq!(pg.scalar_i64(&format!("SELECT count(*) FROM {d1}")), 3);
    assert_eq!(
        pg.scalar_i64(&format!("SELECT count(*) FROM {d1_quarantine}")),
        2
    );
    let hash = pg.strings(&format!(
        "SELECT email_hash FROM {d2a} WHERE customer_id = 'C-1'"
    ));
    assert_eq!(hash.len(), 1);
    let hash = hash[0].clone();
    assert_eq!(hash.len(), 64);

    let out = project
        .cmd()
        .args(["forget", "--subject", "ann@example.com"])
        .output()
        .unwrap();
    assert_exit(&out, 0);

    // The warehouse: no row of hers, the others as they were.
    assert_eq!(
        pg.strings(&format!("SELECT customer_id FROM {d1} ORDER BY 1")),
        ["C-2", "C-3"]
    );
    assert_eq!(
        pg.strings(&format!("SELECT customer_id FROM {d2a} ORDER BY 1")),
        ["C-2", "C-3"]
    );
    assert_eq!(checksum(&d1), d1_before);
    assert_eq!(checksum(&d2a), d2a_before);
    let raws = pg.strings(&format!("SELECT raw FROM {d1_quarantine}"));
    assert_eq!(raws.len(), 1, "{raws:?}");
    assert!(
        !raws[0].contains(&hash) && raws[0].contains("C-5"),
        "{raws:?}"
    );

    // The lake: its tables and quarantines, read in clear.
    assert_eq!(
        query_csv(
            &project,
            "SELECT customer_id, email FROM d1.shop_customers ORDER BY 1"
        ),
        "customer_id,email\nC-2,bob@example.com\nC-3,cy@example.com\n"
    );
    assert_eq!(
        query_csv(
            &project,
            "SELECT customer_id FROM d2a.customers_clean ORDER BY 1"
        ),
        "customer_id\nC-2\nC-3\n"
    );
    let quarantined = query_csv(&project, "SELECT raw FROM quarantine.d1__shop_customers");
    assert!(
        !quarantined.to_lowercase().contains("ann@example.com") && quarantined.contains("C-5"),
        "{quarantined}"
    );

    // The audit log has the erasure, by hash only.
    let out = project.cmd().args(["audit", "show"]).output().unwrap();
    assert_exit(&out, 0);
    let log = stdout(&out);
    assert!(log.contains("\"action\":\"forget\""), "{log}");
    assert!(!log.to_lowercase().contains("ann@example.com"), "{log}");
    assert_exit(
        &project.cmd().args(["audit", "verify"]).output().unwrap(),
        0,
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn forget_also_erases_from_sqlite() {
    let project = Project::new(&format!(
        r#"name: shop
lake: ./lake
sources:
  shop:
    type: files
    streams:
      customers:
        path: data/customers.ndjson
        columns: {{ customer_id: text, email: text, visits: bigint }}
pii:
  key: {PII_KEY}
  columns:
    "*.email": hash
"#
    ));
    project.write(
        "data/customers.ndjson",
        concat!(
            "{\"customer_id\": \"C-1\", \"email\": \"ann@example.com\", \"visits\": 3}\n",
            "{\"customer_id\": \"C-2\", \"email\": \"bob@example.com\", \"visits\": 5}\n",
            "{\"customer_id\": \"C-3\", \"email\": \"ann@example.com\", \"visits\": \"x\"}\n",
        ),
    );
    project.write(
        "models/d2a/customers_clean.sql",
        "SELECT customer_id, email AS email_hash FROM d1.shop_customers",
    );
    assert_exit(&project.run(&[]), 0);
    let out = project
        .cmd()
        .args(["forget", "--subject", " ANN@example.com "])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let db = project.sqlite();
    let ids = |table: &str| -> Vec<String> {
        db.prepare(&format!("SELECT customer_id FROM {table} ORDER BY 1"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(ids("d1__shop_customers"), ["C-2"]);
    assert_eq!(ids("d2a__customers_clean"), ["C-2"]);
    let quarantined: i64 = db
        .query_row(
            "SELECT count(*) FROM d1__shop_customers__quarantine",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(quarantined, 0);
    assert_eq!(
        query_csv(&project, "SELECT customer_id FROM d1.shop_customers"),
        "customer_id\nC-2\n"
    );
}

/// Every landed page of the lake, decompressed, as text.
fn landed_pages(project: &Project) -> Vec<String> {
    project
        .lake_files()
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains("/raw/") && p.extension().is_some_and(|e| e == "zst")
        })
        .map(|p| {
            let bytes = zstd::stream::decode_all(std::fs::File::open(&p).unwrap()).unwrap();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect()
}

#[test]
fn forget_removes_the_subject_from_landed_api_pages() {
    use chrono::{Duration, Utc};
    use sluice_sandbox::{credentials, SandboxOptions};
    let today = Utc::now().date_naive();
    let project = Project::new(&format!(
        r#"name: app
lake: ./lake
sources:
  app:
    type: clevertap
    base_url: ${{SANDBOX_URL:-http://127.0.0.1:9}}
    account_id: {account}
    passcode: {passcode}
    start_date: "{start}"
    lookback_days: 1
    streams:
      profiles: {{}}
pii:
  key: {PII_KEY}
"#,
        account = credentials::CLEVERTAP_ACCOUNT_ID,
        passcode = credentials::CLEVERTAP_PASSCODE,
        start = today - Duration::days(2),
    ));
    let run_id = {
        let sandbox = TestSandbox::start(SandboxOptions::new(7, 1, today));
        let out = project
            .cmd()
            .env("SANDBOX_URL", sandbox.url())
            .args(["run", "--json", "--today", &today.to_string()])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        record["run_id"].as_str().unwrap().to_string()
    };
    let emails = query_csv(
        &project,
        "SELECT email FROM d1.app_profiles WHERE email IS NOT NULL ORDER BY email",
    );
    let emails: Vec<&str> = emails.lines().skip(1).collect();
    assert!(emails.len() > 2, "{emails:?}");
    let subject = emails[0].to_string();
    let others = emails.iter().filter(|e| **e != subject).count();
    assert!(landed_pages(&project).iter().any(|p| p.contains(&subject)));

    let out = project
        .cmd()
        .args(["forget", "--subject", &subject])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    for page in landed_pages(&project) {
        assert!(
            !page.to_lowercase().contains(&subject.to_lowercase()),
            "{page}"
        );
    }
    let after = query_csv(
        &project,
        "SELECT email FROM d1.app_profiles WHERE email IS NOT NULL ORDER BY email",
    );
    assert_eq!(after.lines().skip(1).count(), others, "{after}");
    assert!(!after.contains(&subject));

    // Replaying the run from its rewritten pages does not bring the person back.
    let out = project
        .cmd()
        .args(["replay", "--run", &run_id])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let replayed = query_csv(
        &project,
        "SELECT email FROM d1.app_profiles WHERE email IS NOT NULL ORDER BY email",
    );
    assert!(!replayed.contains(&subject), "{replayed}");
    assert_eq!(replayed.lines().skip(1).count(), others, "{replayed}");
}
