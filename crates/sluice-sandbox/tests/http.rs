//! Drives every sandbox endpoint over real HTTP (port 0) and checks the
//! documented shapes, every fault, and that `truth` equals a full paged read.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sluice_sandbox::{credentials as cred, start, truth, Faults, RunningSandbox, SandboxOptions};

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

const TODAY: &str = "2024-10-01";
const SINCE: &str = "2024-07-01";
const UNTIL: &str = "2024-09-30";

fn opts(faults: Faults) -> SandboxOptions {
    SandboxOptions {
        faults,
        ..SandboxOptions::new(7, 1, d(TODAY))
    }
}

async fn sandbox(faults: Faults) -> (RunningSandbox, reqwest::Client) {
    (
        start(opts(faults), 0).await.unwrap(),
        reqwest::Client::new(),
    )
}

fn time_range(since: &str, until: &str) -> String {
    json!({"since": since, "until": until}).to_string()
}

async fn fb_get(
    c: &reqwest::Client,
    url: &str,
    params: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut p: Vec<(&str, &str)> = params.to_vec();
    p.push(("access_token", cred::FACEBOOK_ACCESS_TOKEN));
    let r = c.get(url).query(&p).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Follow `paging.next` until it is absent; returns all rows.
async fn fb_all(c: &reqwest::Client, url: &str, params: &[(&str, &str)]) -> Vec<Value> {
    let (status, _, mut body) = fb_get(c, url, params).await;
    assert_eq!(status, 200, "{body}");
    let mut rows = Vec::new();
    let mut pages = 0;
    loop {
        rows.extend(body["data"].as_array().unwrap().iter().cloned());
        pages += 1;
        assert!(pages < 10_000, "paging must terminate");
        let Some(next) = body["paging"]["next"].as_str() else {
            break;
        };
        body = c.get(next).send().await.unwrap().json().await.unwrap();
    }
    rows
}

fn money(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn facebook_truth_equals_a_full_paged_read() {
    let (sb, c) = sandbox(Faults::default()).await;
    let t = truth(&opts(Faults::default()), d(SINCE), d(UNTIL));
    let base = sb.base_url();
    let (_, _, accounts) = fb_get(
        &c,
        &format!("{base}/v26.0/me/adaccounts"),
        &[("fields", "id,currency,timezone_name")],
    )
    .await;
    let accounts = accounts["data"].as_array().unwrap().clone();
    assert_eq!(accounts.len(), 3);
    let mut sums: BTreeMap<(String, String), (i64, i64, Decimal)> = BTreeMap::new();
    let mut rows = 0;
    let tr = time_range(SINCE, UNTIL);
    for a in &accounts {
        let id = a["id"].as_str().unwrap();
        let url = format!("{base}/v26.0/{id}/insights");
        let ad_rows = fb_all(
            &c,
            &url,
            &[
                ("level", "ad"),
                ("fields", "account_id,ad_id,impressions,clicks,spend"),
                ("time_range", &tr),
                ("time_increment", "1"),
                ("limit", "500"),
            ],
        )
        .await;
        rows += ad_rows.len();
        for r in &ad_rows {
            assert!(r["ad_id"].as_str().unwrap().parse::<u64>().unwrap() > 1 << 53);
            let e = sums
                .entry((
                    id.to_string(),
                    r["date_start"].as_str().unwrap().to_string(),
                ))
                .or_default();
            e.0 += r["impressions"].as_str().unwrap().parse::<i64>().unwrap();
            e.1 += r["clicks"].as_str().unwrap().parse::<i64>().unwrap();
            e.2 += money(&r["spend"]);
        }
        // Account level equals the sum of ad rows, day by day.
        let acct_rows = fb_all(
            &c,
            &url,
            &[
                ("level", "account"),
                ("fields", "impressions,spend"),
                ("time_range", &tr),
                ("time_increment", "1"),
            ],
        )
        .await;
        for r in acct_rows {
            let s = &sums[&(
                id.to_string(),
                r["date_start"].as_str().unwrap().to_string(),
            )];
            assert_eq!(
                r["impressions"].as_str().unwrap().parse::<i64>().unwrap(),
                s.0
            );
            assert_eq!(money(&r["spend"]), s.2);
        }
    }
    assert_eq!(
        rows as u64,
        t["facebook"]["rows"]["insights_ad"].as_u64().unwrap()
    );
    assert!(
        (2500..3500).contains(&rows),
        "about 3,000 ad rows at scale 1, got {rows}"
    );
    let days = t["facebook"]["days"].as_array().unwrap();
    assert_eq!(days.len(), sums.len());
    for day in days {
        let s = &sums[&(
            day["account_id"].as_str().unwrap().to_string(),
            day["date"].as_str().unwrap().to_string(),
        )];
        assert_eq!(day["impressions"].as_i64().unwrap(), s.0);
        assert_eq!(day["clicks"].as_i64().unwrap(), s.1);
        assert_eq!(money(&day["spend"]), s.2);
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn facebook_accounts_entities_breakdowns_and_usage_headers() {
    let (sb, c) = sandbox(Faults::default()).await;
    let base = sb.base_url();
    let (s, _, acct) = fb_get(
        &c,
        &format!("{base}/v26.0/act_284019000000018"),
        &[("fields", "id,name,currency,timezone_name")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(acct["currency"], "EUR");
    assert_eq!(acct["timezone_name"], "Europe/Berlin");
    // Entities with updated_time filtering.
    let all = fb_all(
        &c,
        &format!("{base}/v26.0/act_284019000000018/ads"),
        &[
            ("fields", "id,name,adset_id,campaign_id,updated_time"),
            ("limit", "4"),
        ],
    )
    .await;
    assert_eq!(all.len(), 11);
    let mut stamps: Vec<i64> = all
        .iter()
        .map(|a| {
            chrono::DateTime::parse_from_str(
                a["updated_time"].as_str().unwrap(),
                "%Y-%m-%dT%H:%M:%S%z",
            )
            .unwrap()
            .timestamp()
        })
        .collect();
    stamps.sort();
    let cutoff = stamps[0];
    let filt =
        json!([{"field": "updated_time", "operator": "GREATER_THAN", "value": cutoff}]).to_string();
    let newer = fb_all(
        &c,
        &format!("{base}/v26.0/act_284019000000018/ads"),
        &[("fields", "id,updated_time"), ("filtering", &filt)],
    )
    .await;
    assert_eq!(newer.len(), stamps.iter().filter(|s| **s > cutoff).count());
    assert!(!newer.is_empty() && newer.len() < 11);
    let camps = fb_all(
        &c,
        &format!("{base}/v26.0/act_284019000000018/campaigns"),
        &[("fields", "id,name,objective,daily_budget,effective_status")],
    )
    .await;
    assert_eq!(camps.len(), 3);
    assert!(camps[0]["daily_budget"].is_string());
    // Breakdowns sum to the unbroken total.
    let tr = time_range("2024-08-01", "2024-08-07");
    let url = format!("{base}/v26.0/act_284019000000018/insights");
    let total = fb_all(
        &c,
        &url,
        &[("fields", "impressions,spend"), ("time_range", &tr)],
    )
    .await;
    assert_eq!(total.len(), 1);
    let split = fb_all(
        &c,
        &url,
        &[
            ("fields", "impressions,spend"),
            ("time_range", &tr),
            ("breakdowns", "age,gender"),
            ("limit", "7"),
        ],
    )
    .await;
    assert!(split.len() > 10);
    assert!(split[0]["age"].is_string() && split[0]["gender"].is_string());
    let imps: i64 = split
        .iter()
        .map(|r| r["impressions"].as_str().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(imps.to_string(), total[0]["impressions"].as_str().unwrap());
    let spend: Decimal = split.iter().map(|r| money(&r["spend"])).sum();
    assert_eq!(spend, money(&total[0]["spend"]));
    let by_country = fb_all(
        &c,
        &url,
        &[
            ("fields", "clicks"),
            ("time_range", &tr),
            ("breakdowns", "country"),
            ("level", "campaign"),
        ],
    )
    .await;
    assert!(by_country
        .iter()
        .all(|r| r["country"].is_string() && r["campaign_id"].is_null()));
    // Usage headers on every response, rising with load.
    let mut last = 0;
    for _ in 0..20 {
        let (_, h, _) = fb_get(&c, &url, &[("fields", "impressions"), ("time_range", &tr)]).await;
        let v: Value =
            serde_json::from_str(h["x-business-use-case-usage"].to_str().unwrap()).unwrap();
        let pct = v.as_object().unwrap().values().next().unwrap()[0]["call_count"]
            .as_u64()
            .unwrap();
        assert!(pct >= last);
        last = pct;
        assert!(
            h.contains_key("x-app-usage")
                && h.contains_key("x-ad-account-usage")
                && h.contains_key("x-fb-ads-insights-throttle")
        );
    }
    assert!(last > 0);
    // Cursor stability: the same `after` gives the same page.
    let (_, _, p1) = fb_get(
        &c,
        &url,
        &[
            ("fields", "impressions"),
            ("time_range", &tr),
            ("time_increment", "1"),
            ("limit", "3"),
        ],
    )
    .await;
    let after = p1["paging"]["cursors"]["after"].as_str().unwrap();
    let (_, _, a) = fb_get(
        &c,
        &url,
        &[
            ("fields", "impressions"),
            ("time_range", &tr),
            ("time_increment", "1"),
            ("limit", "3"),
            ("after", after),
        ],
    )
    .await;
    let (_, _, b) = fb_get(
        &c,
        &url,
        &[
            ("fields", "impressions"),
            ("time_range", &tr),
            ("time_increment", "1"),
            ("limit", "3"),
            ("after", after),
        ],
    )
    .await;
    assert_eq!(a, b);
    assert_eq!(a["data"][0]["date_start"], "2024-08-04");
    // Unknown fields and objects are errors with code 100.
    let (s, _, e) = fb_get(&c, &url, &[("fields", "impressions,bogus")]).await;
    assert_eq!((s, e["error"]["code"].as_i64()), (400, Some(100)));
    let (_, _, e) = fb_get(&c, &format!("{base}/v26.0/act_1/insights"), &[]).await;
    assert_eq!(e["error"]["code"], 100);
    assert!(e["error"]["fbtrace_id"].is_string());
    // Batch requests.
    let batch = json!([{"method": "GET", "relative_url": "act_284019000000001?fields=currency"},
        {"method": "GET", "relative_url": "act_9?fields=currency"}])
    .to_string();
    let r: Value = c
        .post(format!("{base}/v26.0/"))
        .form(&[
            ("access_token", cred::FACEBOOK_ACCESS_TOKEN),
            ("batch", &batch),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r[0]["code"], 200);
    assert_eq!(
        serde_json::from_str::<Value>(r[0]["body"].as_str().unwrap()).unwrap()["currency"],
        "USD"
    );
    assert_eq!(r[1]["code"], 400);
    sb.shutdown().await;
}

async fn run_job(c: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> (String, Value) {
    let mut f = form.to_vec();
    f.push(("access_token", cred::FACEBOOK_ACCESS_TOKEN));
    let r: Value = c
        .post(format!("{base}/v26.0/act_284019000000001/insights"))
        .form(&f)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["report_run_id"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    for _ in 0..6 {
        let (_, _, s) = fb_get(c, &format!("{base}/v26.0/{id}"), &[]).await;
        last = s;
        if matches!(
            last["async_status"].as_str(),
            Some("Job Completed" | "Job Failed")
        ) {
            break;
        }
    }
    (id, last)
}

#[tokio::test]
async fn facebook_async_report_runs() {
    let (sb, c) = sandbox(Faults {
        async_fail_every: Some(2),
        ..Default::default()
    })
    .await;
    let base = sb.base_url();
    let tr = time_range(SINCE, UNTIL);
    // The SDK posts list params as JSON arrays.
    let form = [
        ("level", "ad"),
        ("fields", r#"["ad_id","impressions","spend"]"#),
        ("time_range", tr.as_str()),
        ("time_increment", "1"),
    ];
    let (id, status) = run_job(&c, &base, &form).await;
    assert_eq!(status["async_status"], "Job Completed");
    assert_eq!(status["async_percent_completion"], 100);
    let rows = fb_all(
        &c,
        &format!("{base}/v26.0/{id}/insights"),
        &[("limit", "1000")],
    )
    .await;
    let sync = fb_all(
        &c,
        &format!("{base}/v26.0/act_284019000000001/insights"),
        &[
            ("level", "ad"),
            ("fields", "ad_id,impressions,spend"),
            ("time_range", &tr),
            ("time_increment", "1"),
            ("limit", "1000"),
        ],
    )
    .await;
    assert_eq!(rows, sync);
    // Second job fails with the error fields.
    let (id2, failed) = run_job(&c, &base, &form).await;
    assert_eq!(failed["async_status"], "Job Failed");
    for k in [
        "error_code",
        "error_message",
        "error_subcode",
        "error_user_title",
        "error_user_msg",
    ] {
        assert!(!failed[k].is_null(), "missing {k}");
    }
    let (s, _, e) = fb_get(&c, &format!("{base}/v26.0/{id2}/insights"), &[]).await;
    assert_eq!((s, e["error"]["code"].as_i64()), (400, Some(100)));
    sb.shutdown().await;

    let (sb, c) = sandbox(Faults {
        async_stall_every: Some(1),
        ..Default::default()
    })
    .await;
    let (_, stalled) = run_job(&c, &sb.base_url(), &[("fields", "impressions")]).await;
    assert_eq!(stalled["async_status"], "Job Running");
    assert_eq!(stalled["async_percent_completion"], 42);
    sb.shutdown().await;
}

#[tokio::test]
async fn facebook_faults() {
    let url = |sb: &RunningSandbox| format!("{}/v26.0/act_284019000000001/insights", sb.base_url());
    // Deprecated versions.
    let (sb, c) = sandbox(Faults::default()).await;
    let (s, _, e) = fb_get(&c, &format!("{}/v19.0/me/adaccounts", sb.base_url()), &[]).await;
    assert_eq!((s, e["error"]["code"].as_i64()), (400, Some(2635)));
    let (s, _, e) = c
        .get(format!(
            "{}/v26.0/me/adaccounts?access_token=nope",
            sb.base_url()
        ))
        .send()
        .await
        .map(|r| (r.status().as_u16(), (), r))
        .unwrap();
    let e: Value = e.json().await.unwrap();
    assert_eq!((s, e["error"]["code"].as_i64()), (400, Some(190)));
    let _ = e;
    sb.shutdown().await;
    let (sb, c) = sandbox(Faults {
        deprecated_version: true,
        ..Default::default()
    })
    .await;
    let (_, _, e) = fb_get(&c, &url(&sb), &[]).await;
    assert_eq!(e["error"]["code"], 2635);
    sb.shutdown().await;
    let (sb, c) = sandbox(Faults {
        expired_token: true,
        ..Default::default()
    })
    .await;
    let (_, _, e) = fb_get(&c, &url(&sb), &[]).await;
    assert_eq!(
        (
            e["error"]["code"].as_i64(),
            e["error"]["error_subcode"].as_i64()
        ),
        (Some(190), Some(463))
    );
    sb.shutdown().await;
    // Rate limits every 3rd request: 80000 on insights, 4/17 elsewhere, usage at 100.
    let (sb, c) = sandbox(Faults {
        rate_limit_every: Some(3),
        ..Default::default()
    })
    .await;
    let mut codes = vec![];
    for i in 0..6 {
        let u = if i < 3 {
            url(&sb)
        } else {
            format!("{}/v26.0/me/adaccounts", sb.base_url())
        };
        let (s, h, e) = fb_get(&c, &u, &[]).await;
        if s != 200 {
            codes.push(e["error"]["code"].as_i64().unwrap());
            assert_eq!(e["error"]["is_transient"], true);
            if i < 3 {
                // An injected throttle is momentary: no minute-long regain time.
                assert!(h["x-business-use-case-usage"]
                    .to_str()
                    .unwrap()
                    .contains("\"estimated_time_to_regain_access\":0"));
            }
        }
    }
    assert_eq!(codes.len(), 2);
    assert_eq!(codes[0], 80000);
    assert!([4, 17].contains(&codes[1]));
    sb.shutdown().await;
    // 5xx every 2nd request.
    let (sb, c) = sandbox(Faults {
        server_error_every: Some(2),
        ..Default::default()
    })
    .await;
    let statuses: Vec<u16> = futures_lite(&c, &url(&sb), 4).await;
    assert_eq!(statuses.iter().filter(|s| **s >= 500).count(), 2);
    sb.shutdown().await;
    // Malformed bodies: the retry is answered correctly.
    let (sb, c) = sandbox(Faults {
        malformed_every: Some(2),
        ..Default::default()
    })
    .await;
    let ok = c
        .get(url(&sb))
        .query(&[("access_token", cred::FACEBOOK_ACCESS_TOKEN)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let bad = c
        .get(url(&sb))
        .query(&[("access_token", cred::FACEBOOK_ACCESS_TOKEN)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retry = c
        .get(url(&sb))
        .query(&[("access_token", cred::FACEBOOK_ACCESS_TOKEN)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(serde_json::from_str::<Value>(&bad).is_err());
    assert_eq!(ok, retry);
    sb.shutdown().await;
    // Duplicates: the page repeats a record (same ad_id + date_start).
    let (sb, c) = sandbox(Faults {
        duplicate_every: Some(1),
        ..Default::default()
    })
    .await;
    let tr = time_range("2024-08-01", "2024-08-01");
    let (_, _, p) = fb_get(
        &c,
        &url(&sb),
        &[
            ("level", "ad"),
            ("fields", "ad_id,impressions"),
            ("time_range", &tr),
            ("limit", "5"),
        ],
    )
    .await;
    let data = p["data"].as_array().unwrap();
    assert_eq!(data.len(), 6);
    assert_eq!(data[0], data[5]);
    sb.shutdown().await;
    // Reduce the amount of data.
    let (sb, c) = sandbox(Faults {
        reduce_data_above: Some(100),
        ..Default::default()
    })
    .await;
    let tr = time_range(SINCE, UNTIL);
    let (s, _, e) = fb_get(
        &c,
        &url(&sb),
        &[
            ("level", "ad"),
            ("time_range", &tr),
            ("time_increment", "1"),
        ],
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_i64()), (500, Some(1)));
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reduce the amount of data"));
    let (s, _, _) = fb_get(
        &c,
        &url(&sb),
        &[
            ("level", "ad"),
            ("time_range", &time_range("2024-08-01", "2024-08-02")),
            ("time_increment", "1"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    sb.shutdown().await;
    // Too many fields: the same error, sync and as a failed report run; fewer pass.
    let (sb, c) = sandbox(Faults {
        reduce_data_fields_above: Some(3),
        ..Default::default()
    })
    .await;
    let tr = time_range("2024-08-01", "2024-08-01");
    let ask = |fields| {
        [
            ("level", "ad"),
            ("fields", fields),
            ("time_range", tr.as_str()),
        ]
    };
    let (s, _, e) = fb_get(&c, &url(&sb), &ask("ad_id,date_start,impressions,clicks")).await;
    assert_eq!((s, e["error"]["code"].as_i64()), (500, Some(1)), "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reduce the amount of data"));
    let (s, _, p) = fb_get(&c, &url(&sb), &ask("ad_id,date_start,impressions")).await;
    assert_eq!(s, 200, "{p}");
    assert!(!p["data"].as_array().unwrap().is_empty());
    let (_, failed) = run_job(
        &c,
        &sb.base_url(),
        &[
            ("level", "ad"),
            ("fields", "ad_id,date_start,impressions,clicks"),
            ("time_range", &tr),
        ],
    )
    .await;
    assert_eq!(failed["async_status"], "Job Failed");
    assert_eq!(failed["error_code"], 1);
    let (_, done) = run_job(
        &c,
        &sb.base_url(),
        &[("fields", "impressions"), ("time_range", &tr)],
    )
    .await;
    assert_eq!(done["async_status"], "Job Completed");
    sb.shutdown().await;
    // Inconsistent day: account total != sum of ads on that day only.
    let (sb, c) = sandbox(Faults {
        inconsistent_day: Some(d("2024-08-02")),
        ..Default::default()
    })
    .await;
    for (day, equal) in [("2024-08-01", true), ("2024-08-02", false)] {
        let tr = time_range(day, day);
        let acct = fb_all(
            &c,
            &url(&sb),
            &[("fields", "impressions"), ("time_range", &tr)],
        )
        .await;
        let ads = fb_all(
            &c,
            &url(&sb),
            &[
                ("level", "ad"),
                ("fields", "impressions"),
                ("time_range", &tr),
            ],
        )
        .await;
        let sum: i64 = ads
            .iter()
            .map(|r| r["impressions"].as_str().unwrap().parse::<i64>().unwrap())
            .sum();
        assert_eq!(
            acct[0]["impressions"].as_str().unwrap() == sum.to_string(),
            equal,
            "{day}"
        );
    }
    sb.shutdown().await;
    // Schema change: a new field appears from the date on.
    let (sb, c) = sandbox(Faults {
        schema_change_after: Some(d("2024-08-02")),
        ..Default::default()
    })
    .await;
    let rows = fb_all(
        &c,
        &url(&sb),
        &[
            ("fields", "impressions"),
            ("time_range", &time_range("2024-08-01", "2024-08-02")),
            ("time_increment", "1"),
        ],
    )
    .await;
    assert!(rows[0].get("attribution_setting").is_none());
    assert!(rows[1].get("attribution_setting").is_some());
    sb.shutdown().await;
    // Slow responses.
    let (sb, c) = sandbox(Faults {
        slow_ms: Some(300),
        ..Default::default()
    })
    .await;
    let t0 = std::time::Instant::now();
    fb_get(&c, &url(&sb), &[]).await;
    assert!(t0.elapsed().as_millis() >= 300);
    // The counters a benchmark reads: not delayed, not counted themselves.
    let counters = |c: reqwest::Client, base: String| async move {
        let r = c
            .get(format!("{base}/_sandbox/requests"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let t0 = std::time::Instant::now();
    let first = counters(c.clone(), sb.base_url()).await;
    assert!(t0.elapsed().as_millis() < 300);
    assert_eq!(first["facebook"], 1, "{first}");
    assert_eq!(first["total"], 1, "{first}");
    assert_eq!(first["google"], 0, "{first}");
    fb_get(&c, &url(&sb), &[]).await;
    let second = counters(c.clone(), sb.base_url()).await;
    assert_eq!(
        (second["facebook"].as_u64(), second["total"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(sb.request_count(), 2);
    sb.shutdown().await;
}

async fn futures_lite(c: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut out = vec![];
    for _ in 0..n {
        let (s, _, e) = fb_get(c, url, &[]).await;
        if s >= 500 {
            assert!([1, 2].contains(&e["error"]["code"].as_i64().unwrap()));
        }
        out.push(s);
    }
    out
}

// ---------------------------------------------------------------- google

async fn google_token(c: &reqwest::Client, base: &str) -> String {
    let r: Value = c
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", cred::GOOGLE_CLIENT_ID),
            ("client_secret", cred::GOOGLE_CLIENT_SECRET),
            ("refresh_token", cred::GOOGLE_REFRESH_TOKEN),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["token_type"], "Bearer");
    assert!(r["expires_in"].as_u64().unwrap() > 0);
    r["access_token"].as_str().unwrap().to_string()
}

async fn gads(
    c: &reqwest::Client,
    base: &str,
    tok: &str,
    customer: &str,
    method: &str,
    body: Value,
    login: Option<&str>,
) -> (u16, Value) {
    let mut req = c
        .post(format!(
            "{base}/v26/customers/{customer}/googleAds:{method}"
        ))
        .bearer_auth(tok)
        .header("developer-token", cred::GOOGLE_DEVELOPER_TOKEN)
        .json(&body);
    if let Some(l) = login {
        req = req.header("login-customer-id", l);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_ads_failure(v: &Value, status: &str, kind: &str, code: &str) {
    assert_eq!(v["error"]["status"], status, "{v}");
    let det = &v["error"]["details"][0];
    assert_eq!(
        det["@type"],
        "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure"
    );
    assert_eq!(det["errors"][0]["errorCode"][kind], code, "{v}");
    assert!(det["requestId"].is_string());
}

#[tokio::test]
async fn google_truth_equals_search_stream_and_errors_are_documented() {
    let (sb, c) = sandbox(Faults::default()).await;
    let base = sb.base_url();
    let t = truth(&opts(Faults::default()), d(SINCE), d(UNTIL));
    let tok = google_token(&c, &base).await;
    let mgr = cred::GOOGLE_MANAGER_CUSTOMER_ID;
    let r: Value = c
        .get(format!("{base}/v26/customers:listAccessibleCustomers"))
        .bearer_auth(&tok)
        .header("developer-token", cred::GOOGLE_DEVELOPER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["resourceNames"][0], format!("customers/{mgr}"));
    let (s, v) = gads(&c, &base, &tok, mgr, "searchStream", json!({"query": "SELECT customer_client.id, customer_client.manager, customer_client.level, customer_client.currency_code FROM customer_client WHERE customer_client.level <= 1"}), None).await;
    assert_eq!(s, 200);
    let clients: Vec<String> = v[0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["customerClient"]["manager"].is_null())
        .map(|r| r["customerClient"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(clients.len(), 3);
    let q = format!("SELECT customer.id, campaign.id, metrics.impressions, metrics.clicks, metrics.cost_micros, segments.date FROM campaign WHERE segments.date BETWEEN '{SINCE}' AND '{UNTIL}' ORDER BY segments.date");
    let mut sums: BTreeMap<(String, String), (i64, i64, i64)> = BTreeMap::new();
    let mut rows = 0;
    for cid in &clients {
        let (s, v) = gads(
            &c,
            &base,
            &tok,
            cid,
            "searchStream",
            json!({"query": q}),
            Some(mgr),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        for batch in v.as_array().unwrap() {
            assert!(batch["fieldMask"]
                .as_str()
                .unwrap()
                .contains("metrics.costMicros"));
            for r in batch["results"].as_array().unwrap() {
                rows += 1;
                let e = sums
                    .entry((cid.clone(), r["segments"]["date"].as_str().unwrap().into()))
                    .or_default();
                let n = |v: &Value| v.as_str().map(|s| s.parse::<i64>().unwrap()).unwrap_or(0);
                e.0 += n(&r["metrics"]["impressions"]);
                e.1 += n(&r["metrics"]["clicks"]);
                e.2 += n(&r["metrics"]["costMicros"]);
            }
        }
    }
    assert_eq!(
        rows,
        t["google"]["rows"]["campaign_daily"].as_u64().unwrap()
    );
    for day in t["google"]["days"].as_array().unwrap() {
        let s = &sums[&(
            day["customer_id"].as_str().unwrap().into(),
            day["date"].as_str().unwrap().into(),
        )];
        assert_eq!(
            (
                day["impressions"].as_i64().unwrap(),
                day["clicks"].as_i64().unwrap(),
                day["cost_micros"].as_i64().unwrap()
            ),
            *s
        );
    }
    // search with page tokens (pageSize is a sandbox-only knob) gives the same rows as the stream.
    let cid = &clients[0];
    let q2 = format!("SELECT ad_group.id, ad_group.campaign, metrics.clicks, segments.date FROM ad_group WHERE segments.date BETWEEN '{SINCE}' AND '2024-07-10' AND ad_group.status = 'ENABLED'");
    let (_, stream) = gads(
        &c,
        &base,
        &tok,
        cid,
        "searchStream",
        json!({"query": q2}),
        Some(mgr),
    )
    .await;
    let mut paged = vec![];
    let mut token: Option<String> = None;
    loop {
        let mut body = json!({"query": q2, "pageSize": 37});
        if let Some(t) = &token {
            body["pageToken"] = json!(t);
        }
        let (s, v) = gads(&c, &base, &tok, cid, "search", body, Some(mgr)).await;
        assert_eq!(s, 200);
        paged.extend(v["results"].as_array().cloned().unwrap_or_default());
        match v["nextPageToken"].as_str() {
            Some(t) => token = Some(t.into()),
            None => break,
        }
    }
    assert_eq!(&Value::Array(paged), &stream[0]["results"]);
    // Customer-level, IN, LIMIT, proto3 default omission.
    let (_, v) = gads(&c, &base, &tok, cid, "search", json!({"query": "SELECT customer.id, customer.currency_code, customer.manager FROM customer"}), Some(mgr)).await;
    assert!(
        v["results"][0]["customer"]["manager"].is_null(),
        "false is omitted"
    );
    let (_, v) = gads(&c, &base, &tok, cid, "search", json!({"query": format!("SELECT ad_group_ad.ad.id, metrics.impressions FROM ad_group_ad WHERE segments.date = '2024-07-05' LIMIT 3")}), Some(mgr)).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
    assert!(v["results"][0]["adGroupAd"]["resourceName"]
        .as_str()
        .unwrap()
        .contains("~"));
    // Errors.
    let (s, v) = gads(&c, &base, &tok, cid, "search", json!({"query": q}), None).await;
    assert_eq!(s, 403);
    assert_ads_failure(
        &v,
        "PERMISSION_DENIED",
        "authorizationError",
        "USER_PERMISSION_DENIED",
    );
    let (s, v) = gads(&c, &base, &tok, mgr, "search", json!({"query": q}), None).await;
    assert_eq!(s, 400);
    assert_ads_failure(
        &v,
        "INVALID_ARGUMENT",
        "queryError",
        "REQUESTED_METRICS_FOR_MANAGER",
    );
    let (_, v) = gads(
        &c,
        &base,
        &tok,
        cid,
        "search",
        json!({"query": "SELECT campaign.bogus FROM campaign"}),
        Some(mgr),
    )
    .await;
    assert_ads_failure(&v, "INVALID_ARGUMENT", "queryError", "UNRECOGNIZED_FIELD");
    let (_, v) = gads(
        &c,
        &base,
        &tok,
        cid,
        "search",
        json!({"query": "SELECT campaign.id, segments.date FROM campaign"}),
        Some(mgr),
    )
    .await;
    assert_ads_failure(
        &v,
        "INVALID_ARGUMENT",
        "queryError",
        "EXPECTED_FILTERS_ON_DATE_RANGE",
    );
    let (s, v) = gads(
        &c,
        &base,
        "ya29.bogus",
        cid,
        "search",
        json!({"query": q}),
        Some(mgr),
    )
    .await;
    assert_eq!(s, 401);
    assert_ads_failure(
        &v,
        "UNAUTHENTICATED",
        "authenticationError",
        "OAUTH_TOKEN_INVALID",
    );
    let r = c
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", cred::GOOGLE_CLIENT_ID),
            ("client_secret", cred::GOOGLE_CLIENT_SECRET),
            ("refresh_token", "revoked"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    sb.shutdown().await;
}

#[tokio::test]
async fn google_faults() {
    let mgr = cred::GOOGLE_MANAGER_CUSTOMER_ID;
    let q = json!({"query": "SELECT campaign.id, metrics.clicks, segments.date FROM campaign WHERE segments.date BETWEEN '2024-07-01' AND '2024-07-31'"});
    let client = "8145550101";
    // Expired access tokens.
    let (sb, c) = sandbox(Faults {
        expired_token: true,
        ..Default::default()
    })
    .await;
    let tok = google_token(&c, &sb.base_url()).await;
    let (s, v) = gads(
        &c,
        &sb.base_url(),
        &tok,
        client,
        "search",
        q.clone(),
        Some(mgr),
    )
    .await;
    assert_eq!(s, 401);
    assert_ads_failure(
        &v,
        "UNAUTHENTICATED",
        "authenticationError",
        "OAUTH_TOKEN_EXPIRED",
    );
    sb.shutdown().await;
    // Rate limit with retryDelay, and the daily quota.
    let (sb, c) = sandbox(Faults {
        rate_limit_every: Some(2),
        google_daily_quota: Some(3),
        ..Default::default()
    })
    .await;
    let tok = google_token(&c, &sb.base_url()).await;
    let (s1, _) = gads(
        &c,
        &sb.base_url(),
        &tok,
        client,
        "search",
        q.clone(),
        Some(mgr),
    )
    .await;
    let (s2, v2) = gads(
        &c,
        &sb.base_url(),
        &tok,
        client,
        "search",
        q.clone(),
        Some(mgr),
    )
    .await;
    assert_eq!((s1, s2), (200, 429));
    assert_ads_failure(
        &v2,
        "RESOURCE_EXHAUSTED",
        "quotaError",
        "RESOURCE_TEMPORARILY_EXHAUSTED",
    );
    assert_eq!(
        v2["error"]["details"][0]["errors"][0]["details"]["quotaErrorDetails"]["retryDelay"],
        "1s"
    );
    gads(
        &c,
        &sb.base_url(),
        &tok,
        client,
        "search",
        q.clone(),
        Some(mgr),
    )
    .await;
    let (s4, v4) = gads(
        &c,
        &sb.base_url(),
        &tok,
        client,
        "search",
        q.clone(),
        Some(mgr),
    )
    .await;
    assert_eq!(s4, 429);
    assert_ads_failure(
        &v4,
        "RESOURCE_EXHAUSTED",
        "quotaError",
        "RESOURCE_EXHAUSTED",
    );
    sb.shutdown().await;
    // A stream that breaks after a partial batch; the retry is whole.
    let (sb, c) = sandbox(Faults {
        server_error_every: Some(2),
        duplicate_every: Some(3),
        malformed_every: Some(5),
        ..Default::default()
    })
    .await;
    let base = sb.base_url();
    let tok = google_token(&c, &base).await;
    let (s, full) = gads(
        &c,
        &base,
        &tok,
        client,
        "searchStream",
        q.clone(),
        Some(mgr),
    )
    .await;
    assert_eq!(s, 200);
    let n = full[0]["results"].as_array().unwrap().len();
    let (s, broken) = gads(
        &c,
        &base,
        &tok,
        client,
        "searchStream",
        q.clone(),
        Some(mgr),
    )
    .await;
    assert_eq!(s, 200);
    let arr = broken.as_array().unwrap();
    assert!(arr[0]["results"].as_array().unwrap().len() < n);
    assert_eq!(
        arr.last().unwrap()["error"]["code"].as_i64().unwrap() / 100,
        5
    );
    let (_, dup) = gads(
        &c,
        &base,
        &tok,
        client,
        "searchStream",
        q.clone(),
        Some(mgr),
    )
    .await;
    let rs = dup[0]["results"].as_array().unwrap();
    assert_eq!(rs.len(), n + 1);
    assert_eq!(rs[0], rs[n]);
    let (s, err) = gads(&c, &base, &tok, client, "search", q.clone(), Some(mgr)).await;
    assert!(s == 500 || s == 503, "{err}");
    assert!(err["error"]["details"][0]["errors"][0]["errorCode"]["internalError"].is_string());
    let (s, bad) = gads(&c, &base, &tok, client, "search", q.clone(), Some(mgr)).await;
    assert_eq!(s, 200);
    assert!(bad.is_string(), "malformed body");
    sb.shutdown().await;
}

// ---------------------------------------------------------------- clevertap

async fn ct(c: &reqwest::Client, req: reqwest::RequestBuilder) -> (u16, Value) {
    let _ = c;
    let r = req
        .header("X-CleverTap-Account-Id", cred::CLEVERTAP_ACCOUNT_ID)
        .header("X-CleverTap-Passcode", cred::CLEVERTAP_PASSCODE)
        .header("Content-Type", "application/json; charset=utf-8")
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The full cursor flow for one window; restarts the window on cursor expiry.
async fn ct_read(
    c: &reqwest::Client,
    base: &str,
    what: &str,
    event: &str,
    from: u64,
    to: u64,
    batch: u32,
) -> Vec<Value> {
    'restart: loop {
        let (s, v) = ct(
            c,
            c.post(format!("{base}/1/{what}.json?batch_size={batch}"))
                .json(&json!({"event_name": event, "from": from, "to": to})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let mut cursor = v["cursor"].as_str().unwrap().to_string();
        let mut out = vec![];
        loop {
            let (s, v) = ct(c, c.get(format!("{base}/1/{what}.json?cursor={cursor}"))).await;
            if s == 400 && v["error"].as_str().unwrap().contains("expired") {
                continue 'restart;
            }
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["status"], "success");
            let recs = v["records"].as_array().unwrap();
            assert!(recs.len() <= batch as usize);
            out.extend(recs.iter().cloned());
            match v["next_cursor"].as_str() {
                Some(n) => cursor = n.to_string(),
                None => return out,
            }
        }
    }
}

#[tokio::test]
async fn clevertap_truth_equals_cursor_reads() {
    let (sb, c) = sandbox(Faults {
        cursor_expire_every: Some(5),
        ..Default::default()
    })
    .await;
    let base = sb.base_url();
    let t = truth(&opts(Faults::default()), d(SINCE), d(UNTIL));
    for event in ["Charged", "App Uninstalled", "Added To Cart"] {
        let recs = ct_read(&c, &base, "events", event, 20240701, 20240930, 5000).await;
        assert_eq!(
            recs.len() as u64,
            t["clevertap"]["events"][event].as_u64().unwrap(),
            "{event}"
        );
        let (_, v) = ct(
            &c,
            c.post(format!("{base}/1/counts/events.json"))
                .json(&json!({"event_name": event, "from": 20240701, "to": 20240930})),
        )
        .await;
        assert_eq!(v["count"], t["clevertap"]["events"][event]);
    }
    // Small batches page and terminate; records carry profile PII and ts.
    let recs = ct_read(&c, &base, "events", "Charged", 20240701, 20240703, 7).await;
    let rec = &recs[0];
    assert!(rec["profile"]["email"].as_str().unwrap().contains('@'));
    assert!(rec["ts"].as_u64().unwrap() >= 20240701000000);
    assert!(rec["event_props"]["Amount"].is_number());
    // Profiles.
    let profiles = ct_read(
        &c,
        &base,
        "profiles",
        "App Launched",
        20240701,
        20240930,
        100,
    )
    .await;
    assert_eq!(
        profiles.len() as u64,
        t["clevertap"]["profiles"].as_u64().unwrap()
    );
    let ids: HashSet<&str> = profiles
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), profiles.len());
    let bad = &t["clevertap"]["invalid_addresses"];
    assert!(
        bad["empty"].as_u64().unwrap() > 0
            && bad["all_digits"].as_u64().unwrap() > 0
            && bad["ssn_shaped"].as_u64().unwrap() > 0
    );
    let ssn = profiles
        .iter()
        .filter(|p| {
            let a = p["profileData"]["address"].as_str().unwrap();
            sluice_sandbox::data::classify_address(a)
                == Some(sluice_sandbox::data::AddressProblem::SsnShaped)
        })
        .count();
    assert_eq!(ssn as u64, bad["ssn_shaped"].as_u64().unwrap());
    let (s, one) = ct(&c, c.get(format!("{base}/1/profile.json?identity=C-10001"))).await;
    assert_eq!(
        (s, one["record"]["identity"].as_str()),
        (200, Some("C-10001"))
    );
    // Errors.
    let r = c
        .post(format!("{base}/1/events.json"))
        .header("X-CleverTap-Account-Id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "fail");
    let (s, v) = ct(
        &c,
        c.post(format!("{base}/1/events.json"))
            .json(&json!({"event_name": "Nope", "from": 20240701, "to": 20240701})),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (400, Some("fail")));
    sb.shutdown().await;
}

#[tokio::test]
async fn clevertap_faults_and_schema_change() {
    let (sb, c) = sandbox(Faults {
        rate_limit_every: Some(2),
        duplicate_every: Some(3),
        schema_change_after: Some(d("2024-07-02")),
        ..Default::default()
    })
    .await;
    let base = sb.base_url();
    let (s1, v1) = ct(
        &c,
        c.post(format!("{base}/1/events.json?batch_size=5000"))
            .json(&json!({"event_name": "Charged", "from": 20240701, "to": 20240702})),
    )
    .await;
    assert_eq!(s1, 200);
    let (s2, v2) = ct(
        &c,
        c.get(format!(
            "{base}/1/events.json?cursor={}",
            v1["cursor"].as_str().unwrap()
        )),
    )
    .await;
    assert_eq!(s2, 429);
    assert_eq!(
        v2,
        json!({"status": "fail", "error": "Too many requests", "code": 429})
    );
    let (s3, v3) = ct(
        &c,
        c.get(format!(
            "{base}/1/events.json?cursor={}",
            v1["cursor"].as_str().unwrap()
        )),
    )
    .await;
    assert_eq!(s3, 200);
    let recs = v3["records"].as_array().unwrap();
    assert_eq!(recs[0], recs[recs.len() - 1], "duplicate record");
    let first_day = recs
        .iter()
        .find(|r| {
            r["ts"].as_u64().unwrap() / 1_000_000 == 20240701
                && r["event_props"].get("Payment Mode").is_some()
        })
        .unwrap();
    assert!(first_day["event_props"].get("Experiment").is_none());
    let changed = recs
        .iter()
        .find(|r| r["ts"].as_u64().unwrap() / 1_000_000 == 20240702)
        .unwrap();
    let p = &changed["event_props"];
    assert!(
        p.get("Experiment").is_some()
            && p.get("Payment Method").is_some()
            && p.get("Payment Mode").is_none()
    );
    assert!(
        p["Products"][0]["Quantity"].is_number(),
        "only top-level Quantity changes"
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn recent_days_change_with_today() {
    let early = SandboxOptions::new(7, 1, d("2024-08-10"));
    let late = SandboxOptions::new(7, 1, d("2024-10-01"));
    let a = truth(&early, d("2024-08-01"), d("2024-08-01"));
    let b = truth(&late, d("2024-08-01"), d("2024-08-01"));
    assert_ne!(a["facebook"]["days"], b["facebook"]["days"]);
    assert_ne!(a["google"]["days"], b["google"]["days"]);
    // Settled days (older than 28 days) do not change.
    let a = truth(&early, d("2024-07-01"), d("2024-07-05"));
    let b = truth(&late, d("2024-07-01"), d("2024-07-05"));
    assert_eq!(a["facebook"]["days"], b["facebook"]["days"]);
    assert_eq!(a["google"]["days"], b["google"]["days"]);
    // The server serves what truth says for its today; nothing after today.
    let sb = start(early.clone(), 0).await.unwrap();
    let c = reqwest::Client::new();
    let rows = fb_all(
        &c,
        &format!("{}/v26.0/act_284019000000001/insights", sb.base_url()),
        &[
            ("fields", "impressions,spend"),
            ("time_range", &time_range("2024-08-01", "2024-08-20")),
            ("time_increment", "1"),
        ],
    )
    .await;
    assert_eq!(rows.last().unwrap()["date_start"], "2024-08-10");
    let t = truth(&early, d("2024-08-01"), d("2024-08-20"));
    let fb_days: Vec<&Value> = t["facebook"]["days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["account_id"] == "act_284019000000001")
        .collect();
    assert_eq!(fb_days.len(), rows.len());
    for (r, t) in rows.iter().zip(fb_days) {
        assert_eq!(money(&r["spend"]), money(&t["spend"]));
    }
    assert!(sb.request_count() > 0);
    sb.shutdown().await;
}
