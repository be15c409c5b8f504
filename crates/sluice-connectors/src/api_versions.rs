//! API version lifecycles: the sunset dates of the Facebook Marketing API and
//! Google Ads API versions sluice knows, and the verdict on a configured version
//! (fine, nearing its sunset, or already sunset).
//!
//! A sunset version stops answering (Facebook error 2635, Google requests fail),
//! so a pipeline pinned to one breaks on a known day. sluice warns from
//! [`WARN_DAYS`] before that day, in `validate` and every run, and refuses a
//! version past it as a config error naming `api_version`.
//!
//! The tables are facts copied from the vendors' pages (cited per entry). A
//! version newer than every entry, or one whose sunset is not announced yet,
//! gets no verdict: sluice does not guess dates.

use chrono::NaiveDate;

/// Days before a sunset from which a configured version is warned about.
pub const WARN_DAYS: i64 = 90;

/// A major version and its sunset day (year, month, day), if announced.
type Entry = (u32, Option<(i32, u32, u32)>);

/// An API whose versions sunset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The Facebook (Meta) Marketing API on the Graph API (`v26.0`).
    FacebookMarketing,
    /// The Google Ads API (`v26`).
    GoogleAds,
}

impl Api {
    pub fn label(self) -> &'static str {
        match self {
            Api::FacebookMarketing => "Facebook Marketing API",
            Api::GoogleAds => "Google Ads API",
        }
    }

    /// (major version, sunset date if announced), oldest first.
    fn table(self) -> &'static [Entry] {
        match self {
            Api::FacebookMarketing => FACEBOOK_MARKETING,
            Api::GoogleAds => GOOGLE_ADS,
        }
    }
}

/// Marketing API "Expiration Date" per version, from Meta's version history
/// (https://developers.facebook.com/docs/marketing-api/marketing-api-changelog/versions,
/// as read on 2026-12-01). The Marketing API expires versions earlier than the
/// rest of the Graph API, and it is the Ads endpoints sluice calls. v26.0 and
/// v27.0 (released 2026-07-29 and 2026-11-04) had no date announced.
const FACEBOOK_MARKETING: &[Entry] = &[
    (15, Some((2023, 9, 20))),
    (16, Some((2024, 2, 6))),
    (17, Some((2024, 5, 14))),
    (18, Some((2024, 8, 13))),
    (19, Some((2025, 2, 4))),
    (20, Some((2025, 5, 6))),
    (21, Some((2025, 9, 9))),
    (22, Some((2026, 2, 19))),
    (23, Some((2026, 6, 9))),
    (24, Some((2026, 11, 10))),
    (25, Some((2027, 2, 23))),
    (26, None),
    (27, None),
];

/// Google Ads API sunset dates, from the Google Ads Developer Blog's sunset
/// reminders (https://developers.google.com/ads/blog, label "sunset"): v14
/// 2024-04-18 post, v15 2024-08-15, v16 2025-01-10, v17 2025-04-23, v18
/// 2025-07-10, v19 2025-12-15, v20 2026-04-29, v21 2026-06-25, v22 2026-09-02.
/// v23 to v26 had no sunset announced as of 2026-12-01
/// (https://developers.google.com/google-ads/api/docs/sunset-dates).
const GOOGLE_ADS: &[Entry] = &[
    (14, Some((2024, 6, 5))),
    (15, Some((2024, 9, 25))),
    (16, Some((2025, 2, 5))),
    (17, Some((2025, 6, 4))),
    (18, Some((2025, 8, 20))),
    (19, Some((2026, 2, 11))),
    (20, Some((2026, 6, 10))),
    (21, Some((2026, 8, 5))),
    (22, Some((2026, 10, 7))),
    (23, None),
    (24, None),
    (25, None),
    (26, None),
];

/// What the table says about a configured version on a given day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// Known, and no sunset within [`WARN_DAYS`] (or none announced).
    Supported,
    /// Sunsets on `sunset`, `days_left` days from today (at most [`WARN_DAYS`]).
    NearSunset { sunset: NaiveDate, days_left: i64 },
    /// Stopped answering on `sunset` (for a version older than the table: the
    /// oldest listed version's sunset, which it preceded).
    Sunset { sunset: NaiveDate },
    /// Not a version the table can place (newer than every entry, or unreadable).
    Unknown,
}

