//! The CleverTap story end to end: on a given day the app's `Charged` event
//! renames `Amount` to `amount_value`, sends `Items` (a number) as a string and
//! gains `Coupon`. With a typed per-event table the properties are columns in
//! the schema registry: `schema history` shows the change and its day, `freeze`
//! stops the stream naming the property and the first record, and a `renames`
//! entry keeps `Amount` in the typed D1 table equal to the truth across the change
//! day. (A D2 model over the lake table does not yet read a column whose type was
//! widened: DataFusion refuses to merge the old files' bigint with the new text.)

mod common;

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate, Utc};
use common::*;
use sluice_sandbox::{credentials, Faults, SandboxOptions};

fn change_day() -> NaiveDate {
    Utc::now().date_naive() - Duration::days(2)
}

fn start_day() -> NaiveDate {
    change_day() - Duration::days(4)
}

fn options(today: NaiveDate) -> SandboxOptions {
    let mut options = SandboxOptions::new(7, 1, today);
    options.faults = Faults {
        charged_change_on: Some(change_day()),
        ..Faults::default()
    };
    options
}

fn pipeline(schema: &str) -> String {
    format!(
        r#"name: story
lake: ./lake
sources:
  app:
    type: clevertap
    base_url: ${{SANDBOX_URL}}
    account_id: {account}
    passcode: {passcode}
    start_date: "{start}"
    lookback_days: 1
    streams:
      events: {{ names: [Charged], typed: [Charged] }}
{schema}"#,
        account = credentials::CLEVERTAP_ACCOUNT_ID,
        passcode = credentials::CLEVERTAP_PASSCODE,
        start = start_day(),
    )
}

fn project(schema: &str) -> Project {
    Project::new(&pipeline(schema))
}

/// A run whose "today" is the sandbox's.
fn run(project: &Project, today: NaiveDate) -> std::process::Output {
    let sandbox = TestSandbox::start(options(today));
    project
        .cmd()
        .env("SANDBOX_URL", sandbox.url())
        .args(["run", "--today", &today.to_string()])
        .output()
        .unwrap()
}

/// Truth per day: (orders, amount in cents).
fn truth(until: NaiveDate) -> BTreeMap<String, (i64, i64)> {
    let t = sluice_sandbox::truth(&options(until), start_day(), until);
    t["clevertap"]["charged_days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["date"].as_str().unwrap().to_string(),
                (
                    d["count"].as_i64().unwrap(),
                    cents(d["amount"].as_str().unwrap()),
                ),
            )
        })
        .collect()
}

