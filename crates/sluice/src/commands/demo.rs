//! `sluice demo`: the example marketing pipeline end to end on the embedded
//! default — the sandbox APIs (in process, on a loopback port) and a CRM database
//! (a SQLite file it writes) → lake → SQLite — then a summary a person can read,
//! checked against the sandbox's truth and the CRM rows it generated.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Duration, Utc};
use sluice_core::executor::RunObserver;
use sluice_sandbox::SandboxOptions;

use super::example::{
    crm_customers, sandbox_env, write_crm_database, CrmCustomer, CRM_DATABASE, MODELS, PIPELINE,
};
use super::run::{execute, exit_code, print_summary, RunArgs};
use super::{print_table, thousands};
use crate::exit;
use crate::project::Project;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where to write the demo project (replaced if it exists).
    #[arg(long, default_value = "sluice-demo")]
    pub dir: PathBuf,
    /// Days of history to extract.
    #[arg(long, default_value_t = 30)]
    pub days: i64,
    /// Sandbox data seed (the CRM database's customers too).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Customers in the demo's CRM database: enough for every address rule to fire
/// several times, few enough to stay a blink of the demo's time.
const CRM_CUSTOMERS: usize = 300;

pub async fn run(args: DemoArgs, interactive: bool) -> u8 {
    let started = std::time::Instant::now();
    let today = Utc::now().date_naive();
    let sandbox = match sluice_sandbox::start(SandboxOptions::new(args.seed, 1, today), 0).await {
        Ok(s) => s,
        Err(e) => {
            crate::logging::print_error!("cannot start the sandbox: {e:#}");
            return exit::INTERNAL;
        }
    };
    println!(
        "sandbox APIs (Facebook, Google Ads, CleverTap) at {}",
        sandbox.base_url()
    );
    let customers = crm_customers(args.seed, CRM_CUSTOMERS);
    if let Err(e) = write_project(
        &args.dir,
        &sandbox.base_url(),
        today - Duration::days(args.days - 1),
        &customers,
    ) {
        crate::logging::print_error!(
            "cannot write the demo project in {}: {e}",
            args.dir.display()
        );
        return exit::INTERNAL;
    }
    println!(
        "CRM database (SQLite file) at {} with {} customers",
        args.dir.join(CRM_DATABASE).display(),
        thousands(customers.len() as u64)
    );
    let pipeline = args.dir.join("pipeline.yaml");
    let project = match Project::load(&pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let observer: Arc<dyn RunObserver> = if interactive {
        Arc::new(crate::progress::Bars::new())
    } else {
        Arc::new(crate::progress::LogLines)
    };
    let run_args = RunArgs {
        today: Some(today),
        ..RunArgs::default()
    };
    let record = match execute(&project, &run_args, observer).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let requests = sandbox.request_count();
    sandbox.shutdown().await;

    print_summary(&record);
    let db = args.dir.join("warehouse.db");
    if let Err(e) = print_report(&db) {
        println!("  (report unavailable: {e})");
    }
    let start = today - Duration::days(args.days - 1);
    let truth = sluice_sandbox::truth(&SandboxOptions::new(args.seed, 1, today), start, today);
    let matches_truth = match check_against_truth(&db, &truth, &customers) {
        Ok(lines) => {
            println!(
                "\nwarehouse vs the sandbox's ground truth ({start} .. {today}) and the CRM rows written:"
            );
            for line in &lines {
                println!("  {line}");
            }
            !lines.iter().any(|l| l.contains("≠ truth"))
        }
        Err(e) => {
            println!("  (truth check unavailable: {e})");
            false
        }
    };
    println!(
        "\n{} API requests served by the sandbox; lake at {}; warehouse {}",
        thousands(requests),
        project.lake.location(),
        db.display()
    );
    println!("total time: {:.1}s", started.elapsed().as_secs_f64());
    println!(
        "\nNext: sluice -p {p} runs    sluice -p {p} schema show facebook.insights",
        p = pipeline.display()
    );
    match exit_code(&record) {
        exit::OK if !matches_truth => {
            crate::logging::print_error!(
                "the warehouse does not match the sandbox's truth (see above)"
            );
            exit::RUN_FAILED
        }
        code => code,
    }
}

/// Writes pipeline.yaml and a `.env` with the sandbox's address and credentials
/// (the same `${VAR}` route real credentials take).
fn write_project(
    dir: &Path,
    base_url: &str,
    start: chrono::NaiveDate,
    customers: &[CrmCustomer],
) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    for (path, content) in MODELS {
        let full = dir.join("models").join(path);
        std::fs::create_dir_all(full.parent().expect("models/ has a parent"))?;
        std::fs::write(full, content)?;
    }
    std::fs::write(dir.join("pipeline.yaml"), PIPELINE)?;
    let env = sandbox_env(base_url, start);
    std::fs::write(dir.join(".env"), env)?;
    std::fs::write(dir.join(".gitignore"), ".env\n/lake\n/warehouse.db*\n")?;
    write_crm_database(&dir.join(CRM_DATABASE), customers)
}

