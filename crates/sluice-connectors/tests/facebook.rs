//! Facebook Ads against the sandbox over real HTTP: exact totals vs `truth`,
//! with and without faults, requests too big even for one campaign-day read in
//! field groups, the config-error cases and a second-day run.

mod common;

use std::collections::BTreeMap;

use common::{backfill, extract, int, read_then_decode, text, window};
use rust_decimal::Decimal;
use serde_json::Value;
use sluice_connectors::facebook_ads::config::{
    EntityConfig, FacebookConfig, FacebookStreams, InsightsConfig, Level,
};
use sluice_connectors::facebook_ads::FacebookSource;
use sluice_core::secret::Secret;
use sluice_core::source::ErrorClass;
use sluice_sandbox::{credentials, Faults, SandboxOptions};

const TODAY: &str = "2024-10-01";
const SINCE: &str = "2024-07-01";
const UNTIL: &str = "2024-09-30";

fn options(faults: Faults) -> SandboxOptions {
    let mut o = SandboxOptions::new(7, 1, TODAY.parse().unwrap());
    o.faults = faults;
    o
}

fn source(base_url: &str, token: &str, tweak: impl FnOnce(&mut FacebookConfig)) -> FacebookSource {
    let mut config = FacebookConfig::new(Secret::new(token), base_url);
    config.streams = Some(FacebookStreams {
        insights: Some(InsightsConfig {
            level: Level::Ad,
            fields: [
                "impressions",
                "clicks",
                "spend",
                "reach",
                "frequency",
                "actions",
            ]
            .map(String::from)
            .to_vec(),
            action_attribution_windows: ["1d_click", "7d_click", "1d_view"]
                .map(String::from)
                .to_vec(),
            ..InsightsConfig::default()
        }),
        insights_actions: Some(EntityConfig::default()),
        campaigns: Some(EntityConfig::default()),
        adsets: Some(EntityConfig::default()),
        ads: Some(EntityConfig::default()),
        ad_accounts: Some(EntityConfig::default()),
    });
    config.http.initial_backoff_ms = 20;
    config.http.max_backoff_ms = 500;
    config.async_stall_secs = 1;
    tweak(&mut config);
    FacebookSource::new("facebook", config, "sources.facebook").unwrap()
}

/// (account, day) → (impressions, clicks, spend) from extracted rows.
fn sums(
    rows: &[serde_json::Map<String, Value>],
) -> BTreeMap<(String, String), (i64, i64, Decimal)> {
    let mut out = BTreeMap::new();
    for r in rows {
        let account = text(r.get("account_id"));
        let account = if account.starts_with("act_") {
            account
        } else {
            format!("act_{account}")
        };
        let e = out
            .entry((account, text(r.get("date_start"))))
            .or_insert((0, 0, Decimal::ZERO));
        e.0 += int(r.get("impressions"));
        e.1 += int(r.get("clicks"));
        e.2 += text(r.get("spend")).parse::<Decimal>().unwrap_or_default();
    }
    out
}

fn truth_sums(truth: &Value) -> BTreeMap<(String, String), (i64, i64, Decimal)> {
    let mut out = BTreeMap::new();
    for d in truth["facebook"]["days"].as_array().unwrap() {
        let spend: Decimal = text(d.get("spend")).parse().unwrap();
        let (i, c) = (int(d.get("impressions")), int(d.get("clicks")));
        if i == 0 && c == 0 && spend.is_zero() {
            continue;
        }
        out.insert(
            (text(d.get("account_id")), text(d.get("date"))),
            (i, c, spend),
        );
    }
    out
}

fn nonzero(
    map: BTreeMap<(String, String), (i64, i64, Decimal)>,
) -> BTreeMap<(String, String), (i64, i64, Decimal)> {
    map.into_iter()
        .filter(|(_, v)| !(v.0 == 0 && v.1 == 0 && v.2.is_zero()))
        .collect()
}

/// A sandbox with `faults`, its options (for the truth) and a [`source`] reading it.
async fn sandbox_and_source(
    faults: Faults,
) -> (
    SandboxOptions,
    sluice_sandbox::RunningSandbox,
    FacebookSource,
) {
    let opts = options(faults);
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        |_| {},
    );
    (opts, sandbox, fb)
}

