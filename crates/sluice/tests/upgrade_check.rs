//! `sluice upgrade-check`: the fields the next (or a given) API version removes
//! or renames that the pipeline uses, each with its replacement and source.

mod common;

use common::*;
use sluice_sandbox::credentials;

fn pipeline(
    facebook_version: &str,
    facebook_fields: &str,
    google_version: &str,
    gaql: &str,
) -> String {
    format!(
        r#"name: upgrade
lake: ./lake
sources:
  facebook:
    type: facebook_ads
    base_url: http://127.0.0.1:9
    access_token: {token}
    api_version: {facebook_version}
    accounts: all
    streams:
      insights:
        fields: [{facebook_fields}]
  google:
    type: google_ads
    base_url: http://127.0.0.1:9
    token_url: http://127.0.0.1:9/token
    developer_token: {dev}
    oauth: {{ client_id: "{cid}", client_secret: "{secret}", refresh_token: "{refresh}" }}
    api_version: {google_version}
    streams:
      apps:
        gaql: "{gaql}"
"#,
        token = credentials::FACEBOOK_ACCESS_TOKEN,
        dev = credentials::GOOGLE_DEVELOPER_TOKEN,
        cid = credentials::GOOGLE_CLIENT_ID,
        secret = credentials::GOOGLE_CLIENT_SECRET,
        refresh = credentials::GOOGLE_REFRESH_TOKEN,
    )
}

#[test]
fn removed_and_renamed_fields_in_use_are_listed_with_replacement_and_source() {
    // Both versions are sunset: upgrading is exactly what the pipeline needs.
    let project = Project::new(&pipeline(
        "v18.0",
        "impressions, spend, estimated_ad_recallers_lower_bound",
        "v16",
        "SELECT customer.id, campaign.id, metrics.sk_ad_network_conversion_value, segments.date FROM campaign",
    ));
    let out = project.cmd().arg("upgrade-check").output().unwrap();
    assert_exit(&out, 9);
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.contains("Facebook Marketing API v18.0 → v19.0")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .contains("`estimated_ad_recallers_lower_bound` removed, no replacement in v19.0")
            && l.contains("insights.estimated_ad_recallers_lower_bound (configured)")),
        "{text}"
    );
    assert!(text.contains(
        "source: https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/version19.0 (2024-01-23)"
    ), "{text}");
    assert!(
        text.lines().any(|l| l.contains("`metrics.sk_ad_network_conversion_value` renamed to `metrics.sk_ad_network_fine_conversion_value` in v17")
            && l.contains("apps.metrics.sk_ad_network_conversion_value (GAQL)")),
        "{text}"
    );
    assert!(
        text.contains("source: https://developers.google.com/google-ads/api/docs/upgrade"),
        "{text}"
    );
    // Fields that did not change are not listed.
    assert!(
        !text.contains("`spend`") && !text.contains("metrics.clicks"),
        "{text}"
    );
}

#[test]
fn a_pipeline_using_no_changed_field_has_nothing_to_change() {
    let project = Project::new(&pipeline(
        "v18.0",
        "impressions, spend",
        "v26",
        "SELECT customer.id, campaign.id, metrics.clicks, segments.date FROM campaign",
    ));
    let out = project.cmd().arg("upgrade-check").output().unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l == "nothing to change"),
        "{text}"
    );
    assert!(
        text.contains("google: Google Ads API v26 is the newest version sluice knows"),
        "{text}"
    );

    // `--to` for one source: v21 → v22 crosses the Instagram renames, unused here.
    let out = project
        .cmd()
        .args(["upgrade-check", "--to", "facebook=v22.0"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("v18.0 → v22.0"), "{}", stdout(&out));

    let bad = project
        .cmd()
        .args(["upgrade-check", "--to", "latest"])
        .output()
        .unwrap();
    assert_exit(&bad, 2);
}
