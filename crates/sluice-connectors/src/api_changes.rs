//! Fields an API version removes or renames, and which of them a pipeline uses
//! (`sluice upgrade-check`).
//!
//! Upgrading `api_version` is how a pipeline escapes a sunset, and the new
//! version may stop answering a field the pipeline asks for. The table below
//! lists such changes per version, each with the page it was copied from and
//! that page's date. It holds only changes found in the vendors' changelogs and
//! upgrade guides when the table was written: it is not every change the APIs
//! ever made, and a field absent from it may still change (the command says so).

use std::collections::BTreeSet;

use sluice_core::config::{ConfigDocument, ConfigError, Section};

use crate::api_versions::{major, next_version, spell, Api};
use crate::facebook_ads::config::FacebookConfig;
use crate::google_ads::config::GoogleConfig;

/// One field a version removed or renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldChange {
    pub api: Api,
    /// The major version from which the field is gone.
    pub version: u32,
    /// As a pipeline names it: a Graph API field, or a GAQL field path.
    pub field: &'static str,
    /// What replaces it (`None`: removed without replacement).
    pub replacement: Option<&'static str>,
    /// The vendor's page that says so.
    pub source: &'static str,
    /// The date of that entry (release or post), or when an undated page was read.
    pub source_date: &'static str,
}

const FB_V19: &str = "https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/version19.0";
const FB_INSTAGRAM: &str =
    "https://developers.facebook.com/blog/post/2025/08/11/instagram-marketing-api-update/";
const GOOGLE_UPGRADE: &str = "https://developers.google.com/google-ads/api/docs/upgrade";

const fn fb(
    version: u32,
    field: &'static str,
    replacement: Option<&'static str>,
    source: &'static str,
    source_date: &'static str,
) -> FieldChange {
    FieldChange {
        api: Api::FacebookMarketing,
        version,
        field,
        replacement,
        source,
        source_date,
    }
}

const fn google(version: u32, field: &'static str, replacement: &'static str) -> FieldChange {
    FieldChange {
        api: Api::GoogleAds,
        version,
        field,
        replacement: Some(replacement),
        source: GOOGLE_UPGRADE,
        // The upgrade guide's version sections carry no date of their own.
        source_date: "undated page, read 2026-12-04",
    }
}

/// Every change sluice knows, oldest version first.
///
/// Marketing API v19.0 (released 2024-01-23): Ads Insights no longer returns these
/// metrics. v22.0: the legacy Instagram fields are replaced (Meta's post of
/// 2025-08-11). Google Ads API: the "Upgrade your API version" guide's v14→v15
/// and v16→v17 sections (its v21→v22 rename, of an error detail's field, is no
/// field a query selects and is left out).
pub const CHANGES: &[FieldChange] = &[
    fb(19, "age_targeting", None, FB_V19, "2024-01-23"),
    fb(19, "gender_targeting", None, FB_V19, "2024-01-23"),
    fb(19, "labels", None, FB_V19, "2024-01-23"),
    fb(19, "location", None, FB_V19, "2024-01-23"),
    fb(
        19,
        "estimated_ad_recall_rate_lower_bound",
        None,
        FB_V19,
        "2024-01-23",
    ),
    fb(
        19,
        "estimated_ad_recall_rate_upper_bound",
        None,
        FB_V19,
        "2024-01-23",
    ),
    fb(
        19,
        "estimated_ad_recallers_lower_bound",
        None,
        FB_V19,
        "2024-01-23",
    ),
    fb(
        19,
        "estimated_ad_recallers_upper_bound",
        None,
        FB_V19,
        "2024-01-23",
    ),
    fb(
        22,
        "instagram_actor_id",
        Some("instagram_user_id"),
        FB_INSTAGRAM,
        "2025-08-11",
    ),
    fb(
        22,
        "instagram_story_id",
        Some("source_instagram_media_id"),
        FB_INSTAGRAM,
        "2025-08-11",
    ),
    fb(
        22,
        "effective_instagram_story_id",
        Some("effective_instagram_media_id"),
        FB_INSTAGRAM,
        "2025-08-11",
    ),
    google(
        15,
        "asset_group_listing_group_filter.vertical",
        "asset_group_listing_group_filter.feed_type",
    ),
    google(
        17,
        "metrics.sk_ad_network_conversion_value",
        "metrics.sk_ad_network_fine_conversion_value",
    ),
    google(
        17,
        "ad_group_ad.ad.discovery_multi_asset_ad",
        "ad_group_ad.ad.demand_gen_multi_asset_ad",
    ),
    google(
        17,
        "ad_group_ad.ad.discovery_carousel_ad",
        "ad_group_ad.ad.demand_gen_carousel_ad",
    ),
    google(
        17,
        "ad_group_ad.ad.discovery_video_responsive_ad",
        "ad_group_ad.ad.demand_gen_video_responsive_ad",
    ),
];