async fn assert_exact(faults: Faults) {
    let (opts, sandbox, fb) = sandbox_and_source(faults).await;
    let run = backfill(TODAY, SINCE, UNTIL);
    let insights = extract(&fb, "insights", None, &run).await.unwrap();
    let truth = sluice_sandbox::truth(&opts, SINCE.parse().unwrap(), UNTIL.parse().unwrap());
    assert_eq!(nonzero(sums(&insights.rows)), truth_sums(&truth));
    assert_eq!(
        insights.rows.len() as i64,
        int(truth["facebook"]["rows"].get("insights_ad"))
    );
    assert!(insights.rejected.is_empty());
    for row in &insights.rows {
        assert!(
            !text(row.get("account_currency")).is_empty()
                && !text(row.get("account_timezone")).is_empty()
        );
    }
    // Three accounts × 92 days is one job per account-month, not one per day.
    assert!(insights.slices <= 9, "{} slices", insights.slices);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn insights_match_truth_exactly() {
    assert_exact(Faults::default()).await;
}

#[tokio::test]
async fn insights_match_truth_under_faults() {
    let faults = Faults {
        server_error_every: Some(7),
        rate_limit_every: Some(11),
        async_fail_every: Some(2),
        malformed_every: Some(13),
        duplicate_every: Some(3),
        async_stall_every: Some(5),
        ..Faults::default()
    };
    assert_exact(faults).await;
}

/// `max_concurrency` caps the requests in flight, not the slices: a slice waiting on
/// its report run leaves the requests to the others, so more report runs are open at
/// once than requests are in flight, and the rows are still exactly the truth.
#[tokio::test]
async fn max_concurrency_caps_requests_while_more_report_runs_wait() {
    let opts = options(Faults {
        slow_ms: Some(15),
        ..Faults::default()
    });
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        |c| {
            c.max_concurrency = 2;
        },
    );
    let insights = extract(&fb, "insights", None, &backfill(TODAY, SINCE, UNTIL))
        .await
        .unwrap();
    let truth = sluice_sandbox::truth(&opts, SINCE.parse().unwrap(), UNTIL.parse().unwrap());
    assert_eq!(nonzero(sums(&insights.rows)), truth_sums(&truth));
    let counters = sandbox.counters();
    let in_flight = int(counters.get("peak_in_flight"));
    let open_runs = int(counters.get("facebook_peak_open_report_runs"));
    assert!(
        (1..=2).contains(&in_flight),
        "{in_flight} requests at once with max_concurrency 2"
    );
    assert!(
        open_runs > 2,
        "only {open_runs} report runs open at once: waiting slices held the requests"
    );
    sandbox.shutdown().await;
}

/// A report run's polls are spaced from one request's start to the next's: when the
/// API answers more slowly than the poll interval, the next poll follows the answer
/// at once instead of waiting the interval again. Without latency they are still the
/// first interval (50 ms) apart, so a fast API is not polled harder (measured by
/// arrival at the sandbox: 45 ms leaves room for one request's trip being quicker).
#[tokio::test]
async fn report_runs_are_polled_at_intervals_from_start_to_start() {
    for (latency_ms, shortest_allowed, shortest_expected_below) in
        [(None, 45, None), (Some(300), 290, Some(345))]
    {
        let (opts, sandbox, fb) = sandbox_and_source(Faults {
            slow_ms: latency_ms,
            ..Faults::default()
        })
        .await;
        let insights = extract(&fb, "insights", None, &backfill(TODAY, SINCE, UNTIL))
            .await
            .unwrap();
        let truth = sluice_sandbox::truth(&opts, SINCE.parse().unwrap(), UNTIL.parse().unwrap());
        assert_eq!(nonzero(sums(&insights.rows)), truth_sums(&truth));
        let shortest = int(sandbox.counters().get("facebook_shortest_poll_interval_ms"));
        assert!(
            shortest >= shortest_allowed,
            "latency {latency_ms:?}: two requests about one report run {shortest} ms apart"
        );
        // Waiting the interval after each answer made every poll at least latency +
        // 50 ms after the one before.
        if let Some(below) = shortest_expected_below {
            assert!(
                shortest < below,
                "latency {latency_ms:?}: every poll waited a pause after the answer before it ({shortest} ms apart at the closest)"
            );
        }
        sandbox.shutdown().await;
    }
}

async fn config_error(faults: Faults, token: &str) -> sluice_core::source::SourceError {
    let opts = options(faults);
    let sandbox = sluice_sandbox::start(opts, 0).await.unwrap();
    let fb = source(&sandbox.base_url(), token, |_| {});
    let err = extract(&fb, "insights", None, &window(TODAY))
        .await
        .err()
        .expect("a configuration error");
    sandbox.shutdown().await;
    err
}

