//! The example marketing project (examples/marketing), compiled into the binary:
//! `sluice demo` runs it against an in-process sandbox, `sluice init --template
//! marketing` writes it out for a person to run and change.

use chrono::NaiveDate;
use sluice_sandbox::credentials;

/// The example project, compiled into the binary so the demo needs nothing else.
pub const PIPELINE: &str = include_str!("../../../../examples/marketing/pipeline.yaml");
/// The example project's models (path under `models/`, content).
pub const MODELS: &[(&str, &str)] = &[
    (
        "currency_rates.csv",
        include_str!("../../../../examples/marketing/models/currency_rates.csv"),
    ),
    (
        "d2a/ad_performance_daily.sql",
        include_str!("../../../../examples/marketing/models/d2a/ad_performance_daily.sql"),
    ),
    (
        "d2a/ad_performance_daily.yml",
        include_str!("../../../../examples/marketing/models/d2a/ad_performance_daily.yml"),
    ),
    (
        "d2a/customer_profiles.sql",
        include_str!("../../../../examples/marketing/models/d2a/customer_profiles.sql"),
    ),
    (
        "d2a/customer_profiles.yml",
        include_str!("../../../../examples/marketing/models/d2a/customer_profiles.yml"),
    ),
    (
        "d2b/channel_spend_daily.sql",
        include_str!("../../../../examples/marketing/models/d2b/channel_spend_daily.sql"),
    ),
    (
        "d2b/channel_spend_daily.yml",
        include_str!("../../../../examples/marketing/models/d2b/channel_spend_daily.yml"),
    ),
    (
        "d2b/customer_address_exceptions.sql",
        include_str!("../../../../examples/marketing/models/d2b/customer_address_exceptions.sql"),
    ),
    (
        "d2b/customer_address_exceptions.yml",
        include_str!("../../../../examples/marketing/models/d2b/customer_address_exceptions.yml"),
    ),
];

/// The `.env` that points the example at a sandbox at `base_url`: its address and
/// its (public, fake) credentials, through the same `${VAR}` route real ones take.
pub fn sandbox_env(base_url: &str, start: NaiveDate) -> String {
    format!(
        "SANDBOX_URL={base_url}\nGOOGLE_TOKEN_URL={base_url}/token\nSTART_DATE={start}\n\
         FB_TOKEN={}\nGADS_DEV_TOKEN={}\nGADS_CLIENT_ID={}\nGADS_CLIENT_SECRET={}\nGADS_REFRESH_TOKEN={}\n\
         GADS_MANAGER_ID={}\nCT_ACCOUNT={}\nCT_PASSCODE={}\n",
        credentials::FACEBOOK_ACCESS_TOKEN,
        credentials::GOOGLE_DEVELOPER_TOKEN,
        credentials::GOOGLE_CLIENT_ID,
        credentials::GOOGLE_CLIENT_SECRET,
        credentials::GOOGLE_REFRESH_TOKEN,
        credentials::GOOGLE_MANAGER_CUSTOMER_ID,
        credentials::CLEVERTAP_ACCOUNT_ID,
        credentials::CLEVERTAP_PASSCODE,
    )
}
