//! Google Ads against the sandbox over real HTTP: the daily metric streams of
//! the manager's client customers equal `truth` exactly, with and without
//! faults (including access tokens that expire mid-run), a second-day run
//! re-reads only the look-back window, and the credential / customer / quota
//! failures are classified with the config key to fix.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{backfill, decode_page, extract, int, read_then_decode, spec, text, window};
use serde_json::{Map, Value};
use sluice_connectors::google_ads::api::stream_rows;
use sluice_connectors::google_ads::config::{
    BuiltinKeyword, GoogleConfig, GoogleStreamConfig, OAuthConfig,
};
use sluice_connectors::google_ads::GoogleSource;
use sluice_core::secret::Secret;
use sluice_core::source::{ErrorClass, Slice, Source, SourceError};
use sluice_sandbox::{credentials, Faults, SandboxOptions};

const TODAY: &str = "2024-10-01";
const SINCE: &str = "2024-09-01";
const UNTIL: &str = "2024-09-30";
const KEY: &str = "sources.google_ads";

/// The dated streams, with the truth row count each must match and its key columns.
const DAILY: [(&str, &str, &[&str]); 3] = [
    ("campaign_daily", "campaign_daily", &["campaign_id"]),
    ("ad_group_daily", "ad_group_daily", &["ad_group_id"]),
    ("ad_daily", "ad_group_ad_daily", &["ad_group_id", "ad_id"]),
];

fn options(today: &str, faults: Faults) -> SandboxOptions {
    let mut o = SandboxOptions::new(11, 1, today.parse().unwrap());
    o.faults = faults;
    o
}

fn oauth(refresh_token: &str) -> OAuthConfig {
    OAuthConfig {
        client_id: credentials::GOOGLE_CLIENT_ID.into(),
        client_secret: Secret::new(credentials::GOOGLE_CLIENT_SECRET),
        refresh_token: Secret::new(refresh_token),
    }
}

fn source(base_url: &str, tweak: impl FnOnce(&mut GoogleConfig)) -> GoogleSource {
    let mut config = GoogleConfig::new(
        Secret::new(credentials::GOOGLE_DEVELOPER_TOKEN),
        oauth(credentials::GOOGLE_REFRESH_TOKEN),
        base_url,
    );
    config.login_customer_id = Some(credentials::GOOGLE_MANAGER_CUSTOMER_ID.into());
    config.streams = Some(
        ["campaign_daily", "ad_group_daily", "ad_daily", "customers"]
            .into_iter()
            .map(|s| {
                (
                    s.to_string(),
                    GoogleStreamConfig::Keyword(BuiltinKeyword::Builtin),
                )
            })
            .collect(),
    );
    config.http.initial_backoff_ms = 20;
    config.http.max_backoff_ms = 200;
    config.http.requests_per_second = 0.0;
    tweak(&mut config);
    GoogleSource::new("google_ads", config, KEY).unwrap()
}

type Sums = BTreeMap<(String, String), (i64, i64, i64)>;

/// (customer, day) → (impressions, clicks, cost_micros) from extracted rows.
fn sums(rows: &[Map<String, Value>]) -> Sums {
    let mut out = Sums::new();
    for r in rows {
        let e = out
            .entry((text(r.get("customer_id")), text(r.get("date"))))
            .or_default();
        e.0 += int(r.get("impressions"));
        e.1 += int(r.get("clicks"));
        e.2 += int(r.get("cost_micros"));
    }
    out
}

fn truth_sums(truth: &Value) -> Sums {
    truth["google"]["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                (text(d.get("customer_id")), text(d.get("date"))),
                (
                    int(d.get("impressions")),
                    int(d.get("clicks")),
                    int(d.get("cost_micros")),
                ),
            )
        })
        .collect()
}