/// The changes an upgrade of `api` from major `from` to major `to` crosses.
pub fn between(api: Api, from: u32, to: u32) -> Vec<&'static FieldChange> {
    CHANGES
        .iter()
        .filter(|c| c.api == api && c.version > from && c.version <= to)
        .collect()
}

/// A field a pipeline uses, and where that was learned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsedField {
    /// The stream (`insights`, `campaign_daily`).
    pub stream: String,
    /// As the API names it (`spend`, `metrics.clicks`) or, from the registry, the column.
    pub field: String,
    /// `configured` (the stream's fields), `GAQL` (the query's SELECT) or `registry`.
    pub from: &'static str,
}

impl UsedField {
    /// Whether this is `change.field` (or a field under it, `ad_group_ad.ad.x.headline`).
    pub fn is(&self, change: &FieldChange) -> bool {
        if self.from == "registry" && change.api == Api::GoogleAds {
            // Registry columns spell GAQL paths with underscores.
            let column = crate::google_ads::gaql::column_name(change.field);
            return self.field == column || self.field.starts_with(&format!("{column}_"));
        }
        self.field == change.field || self.field.starts_with(&format!("{}.", change.field))
    }
}

/// A source on a versioned API, as its config reads (a sunset version included:
/// that is when an upgrade is needed most).
#[derive(Debug)]
pub struct VersionedSource {
    pub name: String,
    pub api: Api,
    /// `api_version` as configured.
    pub version: String,
    /// The fields its config asks for.
    pub fields: BTreeSet<UsedField>,
    /// stream → D1 table, to add what the registry saw.
    pub tables: Vec<(String, String)>,
}

impl VersionedSource {
    /// The version an upgrade goes to: `to` if given, else the next one sluice knows.
    pub fn target(&self, to: Option<&str>) -> Result<Option<u32>, String> {
        match to {
            Some(to) => major(to)
                .map(Some)
                .ok_or_else(|| format!("`{to}` is not a version (e.g. {})", spell(self.api, 22))),
            None => Ok(major(&self.version).and_then(|m| next_version(self.api, m))),
        }
    }

    /// The configured version's major number.
    pub fn major(&self) -> Result<u32, String> {
        major(&self.version).ok_or_else(|| {
            format!(
                "`api_version: {}` is not a version (e.g. {})",
                self.version,
                spell(self.api, 22)
            )
        })
    }
}

