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
    // Both streams are held: the typed one on its new column, `app.events` on
    // the new path inside `event_props` (properties are fields there too).
    assert_exit(&frozen, 4);
    let text = stdout(&frozen) + &stderr(&frozen);
    assert!(
        (text.contains("`Coupon`") || text.contains("`amount_value`"))
            && text.contains("first seen at")
            && text.contains(&format!("in data of {}", change_day()))
            && text.contains("freeze"),
        "the failure names the property, its first record and the policy:\n{text}"
    );
    assert!(
        text.contains("`Charged`: new field `event_props.Coupon`")
            || text.contains("`Charged`: new field `event_props.amount_value`"),
        "the JSON stream names the property path and its event:\n{text}"
    );
}

fn json_pipeline(schema: &str) -> String {
    pipeline(schema).replace(
        "{ names: [Charged], typed: [Charged] }",
        "{ names: [Charged] }",
    )
}

/// `event_props` kept as JSON: each event's property paths are fields of the
/// registry, so `schema history app.events` shows the add, the re-type and the
/// likely rename with the day each appeared.
#[test]
fn json_event_props_history_shows_the_add_retype_and_rename_with_their_day() {
    let project = Project::new(&json_pipeline(
        "schema:\n  on_new_field: evolve\n  on_type_change: evolve\n",
    ));
    assert_exit(&run(&project, change_day() - Duration::days(1)), 0);
    let today = change_day() + Duration::days(1);
    let second = run(&project, today);
    assert_exit(&second, 0);
    let report = stdout(&second);
    assert!(
        report.contains("event_props.Coupon [Charged]"),
        "the run reports the new property:\n{report}"
    );
    let history = project
        .cmd()
        .args(["schema", "history", "app.events"])
        .output()
        .unwrap();
    assert_exit(&history, 0);
    let history = stdout(&history);
    let day = change_day().to_string();
    let line = |needle: &str| {
        history
            .lines()
            .any(|l| l.contains(needle) && l.contains(&day))
    };
    assert!(
        line("new field `event_props.Coupon [Charged]`: text"),
        "{history}"
    );
    assert!(
        line("`event_props.Items [Charged]`: bigint → text"),
        "{history}"
    );
    assert!(
        line("likely rename `event_props.Amount [Charged]`: `event_props.amount_value`"),
        "{history}"
    );
    // Every event is loaded, its properties as sent.
    let db = project.sqlite();
    let loaded: i64 = db
        .query_row("select count(*) from d1__app_events", [], |r| r.get(0))
        .unwrap();
    let expected: i64 = truth(today).values().map(|(n, _)| n).sum();
    assert_eq!(loaded, expected);
}

/// Quarantine on a re-typed property: the JSON stream holds back the events
/// whose `Items` arrived as text, with their raw record; nothing is lost.
#[test]
fn json_event_props_quarantine_holds_back_the_retyped_events() {
    let project = Project::new(&json_pipeline(
        "schema:\n  on_new_field: evolve\n  on_type_change: quarantine\n",
    ));
    assert_exit(&run(&project, change_day() - Duration::days(1)), 0);
    let today = change_day() + Duration::days(1);
    assert_exit(&run(&project, today), 0);
    let db = project.sqlite();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let truth = truth(today);
    let after: i64 = truth
        .iter()
        .filter(|(d, _)| **d >= change_day().to_string())
        .map(|(_, (n, _))| n)
        .sum();
    assert!(after > 0);
    assert_eq!(
        count("select count(*) from d1__app_events__quarantine where reason like '%event_props.Items%' and raw like '%amount_value%'"),
        after
    );
    assert_eq!(
        count("select count(*) from d1__app_events") + after,
        truth.values().map(|(n, _)| n).sum::<i64>()
    );
}