/// The major number of `v26.0`, `v26`, `26`, `v23_1`.
pub fn major(version: &str) -> Option<u32> {
    let digits: String = version
        .trim()
        .trim_start_matches(['v', 'V'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn date((y, m, d): (i32, u32, u32)) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

/// The lifecycle of `version` of `api` on `today`.
pub fn lifecycle(api: Api, version: &str, today: NaiveDate) -> Lifecycle {
    let Some(major) = major(version) else {
        return Lifecycle::Unknown;
    };
    let table = api.table();
    let sunset = match table.iter().find(|(v, _)| *v == major) {
        Some((_, Some(d))) => date(*d),
        Some((_, None)) => return Lifecycle::Supported,
        None => match table.first() {
            // Older than every listed version: it sunset before the oldest did.
            Some((oldest, Some(d))) if major < *oldest => date(*d),
            _ => return Lifecycle::Unknown,
        },
    };
    let Some(sunset) = sunset else {
        return Lifecycle::Unknown;
    };
    let days_left = (sunset - today).num_days();
    if days_left <= 0 {
        Lifecycle::Sunset { sunset }
    } else if days_left <= WARN_DAYS {
        Lifecycle::NearSunset { sunset, days_left }
    } else {
        Lifecycle::Supported
    }
}

/// The version after `major` that the table lists (what an upgrade goes to next).
pub fn next_version(api: Api, major: u32) -> Option<u32> {
    api.table().iter().map(|(v, _)| *v).find(|v| *v > major)
}

/// How `api` spells major version `major`: `v22.0` (Graph API), `v22` (Google Ads).
pub fn spell(api: Api, major: u32) -> String {
    match api {
        Api::FacebookMarketing => format!("v{major}.0"),
        Api::GoogleAds => format!("v{major}"),
    }
}

/// The newest version the table lists for `api` (what to upgrade to).
pub fn newest(api: Api) -> u32 {
    api.table().last().map(|(v, _)| *v).unwrap_or(0)
}

/// The verdict for a configured `version` as a message: `Err` for a sunset
/// version (a config error at `api_version`), `Ok(Some(warning))` within
/// [`WARN_DAYS`] of its sunset, `Ok(None)` otherwise.
pub fn judge(api: Api, version: &str, today: NaiveDate) -> Result<Option<String>, String> {
    let latest = match api {
        Api::FacebookMarketing => format!("v{}.0", newest(api)),
        Api::GoogleAds => format!("v{}", newest(api)),
    };
    match lifecycle(api, version, today) {
        Lifecycle::Sunset { sunset } => Err(format!(
            "{} {version} was sunset on {sunset} and no longer answers: set `api_version` to a supported version (newest known: {latest})",
            api.label()
        )),
        Lifecycle::NearSunset { sunset, days_left } => Ok(Some(format!(
            "{} {version} is sunset on {sunset} ({days_left} days from now): upgrade `api_version` (newest known: {latest}) before then",
            api.label()
        ))),
        Lifecycle::Supported | Lifecycle::Unknown => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn facebook_version_30_days_from_sunset_warns_and_a_sunset_one_is_an_error() {
        let sunset = d(2027, 2, 23); // v25.0
        let warning = judge(Api::FacebookMarketing, "v25.0", sunset - Duration::days(30))
            .unwrap()
            .expect("a warning 30 days out");
        assert!(
            warning.contains("v25.0")
                && warning.contains("2027-02-23")
                && warning.contains("30 days"),
            "{warning}"
        );
        let error = judge(Api::FacebookMarketing, "v25.0", sunset).unwrap_err();
        assert!(
            error.contains("`api_version`") && error.contains("sunset on 2027-02-23"),
            "{error}"
        );
        // 91 days out is quiet; a version with no announced sunset is quiet.
        assert_eq!(
            judge(Api::FacebookMarketing, "v25.0", sunset - Duration::days(91)),
            Ok(None)
        );
        assert_eq!(
            judge(Api::FacebookMarketing, "v26.0", d(2030, 1, 1)),
            Ok(None)
        );
    }

    #[test]
    fn google_version_30_days_from_sunset_warns_and_a_sunset_one_is_an_error() {
        let sunset = d(2026, 10, 7); // v22
        assert_eq!(
            lifecycle(Api::GoogleAds, "v22", sunset - Duration::days(30)),
            Lifecycle::NearSunset {
                sunset,
                days_left: 30
            }
        );
        assert!(judge(Api::GoogleAds, "v22", sunset - Duration::days(30))
            .unwrap()
            .is_some());
        let error = judge(Api::GoogleAds, "v22", sunset + Duration::days(1)).unwrap_err();
        assert!(
            error.contains("Google Ads API v22") && error.contains("`api_version`"),
            "{error}"
        );
    }

    #[test]
    fn versions_older_than_the_table_are_sunset_and_newer_ones_unknown() {
        assert_eq!(
            lifecycle(Api::GoogleAds, "v12", d(2026, 12, 1)),
            Lifecycle::Sunset {
                sunset: d(2024, 6, 5)
            }
        );
        assert_eq!(
            lifecycle(Api::GoogleAds, "v40", d(2026, 12, 1)),
            Lifecycle::Unknown
        );
        assert_eq!(
            lifecycle(Api::GoogleAds, "latest", d(2026, 12, 1)),
            Lifecycle::Unknown
        );
        assert_eq!(major("v23_1"), Some(23));
    }
}
