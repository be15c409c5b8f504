//! `sluice sandbox …`: argument parsing only; the work is in the library.

use chrono::NaiveDate;
use clap::{Args, Subcommand};

use crate::{Faults, SandboxOptions};

#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// Serve the Facebook, Google Ads and CleverTap emulators on one local port.
    // Boxed: the fault flags make it far bigger than `Truth`.
    Serve(Box<ServeArgs>),
    /// Print the exact expected data for a date range as JSON.
    Truth(TruthArgs),
}

/// Options shared by `serve` and `truth`: they determine the data.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Multiplies entity counts (accounts, customers, profiles).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// The sandbox's today (YYYY-MM-DD); default: the current UTC date.
    #[arg(long)]
    pub today: Option<NaiveDate>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8990)]
    pub port: u16,
    #[command(flatten)]
    pub data: DataArgs,
    /// Rate-limit every Nth request of each API (in that API's own way).
    #[arg(long, value_name = "N")]
    pub rate_limit_every: Option<u64>,
    /// Answer a 5xx on every Nth request of each API.
    #[arg(long, value_name = "N")]
    pub server_error_every: Option<u64>,
    /// Delay responses by this many milliseconds: a fixed latency per request
    /// (`--latency-ms` is the same flag, as the sharding benchmark calls it).
    #[arg(long, value_name = "MS", visible_alias = "latency-ms")]
    pub slow_ms: Option<u64>,
    /// Only delay every Nth request (default: all).
    #[arg(long, value_name = "N")]
    pub slow_every: Option<u64>,
    /// Cut every Nth response body in half (invalid JSON, HTTP 200).
    #[arg(long, value_name = "N")]
    pub malformed_every: Option<u64>,
    /// Every Nth Facebook async report run fails.
    #[arg(long, value_name = "N")]
    pub async_fail_every: Option<u64>,
    /// Every Nth Facebook async report run stalls forever.
    #[arg(long, value_name = "N")]
    pub async_stall_every: Option<u64>,
    /// Every Nth page repeats its first record.
    #[arg(long, value_name = "N")]
    pub duplicate_every: Option<u64>,
    /// Facebook sync insights larger than this (objects × time buckets × breakdown values) answer "Please reduce the amount of data".
    #[arg(long, value_name = "SIZE")]
    pub reduce_data_above: Option<u64>,
    /// Facebook insights asking for more than N fields answer "Please reduce the amount of data" (a report run fails).
    #[arg(long, value_name = "N")]
    pub reduce_data_fields_above: Option<u64>,
    /// On this day Facebook account/campaign/adset totals differ from the ad rows.
    #[arg(long, value_name = "DATE")]
    pub inconsistent_day: Option<NaiveDate>,
    /// Facebook tokens are expired (190/463); Google access tokens are issued expired.
    #[arg(long)]
    pub expired_token: bool,
    /// Every Facebook API version answers 2635 (deprecated).
    #[arg(long)]
    pub deprecated_version: bool,
    /// From this data date, CleverTap event properties and Facebook insights fields change.
    #[arg(long, value_name = "DATE")]
    pub schema_change_after: Option<NaiveDate>,
    /// From this data date, CleverTap `Charged` renames `Amount` to `amount_value`, sends `Items` as text and adds `Coupon`.
    #[arg(long, value_name = "DATE")]
    pub charged_change_on: Option<NaiveDate>,
    /// Facebook and Google answers carry `Deprecation` and `Sunset: DATE` headers.
    #[arg(long, value_name = "DATE")]
    pub version_sunset: Option<NaiveDate>,
    /// Every Nth CleverTap cursor read answers "cursor expired".
    #[arg(long, value_name = "N")]
    pub cursor_expire_every: Option<u64>,
    /// CleverTap pages answer the cursor just read as `next_cursor` (paging that cycles).
    #[arg(long)]
    pub cursor_cycle: bool,
    /// Google operations per developer token per day (default 15000).
    #[arg(long, value_name = "N")]
    pub google_daily_quota: Option<u64>,
    /// Lifetime of Google access tokens in seconds (default 3599).
    #[arg(long, value_name = "SECS")]
    pub google_token_ttl_secs: Option<u64>,
}

#[derive(Args, Debug)]
pub struct TruthArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// First day (inclusive).
    #[arg(long)]
    pub since: NaiveDate,
    /// Last day (inclusive).
    #[arg(long)]
    pub until: NaiveDate,
}

fn options(d: &DataArgs, faults: Faults) -> SandboxOptions {
    let today = d.today.unwrap_or_else(|| chrono::Utc::now().date_naive());
    SandboxOptions {
        faults,
        ..SandboxOptions::new(d.seed, d.scale, today)
    }
}

pub async fn run(cmd: SandboxCommand) -> anyhow::Result<()> {
    match cmd {
        SandboxCommand::Truth(t) => {
            anyhow::ensure!(
                t.since <= t.until,
                "--since {} is after --until {}",
                t.since,
                t.until
            );
            let v = crate::truth(&options(&t.data, Faults::default()), t.since, t.until);
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        SandboxCommand::Serve(s) => {
            let faults = Faults {
                rate_limit_every: s.rate_limit_every,
                server_error_every: s.server_error_every,
                slow_ms: s.slow_ms,
                slow_every: s.slow_every,
                malformed_every: s.malformed_every,
                async_fail_every: s.async_fail_every,
                async_stall_every: s.async_stall_every,
                duplicate_every: s.duplicate_every,
                reduce_data_above: s.reduce_data_above,
                reduce_data_fields_above: s.reduce_data_fields_above,
                inconsistent_day: s.inconsistent_day,
                expired_token: s.expired_token,
                deprecated_version: s.deprecated_version,
                schema_change_after: s.schema_change_after,
                charged_change_on: s.charged_change_on,
                version_sunset: s.version_sunset,
                cursor_expire_every: s.cursor_expire_every,
                cursor_cycle: s.cursor_cycle,
                google_daily_quota: s.google_daily_quota,
                google_token_ttl_secs: s.google_token_ttl_secs,
            };
            let opts = options(&s.data, faults);
            let sandbox = crate::start(opts, s.port).await?;
            // Line 1 of stdout is the contract scripts parse.
            println!("sandbox listening on {}", sandbox.base_url());
            use std::io::Write;
            std::io::stdout().flush()?;
            shutdown_signal().await;
            sandbox.shutdown().await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
