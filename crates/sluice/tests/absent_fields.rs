//! "Absent is not the same as gone": the sandbox omits default-valued fields the
//! way proto3 JSON does (Google: `false`, `0`, `""`, an enum's zero) and empty
//! fields the way the Graph API does (a campaign's `stop_time`). Two identical
//! runs: the second reports no schema change, and `customer.manager` is `false`
//! in D1, never NULL.

mod common;

use chrono::{Duration, Utc};
use common::*;
use sluice_sandbox::{credentials, SandboxOptions};

fn pipeline(url: &str, start: chrono::NaiveDate) -> String {
    format!(
        r#"name: absent
lake: ./lake
sources:
  facebook:
    type: facebook_ads
    base_url: {url}
    access_token: {token}
    api_version: v26.0
    accounts: all
    start_date: "{start}"
    streams:
      campaigns: {{}}
      adsets: {{}}
  google:
    type: google_ads
    base_url: {url}
    token_url: {url}/token
    developer_token: {dev}
    oauth: {{ client_id: "{cid}", client_secret: "{secret}", refresh_token: "{refresh}" }}
    login_customer_id: {manager}
    start_date: "{start}"
    streams:
      customers: builtin
      campaign_daily: builtin
      channels:
        gaql: "SELECT campaign.id, campaign.advertising_channel_type, campaign.advertising_channel_sub_type FROM campaign"
"#,
        token = credentials::FACEBOOK_ACCESS_TOKEN,
        dev = credentials::GOOGLE_DEVELOPER_TOKEN,
        cid = credentials::GOOGLE_CLIENT_ID,
        secret = credentials::GOOGLE_CLIENT_SECRET,
        refresh = credentials::GOOGLE_REFRESH_TOKEN,
        // A bare YAML integer: accepted like the quoted form.
        manager = credentials::GOOGLE_MANAGER_CUSTOMER_ID,
    )
}

#[test]
fn a_second_identical_run_reports_no_schema_change_and_defaults_are_values() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let today = Utc::now().date_naive();
    let sandbox = runtime
        .block_on(sluice_sandbox::start(SandboxOptions::new(7, 1, today), 0))
        .unwrap();
    let project = Project::new(&pipeline(&sandbox.base_url(), today - Duration::days(3)));

    let first = project.run(&[]);
    assert_exit(&first, 0);
    let second = project.run(&[]);
    runtime.block_on(sandbox.shutdown());
    assert_exit(&second, 0);
    let text = stdout(&second) + &stderr(&second);
    assert!(
        !text.contains("schema change")
            && !text.contains("no longer sent")
            && !text.lines().any(|l| l.trim_start().starts_with("~ ")),
        "the second identical run reports no schema change:\n{text}"
    );

    let db = project.sqlite();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let customers = count("select count(*) from d1__google_customers");
    assert!(customers > 0);
    assert_eq!(
        count("select count(*) from d1__google_customers where customer_manager is null"),
        0,
        "an omitted `manager` is false, not NULL"
    );
    assert_eq!(
        count("select count(*) from d1__google_customers where customer_manager = 0"),
        customers
    );
    // The enum's zero arrives absent and is loaded as its name.
    assert!(
        count(
            "select count(*) from d1__google_channels where campaign_advertising_channel_sub_type = 'UNSPECIFIED'"
        ) > 0
    );
    assert_eq!(
        count("select count(*) from d1__google_channels where campaign_advertising_channel_sub_type is null"),
        0
    );
    // `stop_time` is sent for some campaigns only: loaded where sent, NULL elsewhere.
    let with_stop =
        count("select count(*) from d1__facebook_campaigns where stop_time is not null");
    let campaigns = count("select count(*) from d1__facebook_campaigns");
    assert!(
        with_stop > 0 && with_stop < campaigns,
        "{with_stop} of {campaigns}"
    );
}