/// Spend per platform per day and the address exceptions, read from the warehouse.
fn print_report(db: &Path) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    let exists = |table: &str| -> bool {
        conn.query_row(
            "select count(*) from sqlite_master where name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .unwrap_or(false)
    };
    let query = |sql: &str| -> rusqlite::Result<Vec<Vec<String>>> {
        let mut stmt = conn.prepare(sql)?;
        let columns = stmt.column_count();
        let rows = stmt.query_map([], |row| {
            (0..columns)
                .map(|i| row.get::<_, rusqlite::types::Value>(i).map(cell))
                .collect::<rusqlite::Result<Vec<String>>>()
        })?;
        rows.collect()
    };

    println!("\nspend per platform per day (last 7 days, account currency):");
    let mut parts = Vec::new();
    if exists("d1__facebook_insights") {
        parts.push(
            "select date_start as day, 'facebook' as platform, account_currency as currency, \
             sum(impressions) as impressions, sum(clicks) as clicks, round(sum(cast(spend as real)), 2) as spend \
             from d1__facebook_insights group by 1, 2, 3",
        );
    }
    if exists("d1__google_campaign_daily") {
        parts.push(
            "select date as day, 'google' as platform, customer_currency as currency, \
             sum(impressions), sum(clicks), round(sum(cast(cost as real)), 2) \
             from d1__google_campaign_daily group by 1, 2, 3",
        );
    }
    if !parts.is_empty() {
        let sql = format!(
            "select * from ({}) where day >= (select date(max(day), '-6 days') from ({})) order by day desc, platform, currency",
            parts.join(" union all "),
            parts.join(" union all ")
        );
        match query(&sql) {
            Ok(rows) => {
                let mut table = vec![[
                    "day",
                    "platform",
                    "currency",
                    "impressions",
                    "clicks",
                    "spend",
                ]
                .map(String::from)
                .to_vec()];
                table.extend(rows);
                print_table(&table);
            }
            Err(e) => println!("  (not available: {e})"),
        }
    }

    if exists("d2b__customer_address_exceptions") {
        println!("\ncustomers with an invalid postal address (d2b.customer_address_exceptions):");
        let rows = query(
            "select source, rule, count(*) from d2b__customer_address_exceptions \
             group by source, rule order by source, rule",
        )?;
        let mut table = vec![vec![
            "source".to_string(),
            "rule".into(),
            "customers".into(),
        ]];
        table.extend(rows);
        print_table(&table);
    }
    Ok(())
}

