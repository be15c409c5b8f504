//! The example marketing project (examples/marketing), compiled into the binary:
//! `sluice demo` runs it against an in-process sandbox, `sluice init --template
//! marketing` writes it out for a person to run and change. Both also write its
//! CRM database (`crm.db`, the `type: sqlite` source) from [`crm_customers`].

use std::path::Path;

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

/// The example's CRM database file, relative to the project (`sources.crm.path`).
pub const CRM_DATABASE: &str = "crm.db";

/// One customer of the example CRM database.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmCustomer {
    pub customer_id: i64,
    pub email: String,
    pub phone: String,
    /// `None` is a NULL address.
    pub address: Option<String>,
    /// Cents: the column is `DECIMAL(12,2)`.
    pub lifetime_value_cents: i64,
    pub signed_up_on: NaiveDate,
    pub is_active: bool,
    /// `YYYY-MM-DD HH:MM:SS`, as SQLite applications usually store a DATETIME.
    pub updated_at: String,
}

/// `count` deterministic customers: the same list for the same `seed`. About one in
/// seven has an address no parcel reaches — empty, blank, NULL, shaped like an SSN
/// (`123-45-6789` or `123456789`) or all digits — the rest a street address.
pub fn crm_customers(seed: u64, count: usize) -> Vec<CrmCustomer> {
    const STREETS: &[&str] = &[
        "Harbour Rd",
        "Elm St",
        "Mill Lane",
        "Station Ave",
        "Kings Way",
    ];
    const CITIES: &[&str] = &["Leeds", "Porto", "Austin", "Lyon", "Pune", "Cork"];
    let epoch = NaiveDate::from_ymd_opt(2023, 1, 1).expect("a valid date");
    (0..count as u64)
        .map(|i| {
            // A fixed mix per customer (splitmix64 of seed and index): no RNG crate
            // whose sequence could change between versions.
            let mut z = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let r = z ^ (z >> 31);
            let id = 1001 + i as i64;
            let nine = format!("{:09}", r % 1_000_000_000);
            let address = match (r >> 20) % 28 {
                0 => Some(String::new()),
                1 => Some("   ".into()),
                2 => None,
                3 => Some(format!("{}-{}-{}", &nine[..3], &nine[3..5], &nine[5..])),
                4 => Some(nine.clone()),
                5 => Some(format!("{}", 10_000 + r % 90_000)),
                _ => Some(format!(
                    "{} {}, {}",
                    1 + (r >> 8) % 240,
                    STREETS[(r >> 16) as usize % STREETS.len()],
                    CITIES[(r >> 24) as usize % CITIES.len()]
                )),
            };
            let signed_up_on = epoch + chrono::Duration::days(((r >> 32) % 700) as i64);
            CrmCustomer {
                customer_id: id,
                email: format!("customer{id}@example.com"),
                phone: format!("+1 555 {:03} {:04}", (r >> 12) % 1000, (r >> 40) % 10_000),
                address,
                lifetime_value_cents: ((r >> 16) % 250_000) as i64,
                signed_up_on,
                is_active: (r >> 5) % 5 != 0,
                updated_at: format!(
                    "{} 09:{:02}:{:02}",
                    signed_up_on,
                    (r >> 44) % 60,
                    (r >> 50) % 60
                ),
            }
        })
        .collect()
}

/// Writes `customers` as the CRM database at `path` (replacing the file).
pub fn write_crm_database(path: &Path, customers: &[CrmCustomer]) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let write = || -> rusqlite::Result<()> {
        let mut conn = rusqlite::Connection::open(path)?;
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE customers (
               customer_id    INTEGER PRIMARY KEY,
               email          TEXT NOT NULL,
               phone          TEXT,
               address        TEXT,
               lifetime_value DECIMAL(12,2) NOT NULL,
               signed_up_on   DATE NOT NULL,
               is_active      BOOLEAN NOT NULL,
               updated_at     DATETIME NOT NULL
             );",
        )?;
        {
            let mut insert =
                tx.prepare("INSERT INTO customers VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?;
            for c in customers {
                insert.execute(rusqlite::params![
                    c.customer_id,
                    c.email,
                    c.phone,
                    c.address,
                    format!(
                        "{}.{:02}",
                        c.lifetime_value_cents / 100,
                        c.lifetime_value_cents % 100
                    ),
                    c.signed_up_on.to_string(),
                    c.is_active,
                    c.updated_at,
                ])?;
            }
        }
        tx.commit()
    };
    write().map_err(std::io::Error::other)
}