#[test]
fn renames_and_evolve_keep_amount_equal_to_the_truth_and_history_shows_the_day() {
    let project = project(
        "schema:\n  on_new_field: evolve\n  on_type_change: evolve\n  renames:\n    app.events_charged: { amount_value: Amount }\n",
    );
    // A model over the typed table reads files written before and after `Items`
    // turned into text.
    project.write(
        "models/d2a/charged_daily.sql",
        "SELECT event_date, count(*) AS orders, sum(\"Amount\") AS amount, count(\"Items\") AS items\n\
         FROM d1.app_events_charged GROUP BY event_date\n",
    );
    let before = change_day() - Duration::days(1);
    let first = run(&project, before);
    assert_exit(&first, 0);

    let today = change_day() + Duration::days(1);
    let second = run(&project, today);
    assert_exit(&second, 0);
    let report = stdout(&second);
    assert!(
        report.contains("Coupon") && report.contains("Items"),
        "the run reports the new and the re-typed property:\n{report}"
    );
    assert!(
        report.lines().any(|l| l.contains("d2a.charged_daily")
            && l.contains("reads `Items` of d1.app_events_charged")),
        "the run names the model that reads the re-typed property:\n{report}"
    );
    assert!(
        !report
            .lines()
            .any(|l| l.contains("d2a.charged_daily") && l.contains("`Coupon`")),
        "a new property it does not read is no concern of the model:\n{report}"
    );

    let history = project
        .cmd()
        .args(["schema", "history", "app.events_charged"])
        .output()
        .unwrap();
    assert_exit(&history, 0);
    let history = stdout(&history);
    let day = change_day().to_string();
    assert!(
        history
            .lines()
            .any(|l| l.contains("`Coupon`") && l.contains(&day)),
        "history names the new property and the day it appeared:\n{history}"
    );
    assert!(
        history
            .lines()
            .any(|l| l.contains("`Items`") && l.contains("bigint → text")),
        "history shows Items turning from a number into text:\n{history}"
    );
    assert!(
        !history.contains("amount_value"),
        "the renamed property loads into `Amount`:\n{history}"
    );

    let db = project.sqlite();
    let mut stmt = db
        .prepare(
            r#"select cast(event_date as text), count(*), sum("Amount") from d1__app_events_charged
               group by 1"#,
        )
        .unwrap();
    let loaded: BTreeMap<String, (i64, i64)> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get::<_, i64>(1)?,
                    (r.get::<_, f64>(2)? * 100.0).round() as i64,
                ),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let expected = truth(today);
    assert!(expected.contains_key(&day));
    assert_eq!(
        loaded, expected,
        "orders and amount per day equal the truth\n{report}"
    );
    let mut stmt = db
        .prepare("select cast(event_date as text), orders, amount, items from d2a__charged_daily")
        .unwrap();
    let modelled: BTreeMap<String, (i64, i64)> = stmt
        .query_map([], |r| {
            let orders: i64 = r.get(1)?;
            assert_eq!(orders, r.get::<_, i64>(3)?, "every order has its Items");
            Ok((
                r.get::<_, String>(0)?,
                (orders, (r.get::<_, f64>(2)? * 100.0).round() as i64),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        modelled, expected,
        "the model spans the re-typed column\n{report}"
    );
}

#[test]
fn freeze_stops_the_stream_naming_the_property_and_its_first_record() {
    let project = project("schema:\n  on_new_field: freeze\n");
    let before = change_day() - Duration::days(1);
    assert_exit(&run(&project, before), 0);
    let frozen = run(&project, change_day() + Duration::days(1));
    // Partial: `app.events` (JSON properties) is published, the typed stream is held.
    assert_exit(&frozen, 5);
    let text = stdout(&frozen) + &stderr(&frozen);
    assert!(
        (text.contains("`Coupon`") || text.contains("`amount_value`"))
            && text.contains("first seen at")
            && text.contains(&format!("in data of {}", change_day()))
            && text.contains("freeze"),
        "the failure names the property, its first record and the policy:\n{text}"
    );
}

// The typed per-event table equals the truth in PostgreSQL too, across the change day.
#[test]
fn typed_event_table_equals_the_truth_in_postgres_across_the_change() {
    let pg = Pg::connect();
    let prefix = unique_prefix("typed");
    let project = project(&format!(
        "schema:\n  on_new_field: evolve\n  on_type_change: evolve\n  renames:\n    app.events_charged: {{ amount_value: Amount }}\n\
         destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
        pg_url()
    ));
    assert_exit(&run(&project, change_day() - Duration::days(1)), 0);
    let today = change_day() + Duration::days(1);
    let second = run(&project, today);
    assert_exit(&second, 0);

    let loaded: BTreeMap<String, (i64, i64)> = pg
        .strings(&format!(
            r#"select event_date::text || '|' || count(*) || '|' || (sum("Amount") * 100)::bigint
               from "{prefix}d1".app_events_charged group by event_date"#
        ))
        .into_iter()
        .map(|line| {
            let parts: Vec<&str> = line.split('|').collect();
            (
                parts[0].to_string(),
                (parts[1].parse().unwrap(), parts[2].parse().unwrap()),
            )
        })
        .collect();
    let expected = truth(today);
    assert!(expected.contains_key(&change_day().to_string()));
    assert_eq!(loaded, expected, "{}", stdout(&second));
    pg.drop_schemas(&prefix);
}