#[tokio::test]
async fn expired_token_names_access_token() {
    let e = config_error(
        Faults {
            expired_token: true,
            ..Faults::default()
        },
        credentials::FACEBOOK_ACCESS_TOKEN,
    )
    .await;
    assert_eq!(
        (e.class, e.config_key.as_deref()),
        (
            ErrorClass::Configuration,
            Some("sources.facebook.access_token")
        )
    );
    assert!(!e.message.contains(credentials::FACEBOOK_ACCESS_TOKEN));
}

#[tokio::test]
async fn wrong_token_names_access_token() {
    let e = config_error(Faults::default(), "not-the-sandbox-token").await;
    assert_eq!(
        (e.class, e.config_key.as_deref()),
        (
            ErrorClass::Configuration,
            Some("sources.facebook.access_token")
        )
    );
}

#[tokio::test]
async fn deprecated_version_names_api_version() {
    let e = config_error(
        Faults {
            deprecated_version: true,
            ..Faults::default()
        },
        credentials::FACEBOOK_ACCESS_TOKEN,
    )
    .await;
    assert_eq!(
        (e.class, e.config_key.as_deref()),
        (
            ErrorClass::Configuration,
            Some("sources.facebook.api_version")
        )
    );
}

#[tokio::test]
async fn second_day_refetches_only_the_lookback_window() {
    let opts = options(Faults::default());
    let sandbox = sluice_sandbox::start(opts, 0).await.unwrap();
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        |c| c.start_date = Some(SINCE.parse().unwrap()),
    );
    let first = extract(&fb, "insights", None, &window(TODAY))
        .await
        .unwrap();
    sandbox.shutdown().await;
    // The next "day": a new sandbox whose recent 28 days changed.
    let next_day = "2024-10-02";
    let opts2 = SandboxOptions::new(7, 1, next_day.parse().unwrap());
    let sandbox = sluice_sandbox::start(opts2.clone(), 0).await.unwrap();
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        |c| c.start_date = Some(SINCE.parse().unwrap()),
    );
    let second = extract(
        &fb,
        "insights",
        first.cursor_after.as_ref(),
        &window(next_day),
    )
    .await
    .unwrap();
    let days: std::collections::BTreeSet<String> = second
        .rows
        .iter()
        .map(|r| text(r.get("date_start")))
        .collect();
    assert!(
        days.iter().all(|d| d.as_str() >= "2024-09-04"),
        "re-read outside the look-back: {:?}",
        days.first()
    );
    let truth = sluice_sandbox::truth(
        &opts2,
        "2024-09-04".parse().unwrap(),
        next_day.parse().unwrap(),
    );
    assert_eq!(nonzero(sums(&second.rows)), truth_sums(&truth));
    assert_eq!(
        second.cursor_after,
        Some(serde_json::json!({"until": next_day}))
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn entities_and_actions_are_complete() {
    let (opts, sandbox, fb) = sandbox_and_source(Faults {
        duplicate_every: Some(2),
        ..Faults::default()
    })
    .await;
    let run = backfill(TODAY, SINCE, UNTIL);
    let truth = sluice_sandbox::truth(&opts, SINCE.parse().unwrap(), UNTIL.parse().unwrap());
    for stream in ["campaigns", "adsets", "ads"] {
        let e = extract(&fb, stream, None, &run).await.unwrap();
        assert_eq!(
            e.rows.len() as i64,
            int(truth["facebook"]["rows"].get(stream)),
            "{stream}"
        );
    }
    let actions = extract(&fb, "insights_actions", None, &run).await.unwrap();
    assert!(!actions.rows.is_empty());
    assert!(actions
        .rows
        .iter()
        .all(|r| !text(r.get("action_type")).is_empty()));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn landed_pages_carry_no_credential_and_still_page() {
    // With an app secret every request carries `appsecret_proof`, and Graph echoes the
    // query into `paging.next`: the landed pages must not keep it.
    let opts = options(Faults::default());
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    let app_secret = "landed-pages-app-secret-1234";
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        |c| {
            c.app_secret = Some(Secret::new(app_secret));
            c.page_size = 3;
        },
    );
    let proof = {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(app_secret.as_bytes()).unwrap();
        mac.update(credentials::FACEBOOK_ACCESS_TOKEN.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let run = backfill(TODAY, SINCE, UNTIL);
    let truth = sluice_sandbox::truth(&opts, SINCE.parse().unwrap(), UNTIL.parse().unwrap());
    let e = extract(&fb, "ads", None, &run).await.unwrap();
    assert_eq!(
        e.rows.len() as i64,
        int(truth["facebook"]["rows"].get("ads"))
    );
    let landed: Vec<String> = e
        .landed
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        landed.iter().any(|p| p.contains("appsecret_proof=***")),
        "no page had a next URL: {landed:?}"
    );
    for page in &landed {
        assert!(
            !page.contains(&proof),
            "a landed page keeps the proof: {page}"
        );
        assert!(!page.contains(credentials::FACEBOOK_ACCESS_TOKEN), "{page}");
        serde_json::from_str::<Value>(page).expect("still JSON");
    }
    sandbox.shutdown().await;
}

/// The rows of an insights read by (account, ad, day), for comparing whole rows.
fn by_key(
    rows: &[serde_json::Map<String, Value>],
) -> BTreeMap<(String, String, String), serde_json::Map<String, Value>> {
    let mut out = BTreeMap::new();
    for r in rows {
        let key = (
            text(r.get("account_id")),
            text(r.get("ad_id")),
            text(r.get("date_start")),
        );
        assert!(
            out.insert(key.clone(), r.clone()).is_none(),
            "row twice: {key:?}"
        );
    }
    out
}

#[tokio::test]
async fn too_many_fields_are_read_in_groups_and_merged_exactly() {
    // 5 days: the report run fails, its sync windows and then each day, each
    // campaign-day too, so every row comes from field groups (17 fields asked,
    // at most 9 per request: 4 identity fields + the others in 4 groups).
    let (since, until) = ("2024-09-10", "2024-09-14");
    let run = backfill(TODAY, since, until);
    let opts = options(Faults {
        reduce_data_fields_above: Some(9),
        ..Faults::default()
    });
    // No request budget: this many small requests would otherwise wait on it.
    let unbudgeted = |c: &mut FacebookConfig| c.http.requests_per_second = 0.0;
    let sandbox = sluice_sandbox::start(opts.clone(), 0).await.unwrap();
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        unbudgeted,
    );
    let split = extract(&fb, "insights", None, &run).await.unwrap();

    // Loaded rows equal the sandbox truth: rows, impressions, clicks, spend per day.
    let truth = sluice_sandbox::truth(&opts, since.parse().unwrap(), until.parse().unwrap());
    assert_eq!(nonzero(sums(&split.rows)), truth_sums(&truth));
    assert_eq!(
        split.rows.len() as i64,
        int(truth["facebook"]["rows"].get("insights_ad"))
    );
    assert!(split.rejected.is_empty());

    // And each row is the row one unsplit request gives, every field of it.
    let clean = sluice_sandbox::start(options(Faults::default()), 0)
        .await
        .unwrap();
    let fb_clean = source(
        &clean.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        |_| {},
    );
    let unsplit = extract(&fb_clean, "insights", None, &run).await.unwrap();
    assert!(unsplit.warnings.is_empty(), "{:?}", unsplit.warnings);
    let (split_rows, unsplit_rows) = (by_key(&split.rows), by_key(&unsplit.rows));
    assert_eq!(split_rows.len(), unsplit_rows.len());
    for (key, row) in &unsplit_rows {
        assert_eq!(split_rows.get(key), Some(row), "{key:?}");
    }
    clean.shutdown().await;

    // The split is reported once per slice, and the ad rows still add up to the
    // account totals (no reconciliation warning).
    assert_eq!(split.slices, 3);
    assert_eq!(split.warnings.len(), 3, "{:?}", split.warnings);
    for w in &split.warnings {
        assert!(
            w.contains("too much data even split by campaign")
                && w.contains("requests of fewer fields each"),
            "{w}"
        );
    }

    sandbox.shutdown().await;

    // A replay decodes the landed pages to the same records: group pages are kept
    // as received and the merged page after them is what decodes. (A fresh sandbox:
    // the first read's calls would count towards this one's usage and slow it down.)
    let sandbox = sluice_sandbox::start(opts, 0).await.unwrap();
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        unbudgeted,
    );
    let counts = read_then_decode(&fb, "insights", &run, |body| {
        let page: Value = serde_json::from_slice(body).unwrap();
        page["data"].as_array().map_or(0, Vec::len)
    })
    .await;
    assert_eq!(counts.records, split.rows.len());
    assert!(
        counts.landed_rows > counts.records,
        "the field-group pages were landed too"
    );
    sandbox.shutdown().await;
}

