//! Source schema changes end to end: the sandbox's `--schema-change-after` (Facebook
//! insights start carrying a new field) and `files` streams that add, rename and
//! re-type fields, under each policy. The warehouse is compared with the sandbox's
//! truth, and every record is accounted for: in D1 or in quarantine.

mod common;

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate, Utc};
use common::*;
use sluice_sandbox::{credentials, Faults, SandboxOptions};

/// The day the sandbox's Facebook insights start carrying `attribution_setting`.
fn change_day() -> NaiveDate {
    Utc::now().date_naive() - Duration::days(2)
}

fn start_day() -> NaiveDate {
    change_day() - Duration::days(8)
}

/// A sandbox whose "today" is `today`, with the schema change on.
struct Sandbox(TestSandbox);

impl Sandbox {
    fn start(today: NaiveDate) -> Sandbox {
        let mut options = SandboxOptions::new(7, 1, today);
        options.faults = Faults {
            schema_change_after: Some(change_day()),
            ..Faults::default()
        };
        Sandbox(TestSandbox::start(options))
    }

    fn url(&self) -> String {
        self.0.url()
    }

    /// Truth per (account, day): (rows, impressions, clicks, spend in cents).
    fn truth(&self, since: NaiveDate, until: NaiveDate) -> BTreeMap<(String, String), Totals> {
        let truth = sluice_sandbox::truth(&self.0.options, since, until);
        truth["facebook"]["days"]
            .as_array()
            .expect("facebook days")
            .iter()
            .map(|d| {
                (
                    (
                        d["account_id"].as_str().unwrap().to_string(),
                        d["date"].as_str().unwrap().to_string(),
                    ),
                    Totals {
                        rows: d["rows"].as_i64().unwrap(),
                        impressions: d["impressions"].as_i64().unwrap(),
                        clicks: d["clicks"].as_i64().unwrap(),
                        spend_cents: cents(d["spend"].as_str().unwrap()),
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    rows: i64,
    impressions: i64,
    clicks: i64,
    spend_cents: i64,
}

fn insights_pipeline(policy: &str) -> String {
    format!(
        r#"name: drift
lake: ./lake
sources:
  facebook:
    type: facebook_ads
    base_url: ${{SANDBOX_URL}}
    access_token: {token}
    api_version: v26.0
    accounts: all
    start_date: "{start}"
    lookback_days: 28
    streams:
      insights:
        level: ad
        fields: [impressions, clicks, spend]
schema:
  on_new_field: {policy}
"#,
        token = credentials::FACEBOOK_ACCESS_TOKEN,
        start = start_day(),
    )
}

fn run_against(project: &Project, sandbox: &Sandbox, args: &[&str]) -> std::process::Output {
    project
        .cmd()
        .env("SANDBOX_URL", sandbox.url())
        .arg("run")
        .args(args)
        .output()
        .expect("run sluice")
}

/// Loaded totals per (account, day) from the SQLite warehouse.
fn loaded(project: &Project) -> BTreeMap<(String, String), Totals> {
    let db = project.sqlite();
    let mut stmt = db
        .prepare(
            "select account_id, cast(date_start as text), impressions, clicks, spend
             from d1__facebook_insights",
        )
        .unwrap();
    let mut out: BTreeMap<(String, String), Totals> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (account, day, impressions, clicks, spend) = row.unwrap();
        let account = if account.starts_with("act_") {
            account
        } else {
            format!("act_{account}")
        };
        let t = out.entry((account, day)).or_default();
        t.rows += 1;
        t.impressions += impressions;
        t.clicks += clicks;
        t.spend_cents += cents(&spend);
    }
    out
}

fn sqlite_count(project: &Project, sql: &str) -> i64 {
    project.sqlite().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn columns(project: &Project, table: &str) -> Vec<String> {
    let db = project.sqlite();
    let mut stmt = db
        .prepare(&format!("select name from pragma_table_info('{table}')"))
        .unwrap();
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    names
}

/// `sluice runs --json`: it needs no credentials, so SANDBOX_URL is left unset.
fn runs_json(project: &Project) -> String {
    let out = project
        .cmd()
        .env_remove("SANDBOX_URL")
        .args(["runs", "--json"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    stdout(&out)
}

fn last_run_id(project: &Project) -> String {
    let runs: serde_json::Value = serde_json::from_str(&runs_json(project)).unwrap();
    runs[0]["run_id"]
        .as_str()
        .or_else(|| runs[0]["id"].as_str())
        .unwrap_or_else(|| panic!("a run id in {runs}"))
        .to_string()
}

/// Day one before the change, then a run that sees it: the first run's days stay
/// exactly as loaded while the stream is frozen; replaying the frozen run after
/// switching to `evolve` loads every day, equal to the truth, without duplicates.
#[test]
fn freeze_holds_the_stream_and_replay_after_evolve_loads_the_held_back_days() {
    let before = change_day() - Duration::days(1);
    let project = Project::new(&insights_pipeline("freeze"));

    let sandbox = Sandbox::start(before);
    let first = run_against(&project, &sandbox, &[]);
    assert_exit(&first, 0);
    let first_truth = sandbox.truth(start_day(), before);
    assert!(!first_truth.is_empty());
    assert_eq!(loaded(&project), first_truth);
    drop(sandbox);

    let today = change_day() + Duration::days(2);
    let sandbox = Sandbox::start(today);
    let frozen = run_against(&project, &sandbox, &[]);
    assert_exit(&frozen, 4);
    let err = stderr(&frozen) + &stdout(&frozen);
    assert!(
        err.contains("attribution_setting") && err.contains("freeze"),
        "the failure names the new field and the policy:\n{err}"
    );
    // Nothing new reached D1: the warehouse still equals the truth of the first run.
    assert_eq!(loaded(&project), first_truth);
    assert!(!columns(&project, "d1__facebook_insights").contains(&"attribution_setting".into()));
    let frozen_run = last_run_id(&project);
    // The raw pages were kept for the replay.
    assert!(project
        .lake_files()
        .iter()
        .any(|p| p.to_string_lossy().contains(&frozen_run)));

    // The decision: evolve. The replay calls no API (the sandbox is gone).
    let requests_before = sandbox.0.request_count();
    std::fs::write(
        project.path().join("pipeline.yaml"),
        insights_pipeline("evolve"),
    )
    .unwrap();
    let replay = project
        .cmd()
        .env("SANDBOX_URL", sandbox.url())
        .args(["replay", "--run", &frozen_run])
        .output()
        .unwrap();
    assert_exit(&replay, 0);
    assert_eq!(sandbox.0.request_count(), requests_before);
    assert_eq!(loaded(&project), sandbox.truth(start_day(), today));
    assert!(columns(&project, "d1__facebook_insights").contains(&"attribution_setting".into()));
    let changed_days = sqlite_count(
        &project,
        &format!(
            "select count(distinct date_start) from d1__facebook_insights where attribution_setting is not null and date_start >= '{}'",
            change_day()
        ),
    );
    assert_eq!(changed_days, 3);
}

/// Quarantine: the rows that carry the new field are held back with their raw
/// record, the others load; D1 + quarantine = every row the sandbox served.
#[test]
fn quarantine_loads_what_fits_and_keeps_every_other_record() {
    let before = change_day() - Duration::days(1);
    let project = Project::new(&insights_pipeline("quarantine"));
    let sandbox = Sandbox::start(before);
    assert_exit(&run_against(&project, &sandbox, &[]), 0);
    drop(sandbox);

    let today = change_day() + Duration::days(2);
    let sandbox = Sandbox::start(today);
    let out = run_against(&project, &sandbox, &[]);
    assert_exit(&out, 0);
    let truth = sandbox.truth(start_day(), today);
    let change = change_day().to_string();
    let (before_change, after_change): (BTreeMap<_, _>, BTreeMap<_, _>) = truth
        .clone()
        .into_iter()
        .partition(|((_, day), _)| *day < change);
    // Days before the change equal the truth (the look-back re-fetch replaced them).
    assert_eq!(loaded(&project), before_change);
    // Every record of the changed days is in quarantine, with its raw record.
    let held: i64 = after_change.values().map(|t| t.rows).sum();
    assert!(held > 0);
    assert_eq!(
        sqlite_count(
            &project,
            "select count(*) from d1__facebook_insights__quarantine where reason like '%attribution_setting%' and raw like '%attribution_setting%'"
        ),
        held
    );
    let served: i64 = truth.values().map(|t| t.rows).sum();
    assert_eq!(
        sqlite_count(&project, "select count(*) from d1__facebook_insights")
            + sqlite_count(
                &project,
                "select count(*) from d1__facebook_insights__quarantine"
            ),
        served
    );
    // The run record says what changed and what was done.
    let runs = runs_json(&project);
    assert!(
        runs.contains("attribution_setting") && runs.contains("quarantined"),
        "{runs}"
    );
}

/// Evolve on PostgreSQL: the new column is added inside the load transaction and the
/// warehouse equals the truth for every day.
#[test]
fn evolve_adds_the_column_in_postgres_and_matches_the_truth() {
    let pg = Pg::connect();
    let prefix = unique_prefix("drift");
    let pipeline = insights_pipeline("evolve")
        + &format!(
            "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
            pg_url()
        );
    let project = Project::new(&pipeline);
    let sandbox = Sandbox::start(change_day() - Duration::days(1));
    assert_exit(&run_against(&project, &sandbox, &[]), 0);
    drop(sandbox);
    let today = change_day() + Duration::days(2);
    let sandbox = Sandbox::start(today);
    assert_exit(&run_against(&project, &sandbox, &[]), 0);

    let truth = sandbox.truth(start_day(), today);
    let table = format!("\"{prefix}d1\".facebook_insights");
    assert_eq!(
        pg.scalar_i64(&format!("select count(*) from {table}")),
        truth.values().map(|t| t.rows).sum::<i64>()
    );
    assert_eq!(
        pg.scalar_i64(&format!("select sum(impressions)::bigint from {table}")),
        truth.values().map(|t| t.impressions).sum::<i64>()
    );
    assert_eq!(
        pg.scalar_i64(&format!("select (sum(spend) * 100)::bigint from {table}")),
        truth.values().map(|t| t.spend_cents).sum::<i64>()
    );
    assert_eq!(
        pg.scalar_i64(&format!(
            "select count(distinct date_start) from {table} where attribution_setting is not null"
        )),
        3
    );
    pg.drop_schemas(&prefix);
}

fn files_pipeline(schema: &str) -> String {
    format!(
        r#"name: drift
lake: ./lake
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/*.ndjson
        primary_key: [id]
{schema}"#
    )
}

/// Day one: `amount` whole numbers, `qty` numbers, `payment_mode`.
const DAY_ONE: &str = r#"{"id": 1, "amount": 10, "qty": 1, "payment_mode": "card"}
{"id": 2, "amount": 20, "qty": 2, "payment_mode": "paypal"}
"#;

/// Day two: `amount` gains decimals, one `qty` is text, `payment_mode` is now
/// `payment_method`, `coupon` is new, and one record lacks its (required) key.
const DAY_TWO: &str = r#"{"id": 3, "amount": 12.5, "qty": 3, "payment_method": "card", "coupon": "X1"}
{"id": 4, "amount": 7.25, "qty": "four", "payment_method": "cod", "coupon": "X2"}
{"id": null, "amount": 1, "qty": 1, "payment_method": "card"}
"#;

/// Evolve with a rename map: the column is widened, the new field added, the renamed
/// field keeps loading into the old column, and the run record lists every change.
#[test]
fn files_evolve_widens_adds_and_maps_the_rename() {
    let project = Project::new(&files_pipeline(
        "schema:\n  on_type_change: evolve\n  renames:\n    shop.orders: { payment_mode: payment_method }\n",
    ));
    project.write("data/day1.ndjson", DAY_ONE);
    assert_exit(&project.run(&[]), 0);
    project.write("data/day2.ndjson", DAY_TWO);
    let out = project.run(&[]);
    assert_exit(&out, 0);

    assert_eq!(
        sqlite_count(&project, "select count(*) from d1__shop_orders"),
        4
    );
    let cols = columns(&project, "d1__shop_orders");
    assert!(cols.contains(&"coupon".into()), "{cols:?}");
    assert!(!cols.contains(&"payment_method".into()), "{cols:?}");
    let modes: Vec<String> = {
        let db = project.sqlite();
        let mut stmt = db
            .prepare("select payment_mode from d1__shop_orders order by id")
            .unwrap();
        let v = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        v
    };
    assert_eq!(modes, ["card", "paypal", "card", "cod"]);
    assert_eq!(
        sqlite_count(
            &project,
            "select count(*) from d1__shop_orders where cast(amount as real) = 7.25"
        ),
        1
    );
    assert_eq!(
        sqlite_count(
            &project,
            "select count(*) from d1__shop_orders where cast(qty as text) = 'four'"
        ),
        1
    );
    let history = project
        .cmd()
        .args(["schema", "history", "shop.orders"])
        .output()
        .unwrap();
    assert_exit(&history, 0);
    let runs = stdout(&project.cmd().args(["runs", "--json"]).output().unwrap());
    for expected in ["coupon", "widened", "qty", "amount"] {
        assert!(
            runs.contains(expected),
            "run record lacks {expected}: {runs}"
        );
    }
}

/// Quarantine on a type change and a rename without a map: the records that do not
/// fit are quarantined with the reason, the rename is reported as likely.
#[test]
fn files_quarantine_on_type_change_and_reports_the_likely_rename() {
    let project = Project::new(&files_pipeline("schema:\n  on_type_change: quarantine\n"));
    project.write("data/day1.ndjson", DAY_ONE);
    assert_exit(&project.run(&[]), 0);
    project.write("data/day2.ndjson", DAY_TWO);
    let out = project.run(&[]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(5)),
        "{}",
        stderr(&out)
    );
    let loaded = sqlite_count(&project, "select count(*) from d1__shop_orders");
    let quarantined = sqlite_count(&project, "select count(*) from d1__shop_orders__quarantine");
    assert_eq!(loaded + quarantined, 5, "no record is lost");
    assert_eq!(
        sqlite_count(
            &project,
            "select count(*) from d1__shop_orders__quarantine where raw like '%four%'"
        ),
        1
    );
    let runs = stdout(&project.cmd().args(["runs", "--json"]).output().unwrap());
    assert!(
        runs.contains("likely_rename") && runs.contains("payment_method"),
        "{runs}"
    );
    assert!(runs.contains("nullability_changed"), "{runs}");
}

/// Facebook's `actions` list: each action type is a field of the registry
/// (`schema show` lists them), and a second identical run reports nothing about
/// them, though not every row carries every action type.
#[test]
fn insights_action_types_are_registry_fields_and_quiet_when_nothing_changed() {
    let project = Project::new(&insights_pipeline("evolve").replace(
        "[impressions, clicks, spend]",
        "[impressions, spend, actions]",
    ));
    let sandbox = Sandbox::start(change_day() - Duration::days(1));
    assert_exit(&run_against(&project, &sandbox, &[]), 0);
    let again = run_against(&project, &sandbox, &[]);
    assert_exit(&again, 0);
    let text = stdout(&again) + &stderr(&again);
    assert!(
        !text.contains("actions.") && !text.contains("schema change"),
        "an identical run reports no action-type change:\n{text}"
    );
    let show = project
        .cmd()
        .args(["schema", "show", "facebook.insights"])
        .output()
        .unwrap();
    assert_exit(&show, 0);
    let show = stdout(&show);
    assert!(
        show.contains("fields inside JSON columns")
            && show
                .lines()
                .filter(|l| l.trim_start().starts_with("actions."))
                .count()
                >= 2,
        "{show}"
    );
}
