//! Who can read personal data in the warehouse (issue 15, defect 1), against a real
//! PostgreSQL: schema `d1` (clear personal data) and `_sluice` are closed but to
//! `destination.d1_readers`; `d2a`/`d2b` are readable by `destination.readers`; the
//! `raw` records of D1 quarantines are stored as the PII policy shows them.

mod common;

use common::*;

const PII_KEY: &str = "warehouse-access-test-key-0123456789abcdef";

fn pipeline(prefix: &str, viewer: &str, analyst: &str) -> String {
    format!(
        r#"name: shop
lake: ./lake
destination:
  type: postgres
  url: {url}
  schema_prefix: {prefix}
  readers: [{viewer}]
  d1_readers: [{analyst}]
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
    )
}

/// Roles created for one test, dropped (with what they own or were granted) at the end.
struct Roles<'a> {
    pg: &'a Pg,
    names: Vec<String>,
}

impl<'a> Roles<'a> {
    fn create(pg: &'a Pg, names: &[&str]) -> Roles<'a> {
        let names: Vec<String> = names
            .iter()
            .map(|n| format!("sluice_{n}_{}", std::process::id()))
            .collect();
        for name in &names {
            pg.execute(&format!("DROP ROLE IF EXISTS {name}; CREATE ROLE {name}"));
        }
        Roles { pg, names }
    }
}

impl Drop for Roles<'_> {
    fn drop(&mut self) {
        let _ = self.pg.try_strings("RESET ROLE");
        for name in &self.names {
            let _ = self
                .pg
                .try_strings(&format!("DROP OWNED BY {name} CASCADE"));
            let _ = self.pg.try_strings(&format!("DROP ROLE IF EXISTS {name}"));
        }
    }
}