fn cell(value: rusqlite::types::Value) -> String {
    use rusqlite::types::Value;
    match value {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:.2}"),
        Value::Text(t) => t,
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// Compares loaded totals with `sluice sandbox truth` for the same window, and the
/// CRM customers' address exceptions with those of the rows the demo wrote.
fn check_against_truth(
    db: &Path,
    truth: &serde_json::Value,
    customers: &[CrmCustomer],
) -> rusqlite::Result<Vec<String>> {
    let conn = rusqlite::Connection::open(db)?;
    let sum = |field: &str, platform: &str| -> f64 {
        truth[platform]["days"]
            .as_array()
            .map(|days| {
                days.iter()
                    .map(|d| match &d[field] {
                        serde_json::Value::String(s) => s.parse::<f64>().unwrap_or(0.0),
                        v => v.as_f64().unwrap_or(0.0),
                    })
                    .sum()
            })
            .unwrap_or(0.0)
    };
    let loaded = |sql: &str| -> rusqlite::Result<(f64, f64, f64)> {
        conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    };
    let mut lines = Vec::new();
    let mut verdict = |name: &str, got: (f64, f64, f64), want: (f64, f64, f64)| {
        let same = (got.0 - want.0).abs() < 0.5
            && (got.1 - want.1).abs() < 0.5
            && (got.2 - want.2).abs() < 0.005;
        lines.push(format!(
            "{name:<9} impressions {:>12}  clicks {:>10}  spend {:>14.2}  {}",
            thousands(got.0 as u64),
            thousands(got.1 as u64),
            got.2,
            if same { "= truth" } else { "≠ truth" }
        ));
        if !same {
            lines.push(format!(
                "          truth: impressions {} clicks {} spend {:.2}",
                want.0, want.1, want.2
            ));
        }
    };
    let fb = loaded(
        "select coalesce(sum(impressions),0), coalesce(sum(clicks),0), coalesce(sum(cast(spend as real)),0) from d1__facebook_insights",
    )?;
    verdict(
        "facebook",
        fb,
        (
            sum("impressions", "facebook"),
            sum("clicks", "facebook"),
            sum("spend", "facebook"),
        ),
    );
    let google = loaded(
        "select coalesce(sum(impressions),0), coalesce(sum(clicks),0), coalesce(sum(cost_micros),0) / 1000000.0 from d1__google_campaign_daily",
    )?;
    verdict(
        "google",
        google,
        (
            sum("impressions", "google"),
            sum("clicks", "google"),
            sum("cost_micros", "google") / 1_000_000.0,
        ),
    );
    lines.push(crm_exceptions_verdict(&conn, customers)?);
    Ok(lines)
}

/// The CRM rows of `d2b.customer_address_exceptions` against the rule each written
/// customer's address breaks (classified here, apart from the model's SQL).
fn crm_exceptions_verdict(
    conn: &rusqlite::Connection,
    customers: &[CrmCustomer],
) -> rusqlite::Result<String> {
    use std::collections::BTreeSet;
    let expected: BTreeSet<(String, String)> = customers
        .iter()
        .filter_map(|c| {
            address_rule(c.address.as_deref())
                .map(|rule| (format!("crm-{}", c.customer_id), rule.to_string()))
        })
        .collect();
    let mut stmt = conn.prepare(
        "select customer_id, rule from d2b__customer_address_exceptions where source = 'crm'",
    )?;
    let loaded = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<BTreeSet<_>>>()?;
    let verdict = if loaded == expected {
        "= truth".to_string()
    } else {
        let missing = expected.difference(&loaded).count();
        let extra = loaded.difference(&expected).count();
        format!("≠ truth ({missing} missing, {extra} not expected)")
    };
    Ok(format!(
        "{:<9} address exceptions {:>4} of {} customers  {verdict}",
        "crm",
        loaded.len(),
        customers.len()
    ))
}

/// The rule an address breaks, if any: empty (or blank, or none), shaped like a US
/// SSN (`123-45-6789` or `123456789`), or all digits.
fn address_rule(address: Option<&str>) -> Option<&'static str> {
    let a = address.unwrap_or("").trim();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let dashed = a.len() == 11
        && a.as_bytes()[3] == b'-'
        && a.as_bytes()[6] == b'-'
        && digits(&a[..3])
        && digits(&a[4..6])
        && digits(&a[7..]);
    if a.is_empty() {
        Some("empty")
    } else if dashed || (a.len() == 9 && digits(a)) {
        Some("ssn_shaped")
    } else if digits(a) {
        Some("all_digits")
    } else {
        None
    }
}
