//! The README's first command, and the sources of the example pipeline against the
//! sandbox over real HTTP: one source with a bad credential stops alone, with a
//! message that says what to fix, while the others load.

mod common;

use chrono::{Duration, Utc};
use common::*;
use sluice_sandbox::{credentials, SandboxOptions};

/// `sluice demo`: every stream and model succeeds and the warehouse equals the
/// sandbox's truth (the demo itself exits non-zero on a mismatch).
#[test]
fn demo_loads_everything_and_matches_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = assert_cmd::Command::cargo_bin("sluice")
        .unwrap()
        .current_dir(dir.path())
        .args(["demo", "--days", "10", "--dir"])
        .arg(&demo)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    for platform in ["facebook", "google", "crm"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(platform) && l.ends_with("= truth")),
            "{platform} is not reported equal to the truth:\n{text}"
        );
    }
    assert!(!text.contains("≠ truth"), "{text}");
    assert!(text.contains("succeeded"), "{text}");
    // The models ran: the business table exists and has rows.
    let db = rusqlite::Connection::open(demo.join("warehouse.db")).unwrap();
    let spend_rows: i64 = db
        .query_row("select count(*) from d2b__channel_spend_daily", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(spend_rows > 0);

    // D2B spend per platform per day: impressions and clicks equal the truth's
    // per-day sums (spend is converted to USD by the model, so it is not compared).
    let today = Utc::now().date_naive();
    let truth = sluice_sandbox::truth(
        &SandboxOptions::new(7, 1, today),
        today - Duration::days(9),
        today,
    );
    let mut expected_days = std::collections::BTreeMap::<(String, String), (i64, i64)>::new();
    for platform in ["facebook", "google"] {
        for day in truth[platform]["days"].as_array().unwrap() {
            let e = expected_days
                .entry((
                    day["date"].as_str().unwrap().to_string(),
                    platform.to_string(),
                ))
                .or_default();
            e.0 += day["impressions"].as_i64().unwrap();
            e.1 += day["clicks"].as_i64().unwrap();
        }
    }
    let loaded_days: std::collections::BTreeMap<(String, String), (i64, i64)> = {
        let mut stmt = db
            .prepare("select cast(date as text), platform, impressions, clicks from d2b__channel_spend_daily")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    };
    assert!(!expected_days.is_empty());
    assert_eq!(loaded_days, expected_days);

    // D2A spend in account currency per platform, day and currency, to the cent.
    let mut expected_spend = std::collections::BTreeMap::<(String, String, String), i64>::new();
    for platform in ["facebook", "google"] {
        for day in truth[platform]["days"].as_array().unwrap() {
            let cents = match platform {
                "facebook" => cents(day["spend"].as_str().unwrap()),
                _ => day["cost_micros"].as_i64().unwrap() / 10_000,
            };
            *expected_spend
                .entry((
                    day["date"].as_str().unwrap().to_string(),
                    platform.to_string(),
                    day["currency"].as_str().unwrap().to_string(),
                ))
                .or_default() += cents;
        }
    }
    let mut loaded_spend = std::collections::BTreeMap::<(String, String, String), i64>::new();
    {
        let mut stmt = db
            .prepare("select cast(date as text), platform, currency, spend from d2a__ad_performance_daily")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get(1)?, r.get(2)?),
                    r.get::<_, String>(3)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (key, spend) = row.unwrap();
            *loaded_spend.entry(key).or_default() += cents(&spend);
        }
    }
    assert_eq!(loaded_spend, expected_spend);

    // D2B's address exceptions are exactly the profiles whose clear D1 address is
    // invalid, classified here independently, and their counts equal the truth.
    let mut expected = std::collections::BTreeSet::new();
    let mut clear_text = Vec::new();
    {
        let mut stmt = db
            .prepare("select profile_id, email, phone, address from d1__app_profiles")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (id, email, phone, address) = row.unwrap();
            if let Some(rule) = address_rule(address.as_deref()) {
                expected.insert((id, rule.to_string()));
            }
            clear_text.extend([email, phone, address].into_iter().flatten());
        }
    }
    // The CRM database's customers, read from the file the demo wrote.
    let mut expected_crm = std::collections::BTreeSet::new();
    {
        let crm = rusqlite::Connection::open(demo.join("crm.db")).unwrap();
        let mut stmt = crm
            .prepare("select customer_id, email, phone, address from customers")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .unwrap();
        let mut customers = 0;
        for row in rows {
            let (id, email, phone, address) = row.unwrap();
            customers += 1;
            if let Some(rule) = address_rule(address.as_deref()) {
                expected_crm.insert((format!("crm-{id}"), rule.to_string()));
            }
            clear_text.extend([Some(email), phone, address].into_iter().flatten());
        }
        assert!(customers >= 200, "a few hundred CRM customers: {customers}");
    }
    let rules: std::collections::BTreeSet<&str> =
        expected_crm.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        rules,
        ["all_digits", "empty", "ssn_shaped"].into(),
        "every rule fires in the CRM data"
    );
    let exceptions = |source: &str| -> std::collections::BTreeSet<(String, String)> {
        let mut stmt = db
            .prepare(
                "select customer_id, rule from d2b__customer_address_exceptions where source = ?1",
            )
            .unwrap();
        let rows = stmt
            .query_map([source], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    };
    assert_eq!(exceptions("crm"), expected_crm);
    let actual: std::collections::BTreeSet<(String, String)> = {
        let mut stmt = db
            .prepare("select customer_id, rule from d2b__customer_address_exceptions where source = 'app'")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    };
    assert!(!expected.is_empty());
    assert_eq!(actual, expected);

    // No clear-text email, phone or address in any D2 table, in the warehouse or
    // in the lake (read back through `sluice query`).
    let clear_text: Vec<String> = clear_text
        .into_iter()
        .filter(|v| v.trim().len() >= 8)
        .collect();
    assert!(clear_text.iter().any(|v| v.contains('@')), "emails in D1");
    let mut d2_text = String::new();
    let tables: Vec<String> = {
        let mut stmt = db
            .prepare("select name from sqlite_master where type = 'table' and name like 'd2%'")
            .unwrap();
        let names = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        names
    };
    assert_eq!(tables.len(), 4, "{tables:?}");
    for table in &tables {
        let mut stmt = db.prepare(&format!("select * from \"{table}\"")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..columns {
                if let Ok(rusqlite::types::ValueRef::Text(t)) = row.get_ref(i) {
                    d2_text.push_str(&String::from_utf8_lossy(t));
                    d2_text.push('\n');
                }
            }
        }
        let lake_table = table.replacen("__", ".", 1);
        let query = assert_cmd::Command::cargo_bin("sluice")
            .unwrap()
            .current_dir(&demo)
            .args(["query", "--format", "csv"])
            .arg(format!("SELECT * FROM {lake_table}"))
            .output()
            .unwrap();
        assert_exit(&query, 0);
        d2_text.push_str(&stdout(&query));
    }
    for value in &clear_text {
        assert!(
            !d2_text.contains(value.as_str()),
            "clear-text personal data in D2: {value}"
        );
    }
}