/// A listed account that is not an id is a config error naming `accounts`, before
/// any request; one the token cannot reach fails the stream when its slices are
/// prepared, not silently.
#[tokio::test]
async fn a_listed_account_that_is_not_an_id_names_accounts_before_any_request() {
    let sandbox = sluice_sandbox::start(options(Faults::default()), 0)
        .await
        .unwrap();
    let before = sandbox.request_count();
    let listing = |id: &str| {
        let accounts = vec![id.to_string()];
        source(
            &sandbox.base_url(),
            credentials::FACEBOOK_ACCESS_TOKEN,
            move |c| c.accounts = sluice_connectors::facebook_ads::config::Accounts::List(accounts),
        )
    };
    let fb = listing("act_1/../me");
    let e = extract(&fb, "insights", None, &window(TODAY))
        .await
        .err()
        .expect("a configuration error");
    assert_eq!(
        (e.class, e.config_key.as_deref()),
        (ErrorClass::Configuration, Some("sources.facebook.accounts")),
        "{e}"
    );
    assert!(e.message.contains("act_1/../me"), "{e}");
    assert_eq!(sandbox.request_count(), before, "no request was made");

    let fb = listing("act_999");
    let e = extract(&fb, "campaigns", None, &window(TODAY))
        .await
        .err()
        .expect("an unreachable account fails the stream");
    assert!(e.message.contains("999"), "{e}");
    sandbox.shutdown().await;
}