/// The rename declared only after a run evolved `amount_value` into a column of
/// its own: the next run folds it back into `Amount` (D1 and the lake), so a D2
/// model summing `Amount` equals the truth across the change day, unedited.
#[test]
fn a_rename_declared_after_evolve_folds_the_new_column_back() {
    let evolve = "schema:\n  on_new_field: evolve\n  on_type_change: evolve\n";
    // No look-back: the third run does not re-read the change day, so its rows
    // (loaded with `amount_value`) must be folded where they are.
    let pipeline = |schema: &str| pipeline(schema).replace("lookback_days: 1", "lookback_days: 0");
    let project = Project::new(&pipeline(evolve));
    project.write(
        "models/d2a/charged_daily.sql",
        "SELECT event_date, count(*) AS orders, sum(\"Amount\") AS amount\n\
         FROM d1.app_events_charged GROUP BY event_date\n",
    );
    assert_exit(&run(&project, change_day() - Duration::days(1)), 0);
    let today = change_day() + Duration::days(1);
    // No rename declared: the model reading `Amount` is held, its table kept, and
    // the run names it and the likely rename.
    let unmapped = run(&project, today);
    assert_exit(&unmapped, 5);
    let report = stdout(&unmapped);
    assert!(
        report.lines().any(|l| l.contains("d2a.charged_daily")
            && l.contains("held")
            && l.contains("likely rename `Amount`")
            && l.contains("`amount_value`")),
        "{report}"
    );
    let columns = |project: &Project| -> Vec<String> {
        let db = project.sqlite();
        let mut stmt = db
            .prepare("select name from pragma_table_info('d1__app_events_charged')")
            .unwrap();
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        names
    };
    assert!(columns(&project).contains(&"amount_value".to_string()));

    std::fs::write(
        project.path().join("pipeline.yaml"),
        pipeline(&format!(
            "{evolve}  renames:\n    app.events_charged: {{ amount_value: Amount }}\n"
        )),
    )
    .unwrap();
    let later = today + Duration::days(1);
    let folded = run(&project, later);
    assert_exit(&folded, 0);
    let report = stdout(&folded) + &stderr(&folded);
    assert!(
        report.contains("folded back into `Amount`"),
        "the run says what it folded:\n{report}"
    );
    let columns = columns(&project);
    assert!(
        columns.contains(&"Amount".to_string()) && !columns.contains(&"amount_value".to_string()),
        "{columns:?}"
    );
    let expected = truth(later);
    assert!(expected.contains_key(&change_day().to_string()));
    let db = project.sqlite();
    let per_day = |sql: &str| -> BTreeMap<String, (i64, i64)> {
        let mut stmt = db.prepare(sql).unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (
                        r.get::<_, i64>(1)?,
                        // A day whose amounts did not fold sums to NULL: shown as -1.
                        r.get::<_, Option<f64>>(2)?
                            .map_or(-1, |a| (a * 100.0).round() as i64),
                    ),
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    };
    assert_eq!(
        per_day(
            r#"select cast(event_date as text), count(*), sum("Amount") from d1__app_events_charged group by 1"#
        ),
        expected,
        "D1 equals the truth\n{report}"
    );
    assert_eq!(
        per_day("select cast(event_date as text), orders, amount from d2a__charged_daily"),
        expected,
        "the unedited model equals the truth\n{report}"
    );
    // The lake's files carry one column too, and history keeps the story.
    let history = stdout(
        &project
            .cmd()
            .args(["schema", "history", "app.events_charged"])
            .output()
            .unwrap(),
    );
    assert!(
        history.contains("`amount_value`") && history.contains("folded back into `Amount`"),
        "{history}"
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

/// The fold in PostgreSQL: the evolved `amount_value` column's values move into
/// `Amount` and the column is dropped, in the load's transaction.
#[test]
fn a_folded_column_in_postgres_moves_its_values_and_is_dropped() {
    let pg = Pg::connect();
    let prefix = unique_prefix("apichange_fold");
    let evolve = "schema:\n  on_new_field: evolve\n  on_type_change: evolve\n";
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
        pg_url()
    );
    let pipeline = |schema: &str| {
        pipeline(&format!("{schema}{destination}")).replace("lookback_days: 1", "lookback_days: 0")
    };
    let project = Project::new(&pipeline(evolve));
    assert_exit(&run(&project, change_day() - Duration::days(1)), 0);
    let today = change_day() + Duration::days(1);
    assert_exit(&run(&project, today), 0);
    let table = format!("\"{prefix}d1\".app_events_charged");
    let has_column = |name: &str| {
        pg.scalar_i64(&format!(
            "select count(*) from information_schema.columns where table_schema = '{prefix}d1' \
             and table_name = 'app_events_charged' and column_name = '{name}'"
        )) == 1
    };
    assert!(has_column("amount_value"));

    std::fs::write(
        project.path().join("pipeline.yaml"),
        pipeline(&format!(
            "{evolve}  renames:\n    app.events_charged: {{ amount_value: Amount }}\n"
        )),
    )
    .unwrap();
    let later = today + Duration::days(1);
    let folded = run(&project, later);
    assert_exit(&folded, 0);
    assert!(has_column("Amount") && !has_column("amount_value"));
    let loaded: BTreeMap<String, (i64, i64)> = pg
        .strings(&format!(
            r#"select event_date::text || '|' || count(*) || '|' || coalesce((sum("Amount") * 100)::bigint, -1)
               from {table} group by event_date"#
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
    let runs = stdout(&project.cmd().args(["runs", "--json"]).output().unwrap());
    assert_eq!(loaded, truth(later), "{}\n{runs}", stdout(&folded));
    pg.drop_schemas(&prefix);
}

/// No `schema:` section at all: the change day's events are judged by the default
/// policies, and the model summing `Amount` is held (its table kept, no NULLs
/// published) with the run naming it and the likely rename.
#[test]
fn with_no_policy_the_model_reading_the_renamed_property_is_held_and_named() {
    let project = project("");
    project.write(
        "models/d2a/charged_daily.sql",
        "SELECT event_date, count(*) AS orders, sum(\"Amount\") AS amount\n\
         FROM d1.app_events_charged GROUP BY event_date\n",
    );
    assert_exit(&run(&project, change_day() - Duration::days(1)), 0);
    let before: i64 = project
        .sqlite()
        .query_row("select count(*) from d2a__charged_daily", [], |r| r.get(0))
        .unwrap();
    let after = run(&project, change_day() + Duration::days(1));
    assert_exit(&after, 5);
    let report = stdout(&after);
    assert!(
        report.lines().any(|l| l.contains("d2a.charged_daily")
            && l.contains("held")
            && l.contains("`Amount`")
            && l.contains("`amount_value`")),
        "{report}"
    );
    // The previous table is kept: no day with a NULL amount was published.
    let db = project.sqlite();
    let (rows, nulls): (i64, i64) = db
        .query_row(
            "select count(*), count(*) - count(amount) from d2a__charged_daily",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, nulls), (before, 0));
}