/// The address rules of the example model, written independently of its SQL.
fn address_rule(address: Option<&str>) -> Option<&'static str> {
    let a = address.unwrap_or("").trim();
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let parts: Vec<&str> = a.split('-').collect();
    let ssn = (digits(a) && a.len() == 9)
        || (parts.len() == 3
            && parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [3, 2, 4]
            && parts.iter().all(|p| digits(p)));
    if a.is_empty() {
        Some("empty")
    } else if ssn {
        Some("ssn_shaped")
    } else if digits(a) {
        Some("all_digits")
    } else {
        None
    }
}

#[test]
fn a_source_with_a_bad_token_stops_alone_and_says_what_to_fix() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let today = Utc::now().date_naive();
    let sandbox = runtime
        .block_on(sluice_sandbox::start(SandboxOptions::new(7, 1, today), 0))
        .unwrap();
    let url = sandbox.base_url();
    let project = Project::new(&format!(
        r#"name: isolation
lake: ./lake
sources:
  facebook:
    type: facebook_ads
    base_url: {url}
    access_token: ${{FB_TOKEN}}
    api_version: v26.0
    accounts: all
    start_date: "{start}"
    streams:
      insights: {{ level: ad, fields: [impressions, clicks, spend] }}
  google:
    type: google_ads
    base_url: {url}
    token_url: {url}/token
    developer_token: {dev}
    oauth: {{ client_id: "{cid}", client_secret: "{secret}", refresh_token: "{refresh}" }}
    login_customer_id: "{manager}"
    start_date: "{start}"
"#,
        start = today - Duration::days(5),
        dev = credentials::GOOGLE_DEVELOPER_TOKEN,
        cid = credentials::GOOGLE_CLIENT_ID,
        secret = credentials::GOOGLE_CLIENT_SECRET,
        refresh = credentials::GOOGLE_REFRESH_TOKEN,
        manager = credentials::GOOGLE_MANAGER_CUSTOMER_ID,
    ));
    let out = project
        .cmd()
        .env("FB_TOKEN", "a-token-that-expired")
        .arg("run")
        .output()
        .unwrap();
    runtime.block_on(sandbox.shutdown());
    assert_exit(&out, 5);
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains("sources.facebook.access_token"),
        "the failure names the key to fix:\n{text}"
    );
    assert!(
        !text.contains("a-token-that-expired"),
        "the token is never printed:\n{text}"
    );
    let db = project.sqlite();
    let google_rows: i64 = db
        .query_row("select count(*) from d1__google_campaign_daily", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(google_rows > 0, "google still loaded");
    let fb_tables: i64 = db
        .query_row(
            "select count(*) from sqlite_master where name = 'd1__facebook_insights'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fb_tables, 0, "nothing from the failed source");
}