/// The versioned API a source section uses, and the fields its config asks for;
/// `None` for a source on no versioned API.
pub fn versioned_source(
    doc: &ConfigDocument,
    section: &Section,
) -> Result<Option<VersionedSource>, ConfigError> {
    let name = section.name.clone();
    match section.kind.as_str() {
        "facebook_ads" => {
            let config: FacebookConfig = doc.parse_section(section)?;
            let streams = crate::facebook_ads::streams::configured_fields(&config);
            Ok(Some(VersionedSource {
                api: Api::FacebookMarketing,
                version: config.api_version.clone(),
                fields: used(&streams, "configured"),
                tables: streams
                    .iter()
                    .map(|(stream, table, _)| (stream.clone(), table_name(&name, stream, table)))
                    .collect(),
                name,
            }))
        }
        "google_ads" => {
            let config: GoogleConfig = doc.parse_section(section)?;
            let streams = crate::google_ads::selected_fields(&config);
            Ok(Some(VersionedSource {
                api: Api::GoogleAds,
                version: config.api_version.clone(),
                fields: used(&streams, "GAQL"),
                tables: streams
                    .iter()
                    .map(|(stream, table, _)| (stream.clone(), table_name(&name, stream, table)))
                    .collect(),
                name,
            }))
        }
        _ => Ok(None),
    }
}

type StreamFields = (String, Option<String>, Vec<String>);

fn used(streams: &[StreamFields], from: &'static str) -> BTreeSet<UsedField> {
    streams
        .iter()
        .flat_map(|(stream, _, fields)| {
            fields.iter().map(move |f| UsedField {
                stream: stream.clone(),
                field: f.clone(),
                from,
            })
        })
        .collect()
}

fn table_name(source: &str, stream: &str, table: &Option<String>) -> String {
    table
        .clone()
        .unwrap_or_else(|| format!("{source}_{stream}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(stream: &str, field: &str, from: &'static str) -> UsedField {
        UsedField {
            stream: stream.into(),
            field: field.into(),
            from,
        }
    }

    #[test]
    fn every_entry_names_its_source_and_date() {
        for change in CHANGES {
            assert!(
                change.source.starts_with("https://developers."),
                "{change:?}"
            );
            assert!(!change.source_date.is_empty(), "{change:?}");
            assert!(change.replacement != Some(change.field), "{change:?}");
        }
    }

    #[test]
    fn facebook_an_upgrade_crosses_the_versions_between() {
        let v18_to_19 = between(Api::FacebookMarketing, 18, 19);
        assert!(v18_to_19
            .iter()
            .any(|c| c.field == "estimated_ad_recallers_lower_bound" && c.replacement.is_none()));
        assert!(!v18_to_19.iter().any(|c| c.version == 22));
        let to_22 = between(Api::FacebookMarketing, 21, 22);
        let actor = to_22
            .iter()
            .find(|c| c.field == "instagram_actor_id")
            .expect("v22 replaces instagram_actor_id");
        assert_eq!(actor.replacement, Some("instagram_user_id"));
        assert!(between(Api::FacebookMarketing, 22, 27).is_empty());
        assert!(field("insights", "instagram_actor_id", "configured").is(actor));
        assert!(!field("insights", "instagram_actor_id_x", "configured").is(actor));
    }

    #[test]
    fn google_fields_match_by_gaql_path_and_registry_column() {
        let to_17 = between(Api::GoogleAds, 16, 17);
        let sk = to_17
            .iter()
            .find(|c| c.field == "metrics.sk_ad_network_conversion_value")
            .unwrap();
        assert_eq!(
            sk.replacement,
            Some("metrics.sk_ad_network_fine_conversion_value")
        );
        assert!(field("apps", "metrics.sk_ad_network_conversion_value", "GAQL").is(sk));
        assert!(field("apps", "sk_ad_network_conversion_value", "registry").is(sk));
        let carousel = to_17
            .iter()
            .find(|c| c.field == "ad_group_ad.ad.discovery_carousel_ad")
            .unwrap();
        assert!(field(
            "ads",
            "ad_group_ad.ad.discovery_carousel_ad.headline",
            "GAQL"
        )
        .is(carousel));
        assert!(!field("ads", "metrics.clicks", "GAQL").is(carousel));
        assert!(between(Api::GoogleAds, 17, 26).is_empty());
        assert_eq!(between(Api::GoogleAds, 14, 17).len(), 5);
    }
}