#[test]
fn d1_is_closed_but_to_d1_readers_d2_is_open_to_readers_and_quarantine_raw_is_policed() {
    let pg = Pg::connect();
    let prefix = unique_prefix("access");
    let roles = Roles::create(&pg, &["viewer", "analyst", "stranger"]);
    let (viewer, analyst, stranger) = (&roles.names[0], &roles.names[1], &roles.names[2]);

    let project = Project::new(&pipeline(&prefix, viewer, analyst));
    project.write(
        "data/customers.ndjson",
        concat!(
            "{\"customer_id\": \"C-1\", \"email\": \"ann@example.com\", \"visits\": 3}\n",
            "{\"customer_id\": \"C-2\", \"email\": \"bob@example.com\", \"visits\": 5}\n",
            "{\"customer_id\": \"C-3\", \"email\": \"cy@example.com\", \"visits\": \"lots\"}\n",
        ),
    );
    project.write(
        "models/d2a/customers_clean.sql",
        "SELECT customer_id, email AS email_hash, visits FROM d1.shop_customers",
    );
    project.write(
        "models/d2b/visits_total.sql",
        "SELECT sum(visits) AS visits FROM d2a.customers_clean",
    );
    // A grant made by hand to a role not listed is taken back: D1 stays closed.
    pg.execute(&format!(
        "CREATE SCHEMA \"{prefix}d1\"; GRANT USAGE ON SCHEMA \"{prefix}d1\" TO {stranger}"
    ));
    let out = project.run(&[]);
    assert_exit(&out, 0);

    let d1 = format!("\"{prefix}d1\".shop_customers");
    let d1_quarantine = format!("\"{prefix}d1\".shop_customers__quarantine");
    let d2a = format!("\"{prefix}d2a\".customers_clean");
    let d2b = format!("\"{prefix}d2b\".visits_total");
    let ledger = format!("\"{prefix}_sluice\".loads");

    // D1 does hold the clear email (so the refusals below mean something).
    assert_eq!(
        pg.strings(&format!("SELECT email FROM {d1} ORDER BY 1")),
        vec!["ann@example.com".to_string(), "bob@example.com".into()]
    );
    // The quarantined record is in the warehouse, its email hashed like the column.
    let raw = pg.strings(&format!("SELECT raw FROM {d1_quarantine}"));
    assert_eq!(raw.len(), 1, "{raw:?}");
    assert!(
        !raw[0].contains("cy@example.com"),
        "clear email: {}",
        raw[0]
    );
    let record: serde_json::Value = serde_json::from_str(&raw[0]).unwrap();
    let hashed = record["email"].as_str().unwrap_or_default();
    assert!(
        hashed.len() == 64 && hashed.chars().all(|c| c.is_ascii_hexdigit()),
        "email is not a hash: {}",
        raw[0]
    );
    assert_eq!(record["customer_id"], "C-3", "{}", raw[0]);

    let as_role = |role: &str, sql: &str| {
        pg.execute(&format!("SET ROLE {role}"));
        let result = pg.try_strings(sql);
        pg.execute("RESET ROLE");
        result
    };
    let denied = |result: Result<Vec<String>, String>, what: &str| match result {
        Err(e) => assert!(e.contains("permission denied"), "{what}: {e}"),
        Ok(rows) => panic!("{what} was readable: {rows:?}"),
    };

    // The viewer reads D2, never D1, its quarantine or the ledger.
    assert_eq!(
        as_role(viewer, &format!("SELECT customer_id FROM {d2a} ORDER BY 1")).unwrap(),
        vec!["C-1".to_string(), "C-2".into()]
    );
    assert_eq!(
        as_role(viewer, &format!("SELECT visits::text FROM {d2b}")).unwrap(),
        vec!["8".to_string()]
    );
    denied(
        as_role(viewer, &format!("SELECT email FROM {d1}")),
        "d1 for the viewer",
    );
    denied(
        as_role(viewer, &format!("SELECT raw FROM {d1_quarantine}")),
        "d1 quarantine for the viewer",
    );
    denied(
        as_role(viewer, &format!("SELECT load_id FROM {ledger}")),
        "the ledger for the viewer",
    );
    // The hand-granted stranger lost its access; it never had D2.
    denied(
        as_role(stranger, &format!("SELECT email FROM {d1}")),
        "d1 for the stranger",
    );
    denied(
        as_role(stranger, &format!("SELECT customer_id FROM {d2a}")),
        "d2a for the stranger",
    );
    // The D1 reader reads D1 (and the ledger).
    assert_eq!(
        as_role(analyst, &format!("SELECT email FROM {d1} ORDER BY 1"))
            .unwrap()
            .len(),
        2
    );
    assert!(!as_role(analyst, &format!("SELECT load_id FROM {ledger}"))
        .unwrap()
        .is_empty());
    // PUBLIC holds nothing on the closed schemas.
    for schema in [format!("{prefix}d1"), format!("{prefix}_sluice")] {
        assert_eq!(
            pg.scalar_i64(&format!(
                "SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a \
                 WHERE n.nspname = '{schema}' AND a.grantee = 0"
            )),
            0,
            "{schema}"
        );
    }

    // Tables created by a later run are covered too (default privileges).
    project.write(
        "models/d2a/big_visitors.sql",
        "SELECT customer_id FROM d1.shop_customers WHERE visits > 4",
    );
    let out = project.run(&["--select", "big_visitors"]);
    assert_exit(&out, 0);
    assert_eq!(
        as_role(
            viewer,
            &format!("SELECT customer_id FROM \"{prefix}d2a\".big_visitors")
        )
        .unwrap(),
        vec!["C-2".to_string()]
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn a_reader_role_that_does_not_exist_is_found_by_validate_and_fails_the_load_by_name() {
    let pg = Pg::connect();
    let prefix = unique_prefix("noreader");
    let roles = Roles::create(&pg, &["present"]);
    let missing = format!("sluice_missing_{}", std::process::id());
    let project = Project::new(&pipeline(&prefix, &missing, &roles.names[0]));
    project.write(
        "data/customers.ndjson",
        "{\"customer_id\": \"C-1\", \"email\": \"ann@example.com\", \"visits\": 3}\n",
    );
    project.write(
        "models/d2a/customers_clean.sql",
        "SELECT customer_id, visits FROM d1.shop_customers",
    );
    let out = project
        .cmd()
        .args(["validate", "--connections"])
        .output()
        .unwrap();
    assert_exit(&out, 6);
    assert!(
        stdout(&out).contains(&missing) && stdout(&out).contains("do not exist"),
        "{}",
        stdout(&out)
    );
    // D1 loads (its readers exist); the D2 model's publish fails, naming the setting.
    let out = project.run(&["--json"]);
    assert_exit(&out, 5);
    let text = stdout(&out);
    assert!(
        text.contains("destination.readers") && text.contains(&missing),
        "{text}"
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn validate_warns_that_sqlite_keeps_personal_data_in_clear() {
    let project = Project::new(&format!(
        r#"name: shop
lake: ./lake
sources:
  shop:
    type: files
    streams:
      customers:
        path: data/customers.ndjson
        columns: {{ customer_id: text, email: text }}
pii:
  key: {PII_KEY}
  columns:
    "*.email": hash
"#
    ));
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("clear text") && text.contains("shop_customers.email"),
        "{text}"
    );
    // Without personal columns there is nothing to warn about.
    std::fs::write(
        project.path().join("pipeline.yaml"),
        "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      \
         customers:\n        path: data/customers.ndjson\n        columns: { customer_id: text }\n",
    )
    .unwrap();
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 0);
    assert!(!stdout(&out).contains("clear text"), "{}", stdout(&out));
}