/// An insights slice looks its account up alongside its first request, not before
/// it: with each request taking 150 ms, the lookup and the slice's request are in
/// flight together (before, the stream's slices waited for their accounts' lookups).
#[tokio::test]
async fn an_insights_slice_looks_its_account_up_alongside_its_first_request() {
    let opts = options(Faults {
        slow_ms: Some(150),
        ..Faults::default()
    });
    let sandbox = sluice_sandbox::start(opts, 0).await.unwrap();
    let listed = vec!["act_284019000000001".to_string()];
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        move |c| {
            c.accounts = sluice_connectors::facebook_ads::config::Accounts::List(listed);
            // No account totals alongside: the slice's only other request is the lookup.
            if let Some(insights) = c.streams.as_mut().and_then(|s| s.insights.as_mut()) {
                insights.reconcile = false;
            }
        },
    );
    let before = sandbox.request_count();
    // One day: one slice, read with one synchronous request.
    let run = backfill(TODAY, UNTIL, UNTIL);
    let insights = extract(&fb, "insights", None, &run).await.unwrap();
    assert_eq!(insights.slices, 1);
    assert!(!insights.rows.is_empty());
    for row in &insights.rows {
        assert!(!text(row.get("account_timezone")).is_empty(), "{row:?}");
    }
    assert_eq!(
        sandbox.request_count() - before,
        2,
        "one lookup, one page of rows"
    );
    assert_eq!(
        int(sandbox.counters().get("peak_in_flight")),
        2,
        "the lookup and the slice's request were not in flight together"
    );
    sandbox.shutdown().await;
}

/// Streams that prepare at once share each account's lookup and look up different
/// accounts at once: two callers asking for accounts {0, 1} and {1, 2} make three
/// requests, all in flight together (before, the second waited for the first's
/// lookups, so at most two were in flight).
#[tokio::test]
async fn streams_preparing_at_once_look_up_each_account_once_and_together() {
    let opts = options(Faults {
        slow_ms: Some(150),
        ..Faults::default()
    });
    let sandbox = sluice_sandbox::start(opts, 0).await.unwrap();
    // Account i of the sandbox is 284019000000001 + 17·i (docs/sandbox.md); scale 1 has 3.
    let ids: Vec<String> = (0..3)
        .map(|i| format!("act_{}", 284019000000001u64 + 17 * i))
        .collect();
    let listed = ids.clone();
    let fb = source(
        &sandbox.base_url(),
        credentials::FACEBOOK_ACCESS_TOKEN,
        move |c| c.accounts = sluice_connectors::facebook_ads::config::Accounts::List(listed),
    );
    let before = sandbox.request_count();
    let (first, second) = tokio::join!(fb.accounts(&ids[..2]), fb.accounts(&ids[1..]));
    let names = |accounts: Vec<sluice_connectors::facebook_ads::Account>| -> Vec<String> {
        accounts.into_iter().map(|a| a.id).collect()
    };
    assert_eq!(names(first.unwrap()), ids[..2]);
    assert_eq!(names(second.unwrap()), ids[1..]);
    assert_eq!(
        sandbox.request_count() - before,
        3,
        "one lookup per account"
    );
    let in_flight = int(sandbox.counters().get("peak_in_flight"));
    assert_eq!(
        in_flight, 3,
        "the three lookups were not all in flight together"
    );
    sandbox.shutdown().await;
}