/// Every row's key is unique: duplicates (injected or from retries) were dropped.
fn assert_unique(stream: &str, rows: &[Map<String, Value>], key: &[&str]) {
    let mut seen = BTreeSet::new();
    for r in rows {
        let mut k = vec![text(r.get("customer_id")), text(r.get("date"))];
        k.extend(key.iter().map(|c| text(r.get(*c))));
        assert!(k.iter().all(|v| !v.is_empty()), "{stream}: empty key {k:?}");
        assert!(seen.insert(k.clone()), "{stream}: duplicate row {k:?}");
    }
}

/// Every daily stream of `SINCE..=UNTIL` equals truth; returns the run time.
async fn assert_exact(faults: Faults) -> Duration {
    let opts = options(TODAY, faults);
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    let google = source(&sandbox.base_url(), |c| c.slice_days = 10);
    let run = backfill(TODAY, SINCE, UNTIL);
    let truth = sluice_sandbox::truth(&opts, SINCE.parse().unwrap(), UNTIL.parse().unwrap());
    let expected = truth_sums(&truth);
    assert!(!expected.is_empty());
    let clients: BTreeSet<String> = truth["google"]["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| text(c.get("customer_id")))
        .collect();
    assert_eq!(clients.len(), 3);
    let started = Instant::now();
    let results = futures::future::join_all(
        DAILY
            .iter()
            .map(|(stream, _, _)| extract(&google, stream, None, &run)),
    )
    .await;
    let elapsed = started.elapsed();
    for ((stream, truth_rows, key), result) in DAILY.iter().zip(results) {
        let e = result.unwrap_or_else(|e| panic!("{stream}: {e:?}"));
        // Three clients (the manager has no metrics) × three 10-day windows.
        assert_eq!(e.slices, 9, "{stream}");
        assert_eq!(sums(&e.rows), expected, "{stream}");
        assert_eq!(
            e.rows.len() as i64,
            int(truth["google"]["rows"].get(*truth_rows)),
            "{stream}"
        );
        assert_unique(stream, &e.rows, key);
        assert!(e.rejected.is_empty(), "{stream}");
        for r in &e.rows {
            assert!(clients.contains(&text(r.get("customer_id"))), "{stream}");
            let day = text(r.get("date"));
            assert!(SINCE <= day.as_str() && day.as_str() <= UNTIL, "{day}");
            assert!(!text(r.get("customer_currency")).is_empty());
            assert_eq!(
                text(r.get("cost"))
                    .parse::<rust_decimal::Decimal>()
                    .unwrap(),
                rust_decimal::Decimal::new(int(r.get("cost_micros")), 6)
            );
        }
    }
    let customers = extract(&google, "customers", None, &run).await.unwrap();
    let got: BTreeSet<String> = customers
        .rows
        .iter()
        .map(|r| text(r.get("customer_id")))
        .collect();
    assert_eq!(got, clients);
    assert_eq!(customers.rows.len(), clients.len());
    sandbox.shutdown().await;
    elapsed
}

#[tokio::test]
async fn daily_metrics_match_truth_exactly() {
    assert_exact(Faults::default()).await;
}

#[tokio::test]
async fn daily_metrics_match_truth_under_faults() {
    let ttl = 1;
    let faults = Faults {
        server_error_every: Some(7),
        rate_limit_every: Some(11),
        malformed_every: Some(13),
        duplicate_every: Some(3),
        google_token_ttl_secs: Some(ttl),
        ..Faults::default()
    };
    let elapsed = assert_exact(faults).await;
    // Rate limits ask for 1 s each, so the run outlives the first 1 s access token:
    // the requests after the pause needed refreshed tokens. (No margin on top: how
    // much work follows the last pause depends on how the faults fall.)
    assert!(
        elapsed > Duration::from_secs(ttl),
        "the run ({elapsed:?}) did not outlive the token lifetime"
    );
}

#[tokio::test]
async fn tokens_expiring_between_requests_are_refreshed() {
    // Every response is slow and tokens live 1 s: most requests find their token
    // expired or about to expire.
    let faults = Faults {
        google_token_ttl_secs: Some(1),
        slow_ms: Some(300),
        ..Faults::default()
    };
    let opts = options(TODAY, faults);
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    let google = source(&sandbox.base_url(), |c| {
        c.slice_days = 3;
        c.max_concurrency = 2;
    });
    let (since, until) = ("2024-09-19", "2024-09-30");
    let started = Instant::now();
    let e = extract(
        &google,
        "campaign_daily",
        None,
        &backfill(TODAY, since, until),
    )
    .await
    .unwrap();
    assert!(started.elapsed() > Duration::from_millis(1500));
    let truth = sluice_sandbox::truth(&opts, since.parse().unwrap(), until.parse().unwrap());
    assert_eq!(sums(&e.rows), truth_sums(&truth));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_absurd_token_lifetime_neither_panics_nor_is_trusted() {
    // `expires_in: 18446744073709551615` once overflowed `Instant + lifetime` (a panic
    // that left the run record `running`); the lifetime is now capped.
    let faults = Faults {
        google_token_ttl_secs: Some(u64::MAX),
        ..Faults::default()
    };
    let opts = options(TODAY, faults);
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    let google = source(&sandbox.base_url(), |_| {});
    let (since, until) = ("2024-09-28", "2024-09-30");
    let e = extract(
        &google,
        "campaign_daily",
        None,
        &backfill(TODAY, since, until),
    )
    .await
    .unwrap();
    let truth = sluice_sandbox::truth(&opts, since.parse().unwrap(), until.parse().unwrap());
    assert_eq!(sums(&e.rows), truth_sums(&truth));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn second_day_refetches_only_the_lookback_window() {
    let lookback = 7;
    let tweak = |c: &mut GoogleConfig| {
        c.start_date = Some(SINCE.parse().unwrap());
        c.lookback_days = lookback;
    };
    let opts = options(TODAY, Faults::default());
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    let google = source(&sandbox.base_url(), tweak);
    let first = extract(&google, "campaign_daily", None, &window(TODAY))
        .await
        .unwrap();
    let truth = sluice_sandbox::truth(&opts, SINCE.parse().unwrap(), TODAY.parse().unwrap());
    assert_eq!(sums(&first.rows), truth_sums(&truth));
    assert_eq!(
        first.cursor_after,
        Some(serde_json::json!({"until": TODAY}))
    );
    sandbox.shutdown().await;

    // The next "day": a sandbox whose recent days changed (late clicks and cost).
    let next_day = "2024-10-02";
    let lookback_start = "2024-09-25"; // the last loaded day minus (look-back − 1)
    let opts2 = options(next_day, Faults::default());
    let sandbox = sluice_sandbox::start(opts2.clone(), 0).await.unwrap();
    let google = source(&sandbox.base_url(), tweak);
    let stream = spec(&google, "campaign_daily");
    let plan = google
        .plan(&stream, first.cursor_after.as_ref(), &window(next_day))
        .await
        .unwrap();
    assert_eq!(plan.slices.len(), 3, "one slice per client");
    for slice in &plan.slices {
        assert_eq!(
            slice.params["window"],
            serde_json::json!({"since": lookback_start, "until": next_day}),
            "{}",
            slice.key
        );
    }
    let before = sandbox.request_count();
    let second = extract(
        &google,
        "campaign_daily",
        first.cursor_after.as_ref(),
        &window(next_day),
    )
    .await
    .unwrap();
    // Customers are cached from plan(): one searchStream per client and nothing else.
    assert_eq!(sandbox.request_count() - before, 3);
    let days: BTreeSet<String> = second.rows.iter().map(|r| text(r.get("date"))).collect();
    assert_eq!(
        days.first().map(String::as_str),
        Some(lookback_start),
        "re-read outside the look-back"
    );
    assert_eq!(days.last().map(String::as_str), Some(next_day));
    let truth2 = sluice_sandbox::truth(
        &opts2,
        lookback_start.parse().unwrap(),
        next_day.parse().unwrap(),
    );
    assert_eq!(sums(&second.rows), truth_sums(&truth2));
    assert_unique("campaign_daily", &second.rows, &["campaign_id"]);
    // The re-read days really changed: re-reading them was necessary.
    let old = truth_sums(&truth);
    assert!(truth_sums(&truth2)
        .iter()
        .any(|(k, v)| old.get(k).is_some_and(|o| o != v)));
    assert_eq!(
        second.cursor_after,
        Some(serde_json::json!({"until": next_day}))
    );
    sandbox.shutdown().await;
}

async fn failure(faults: Faults, tweak: impl FnOnce(&mut GoogleConfig)) -> (SourceError, u64) {
    let opts = options(TODAY, faults);
    let sandbox = sluice_sandbox::start(opts, 0).await.unwrap();
    let google = source(&sandbox.base_url(), tweak);
    let err = extract(
        &google,
        "campaign_daily",
        None,
        &backfill(TODAY, SINCE, UNTIL),
    )
    .await
    .err()
    .expect("an error");
    let requests = sandbox.request_count();
    sandbox.shutdown().await;
    (err, requests)
}

fn assert_config(e: &SourceError, key: &str) {
    assert_eq!(
        (e.class, e.config_key.as_deref()),
        (
            ErrorClass::Configuration,
            Some(format!("{KEY}.{key}").as_str())
        ),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn expired_token_names_the_refresh_token() {
    let faults = Faults {
        expired_token: true,
        ..Faults::default()
    };
    let (e, requests) = failure(faults, |_| {}).await;
    assert_config(&e, "oauth.refresh_token");
    assert!(e.message.contains("OAUTH_TOKEN_EXPIRED"), "{}", e.message);
    // One refresh, not a loop: token + call, refreshed token + call.
    assert!(requests <= 4, "{requests} requests");
}

#[tokio::test]
async fn revoked_refresh_token_names_the_refresh_token() {
    let (e, _) = failure(Faults::default(), |c| {
        c.oauth = oauth("refresh-token-of-someone-else")
    })
    .await;
    assert_config(&e, "oauth.refresh_token");
    assert!(
        !e.message.contains("someone-else"),
        "secret leaked: {}",
        e.message
    );
}

#[tokio::test]
async fn wrong_developer_token_names_developer_token() {
    let (e, requests) = failure(Faults::default(), |c| {
        c.developer_token = Secret::new("not-the-developer-token")
    })
    .await;
    assert_config(&e, "developer_token");
    assert!(
        !e.message.contains("not-the-developer-token"),
        "secret leaked: {}",
        e.message
    );
    assert!(requests <= 4, "{requests} requests");
}

#[tokio::test]
async fn wrong_customer_id_names_customer_ids() {
    let (e, _) = failure(Faults::default(), |c| {
        c.customer_ids = Some(vec!["123-456-7890".into()])
    })
    .await;
    assert_config(&e, "customer_ids");
    assert!(e.message.contains("1234567890"), "{}", e.message);
}

#[tokio::test]
async fn wrong_login_customer_id_names_login_customer_id() {
    let (e, _) = failure(Faults::default(), |c| {
        c.login_customer_id = Some("123-456-7890".into())
    })
    .await;
    assert_config(&e, "login_customer_id");
}

#[tokio::test]
async fn exhausted_daily_quota_stops_quickly_with_a_clear_error() {
    // Discovery takes two operations (the manager, its clients); then one client's
    // window fits before the quota runs out.
    let faults = Faults {
        google_daily_quota: Some(3),
        ..Faults::default()
    };
    let started = Instant::now();
    let (e, requests) = failure(faults, |c| c.max_concurrency = 1).await;
    assert!(
        e.message.contains("daily") && e.message.contains("quota"),
        "{}",
        e.message
    );
    assert_ne!(e.class, ErrorClass::NeedsSplitting);
    // Not retried in the client (the quota resets tomorrow, not in 86400 s of sleeping).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Once seen, the exhausted quota is remembered: the other slices (and their
    // retries) fail without asking again. Token + 2 discovery + 1 window + the refusal.
    assert!(requests <= 5, "{requests} requests");
}

/// Rows a landed searchStream answer carries.
fn google_rows(body: &[u8]) -> usize {
    stream_rows(serde_json::from_slice(body).unwrap()).0.len()
}

#[tokio::test]
async fn landed_pages_decode_to_the_records_read_handed_over() {
    let faults = Faults {
        server_error_every: Some(5),
        rate_limit_every: Some(11),
        malformed_every: Some(13),
        duplicate_every: Some(2),
        ..Faults::default()
    };
    let opts = options(TODAY, faults);
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    // One retry per request: some slices fail and are read again whole.
    let google = source(&sandbox.base_url(), |c| {
        c.slice_days = 10;
        c.http.max_retries = 1;
    });
    let run = backfill(TODAY, SINCE, UNTIL);
    let truth = sluice_sandbox::truth(&opts, SINCE.parse().unwrap(), UNTIL.parse().unwrap());
    let (mut failed_attempts, mut repeated_rows) = (0, 0);
    for (stream, truth_rows, _) in DAILY {
        let counts = read_then_decode(&google, stream, &run, google_rows).await;
        assert_eq!(counts.slices, 9, "{stream}");
        // One searchStream answer per slice (the token answers are not landed).
        assert_eq!(counts.pages, 9, "{stream}");
        // The duplicates the sandbox injected were dropped by read and decode alike.
        assert_eq!(
            counts.records as i64,
            int(truth["google"]["rows"].get(truth_rows)),
            "{stream}"
        );
        repeated_rows += counts.landed_rows - counts.records;
        failed_attempts += counts.failed_attempts;
    }
    // Which pages the every-2nd duplicates hit depends on interleaving: checked over
    // all three streams (27 pages).
    assert!(repeated_rows > 0, "no repeated rows landed");
    let customers = read_then_decode(&google, "customers", &run, google_rows).await;
    assert_eq!((customers.slices, customers.records), (3, 3));
    failed_attempts += customers.failed_attempts;
    // Whether a whole slice fails depends on how concurrent requests meet the
    // sandbox's every-Nth faults: report it rather than fail a busy machine's run.
    if failed_attempts == 0 {
        eprintln!("note: no slice was retried whole in this run");
    }
    sandbox.shutdown().await;

    // Pages without records decode to nothing, never to an error.
    let stream = spec(&google, "campaign_daily");
    let slice = Slice {
        key: "1/2024-09-01..2024-09-10".into(),
        params: serde_json::json!({"customer_id": "1", "window": {"since": "2024-09-01", "until": "2024-09-10"}}),
    };
    for body in [
        r#"[{"fieldMask":"campaign.id,segments.date","requestId":"r"}]"#,
        r#"[]"#,
        r#"{"error":{"code":503,"status":"UNAVAILABLE","message":"x"}}"#,
        r#"{"access_token":"t","expires_in":3600,"token_type":"Bearer"}"#,
    ] {
        let decoded = decode_page(&google, &stream, &slice, body.as_bytes()).unwrap();
        assert!(
            decoded.records.is_empty() && decoded.rejected.is_empty(),
            "{body}"
        );
    }
    // Without the slice as planned (a run before slice manifests), the customer's
    // currency and time zone are unknown: an error, not rows without them.
    let unplanned = Slice {
        key: "replay/r/s00001".into(),
        params: Value::Null,
    };
    let e = decode_page(&google, &stream, &unplanned, b"[]").unwrap_err();
    assert_eq!(e.class, ErrorClass::Data, "{}", e.message);
}
