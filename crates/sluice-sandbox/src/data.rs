//! The deterministic synthetic world the sandbox serves.
//!
//! Everything is a pure function of `(seed, scale)` plus, for metrics, the
//! `today` of the run. Entities (accounts, campaigns, ads, customers,
//! profiles) are few and built once in [`World::new`]; per-day metrics are
//! never stored: [`World::fb_ad_day`], [`World::google_ad_day`] and
//! [`World::ct_event`] hash `(seed, entity, day)` so any single value can be
//! computed on its own. That keeps the server fast (no global generation)
//! and lets `truth` and the server agree by construction: both call the
//! same functions.
//!
//! "Recent days change": for a day `d` at most 28 days before `today`
//! (and `today` itself), metrics are served with a drift that shrinks as
//! the day ages (extra clicks and spend not yet removed as invalid,
//! purchases/conversions not yet attributed). An earlier `today` therefore
//! serves different numbers for the same day, as the real APIs do.
//!
//! Why one file over 700 lines: every value the sandbox serves and `truth` reports
//! comes from these functions; keeping them together is what makes the two agree.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime};

/// Days before `today` whose metrics still drift (see module docs).
pub const RECENT_DAYS: i64 = 28;

/// Facebook: currency, time zone, UTC offset (hours, summer) of the account templates.
const FB_ACCOUNT_TEMPLATES: [(&str, &str, i32); 3] = [
    ("USD", "America/Los_Angeles", -7),
    ("EUR", "Europe/Berlin", 2),
    ("GBP", "Europe/London", 1),
];
/// First Facebook ad account id; account `i` is `base + 17 i`.
pub const FB_ACCOUNT_ID_BASE: u64 = 284_019_000_000_001;
/// The Google manager (MCC) id; client `i` is `manager + 1 + 7 i`.
pub const GOOGLE_MANAGER_ID: u64 = 8_145_550_100;
const FB_CAMPAIGNS_PER_ACCOUNT: usize = 3;
const FB_ADSETS_PER_CAMPAIGN: usize = 2;
const FB_ADS_PER_ACCOUNT: usize = 11;

/// Google: currency and time zone of client customers, cycled.
const GOOGLE_CLIENT_TEMPLATES: [(&str, &str); 3] = [
    ("EUR", "Europe/Berlin"),
    ("USD", "America/New_York"),
    ("EUR", "Europe/Madrid"),
];
const GOOGLE_CAMPAIGNS_PER_CLIENT: usize = 4;
const GOOGLE_AD_GROUPS_PER_CAMPAIGN: usize = 2;
const GOOGLE_ADS_PER_AD_GROUP: usize = 2;

/// CleverTap event names with their daily volume per 300 profiles.
pub const CT_EVENTS: [(&str, u64); 5] = [
    ("App Launched", 120),
    ("Product Viewed", 90),
    ("Added To Cart", 35),
    ("Charged", 12),
    ("App Uninstalled", 2),
];
const CT_PROFILES_PER_SCALE: usize = 300;

// ---------------------------------------------------------------- hashing

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash step.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a tuple of integers; order matters.
pub fn h(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x5EED_5A1C_u64, |acc, &p| mix(acc.rotate_left(7) ^ p))
}

/// A value in `lo..=hi` drawn from hash `hv`.
fn pick(hv: u64, lo: u64, hi: u64) -> u64 {
    lo + hv % (hi - lo + 1)
}

fn day_key(d: NaiveDate) -> u64 {
    d.num_days_from_ce() as u64
}

fn str_key(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |acc, b| {
        (acc ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// How much a day's numbers still drift on `today`: 0 for settled days.
pub fn drift(day: NaiveDate, today: NaiveDate) -> i64 {
    let age = (today - day).num_days();
    if (0..=RECENT_DAYS).contains(&age) {
        RECENT_DAYS + 1 - age
    } else {
        0
    }
}

// ---------------------------------------------------------------- facebook

#[derive(Debug, Clone)]
pub struct FbAccount {
    /// Digits only; the API writes it `act_<id>`.
    pub id: String,
    pub name: String,
    pub currency: &'static str,
    pub timezone: &'static str,
    pub tz_offset_hours: i32,
    pub business_id: String,
}

#[derive(Debug, Clone)]
pub struct FbCampaign {
    pub id: String,
    pub account: usize,
    pub name: String,
    pub objective: &'static str,
    pub daily_budget_minor: u64,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    pub start: NaiveDate,
    /// A scheduled end, set on some campaigns only: the API omits `stop_time` on the others.
    pub stop: Option<NaiveDate>,
}

#[derive(Debug, Clone)]
pub struct FbAdset {
    pub id: String,
    pub account: usize,
    pub campaign: usize,
    pub name: String,
    pub daily_budget_minor: u64,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    pub start: NaiveDate,
}

#[derive(Debug, Clone)]
pub struct FbAd {
    pub id: String,
    pub account: usize,
    pub campaign: usize,
    pub adset: usize,
    pub name: String,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    /// First day with delivery.
    pub start: NaiveDate,
    key: u64,
    base_impressions: u64,
    ctr_bp: u64,
    cpm_minor: u64,
    cvr_permille: u64,
    aov_minor: u64,
}

/// One ad's numbers for one day (before any breakdown split).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FbMetrics {
    pub impressions: i64,
    pub clicks: i64,
    /// Spend in the currency's minor unit (cents).
    pub spend_minor: i64,
    pub reach: i64,
    pub link_clicks: i64,
    pub purchases_1d_click: i64,
    pub purchases_7d_click: i64,
    pub purchases_1d_view: i64,
    pub purchase_value_minor: i64,
}

impl FbMetrics {
    pub fn add(&mut self, o: &FbMetrics) {
        self.impressions += o.impressions;
        self.clicks += o.clicks;
        self.spend_minor += o.spend_minor;
        self.reach += o.reach;
        self.link_clicks += o.link_clicks;
        self.purchases_1d_click += o.purchases_1d_click;
        self.purchases_7d_click += o.purchases_7d_click;
        self.purchases_1d_view += o.purchases_1d_view;
        self.purchase_value_minor += o.purchase_value_minor;
    }

    fn fields_mut(&mut self) -> [&mut i64; 9] {
        [
            &mut self.impressions,
            &mut self.clicks,
            &mut self.spend_minor,
            &mut self.reach,
            &mut self.link_clicks,
            &mut self.purchases_1d_click,
            &mut self.purchases_7d_click,
            &mut self.purchases_1d_view,
            &mut self.purchase_value_minor,
        ]
    }
}

/// Breakdown dimensions and their values.
pub const FB_AGES: [&str; 6] = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"];
pub const FB_GENDERS: [&str; 3] = ["female", "male", "unknown"];
pub const FB_COUNTRIES: [&str; 5] = ["US", "DE", "GB", "FR", "NL"];
pub const FB_PLATFORMS: [&str; 4] = ["facebook", "instagram", "audience_network", "messenger"];

pub fn fb_breakdown_values(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "age" => &FB_AGES,
        "gender" => &FB_GENDERS,
        "country" => &FB_COUNTRIES,
        "publisher_platform" => &FB_PLATFORMS,
        _ => return None,
    })
}

/// Split every metric of `m` over `n` buckets with deterministic weights
/// (keyed by `key`); the parts sum exactly to `m`.
pub fn fb_split(m: &FbMetrics, key: u64, n: usize) -> Vec<FbMetrics> {
    let weights: Vec<u64> = (0..n as u64).map(|i| pick(h(&[key, i]), 1, 100)).collect();
    let total: u64 = weights.iter().sum();
    let mut out = vec![FbMetrics::default(); n];
    let mut src = *m;
    for (fi, value) in src.fields_mut().into_iter().enumerate() {
        let v = *value;
        let mut given = 0;
        for (bi, w) in weights.iter().enumerate() {
            let part = v * *w as i64 / total as i64;
            *out[bi].fields_mut()[fi] = part;
            given += part;
        }
        // The rounding remainder goes to the heaviest bucket so sums stay exact.
        let heaviest = (0..n).max_by_key(|&i| weights[i]).unwrap_or(0);
        *out[heaviest].fields_mut()[fi] += v - given;
    }
    out
}

// ---------------------------------------------------------------- google

#[derive(Debug, Clone)]
pub struct GCustomer {
    /// 10 digits.
    pub id: String,
    pub name: String,
    pub currency: &'static str,
    pub timezone: &'static str,
    pub manager: bool,
}

#[derive(Debug, Clone)]
pub struct GCampaign {
    pub id: String,
    pub customer: usize,
    pub name: String,
    pub channel: &'static str,
    pub start: NaiveDate,
}

#[derive(Debug, Clone)]
pub struct GAdGroup {
    pub id: String,
    pub customer: usize,
    pub campaign: usize,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct GAd {
    pub id: String,
    pub customer: usize,
    pub campaign: usize,
    pub ad_group: usize,
    pub name: String,
    pub start: NaiveDate,
    key: u64,
    base_impressions: u64,
    ctr_bp: u64,
    cpc_minor: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GMetrics {
    pub impressions: i64,
    pub clicks: i64,
    pub cost_micros: i64,
    /// Conversions in hundredths (the API serves a double).
    pub conversions_centi: i64,
    pub conversions_value_minor: i64,
}

impl GMetrics {
    pub fn add(&mut self, o: &GMetrics) {
        self.impressions += o.impressions;
        self.clicks += o.clicks;
        self.cost_micros += o.cost_micros;
        self.conversions_centi += o.conversions_centi;
        self.conversions_value_minor += o.conversions_value_minor;
    }
}

// ---------------------------------------------------------------- clevertap

#[derive(Debug, Clone)]
pub struct CtProfile {
    pub identity: String,
    pub object_id: String,
    pub name: String,
    pub email: String,
    pub phone: String,
    pub gender: &'static str,
    pub platform: &'static str,
    pub address: String,
    pub zip: String,
    pub city: &'static str,
}

/// Why an address is invalid, as `truth` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressProblem {
    Empty,
    AllDigits,
    SsnShaped,
}

/// Classify a postal address: empty, SSN-shaped (`123-45-6789` or nine
/// digits), other all-digit strings, or `None` when it looks like an address.
pub fn classify_address(a: &str) -> Option<AddressProblem> {
    let t = a.trim();
    if t.is_empty() {
        return Some(AddressProblem::Empty);
    }
    let b = t.as_bytes();
    let dashed = b.len() == 11
        && b.iter().enumerate().all(|(i, c)| {
            if i == 3 || i == 6 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if dashed || (b.len() == 9 && b.iter().all(u8::is_ascii_digit)) {
        return Some(AddressProblem::SsnShaped);
    }
    if b.iter().all(u8::is_ascii_digit) {
        return Some(AddressProblem::AllDigits);
    }
    None
}

/// One CleverTap event occurrence.
#[derive(Debug, Clone)]
pub struct CtEvent {
    pub profile: usize,
    /// `yyyyMMddHHmmss` in the account time zone.
    pub ts: u64,
    pub index: u64,
}

// ---------------------------------------------------------------- world

/// All entities of one `(seed, scale)`.
#[derive(Debug)]
pub struct World {
    pub seed: u64,
    pub scale: u32,
    pub fb_accounts: Vec<FbAccount>,
    pub fb_campaigns: Vec<FbCampaign>,
    pub fb_adsets: Vec<FbAdset>,
    pub fb_ads: Vec<FbAd>,
    pub g_manager: GCustomer,
    pub g_clients: Vec<GCustomer>,
    pub g_campaigns: Vec<GCampaign>,
    pub g_ad_groups: Vec<GAdGroup>,
    pub g_ads: Vec<GAd>,
    pub ct_profiles: Vec<CtProfile>,
}

const FIRST_NAMES: [&str; 12] = [
    "Ann", "Ben", "Chloé", "Dmitri", "Eva", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemi",
    "Lena",
];
const LAST_NAMES: [&str; 10] = [
    "Berger", "Okafor", "Schmidt", "Rossi", "Nowak", "García", "Müller", "Smith", "Dubois",
    "Tanaka",
];
const STREETS: [&str; 8] = [
    "Main St",
    "Hauptstraße",
    "High Street",
    "Rue de la Paix",
    "Elm Avenue",
    "Kastanienallee",
    "Baker Street",
    "Calle Mayor",
];
const CITIES: [&str; 6] = ["Berlin", "London", "Paris", "Austin", "Madrid", "Hamburg"];

fn dt(d: NaiveDate, secs: u64) -> NaiveDateTime {
    d.and_time(NaiveTime::MIN) + Duration::seconds(secs as i64)
}

fn epoch_day(offset: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2023, 1, 1).expect("valid date") + Duration::days(offset as i64)
}

impl World {
    pub fn new(seed: u64, scale: u32) -> World {
        let scale = scale.max(1);
        let s = |parts: &[u64]| h(&[&[seed][..], parts].concat());
        // Object ids above 2^53, like real ones (2^53 ≈ 9.007e15).
        let id_base = 23_850_000_000_000_000u64 + (s(&[1]) % 9_000) * 100_000_000_000;
        let mut fb_accounts = Vec::new();
        let mut fb_campaigns = Vec::new();
        let mut fb_adsets = Vec::new();
        let mut fb_ads = Vec::new();
        let n_accounts = 3 * scale as usize;
        // Fixed across seeds so pipeline configs can name them.
        let acct_base = FB_ACCOUNT_ID_BASE;
        for a in 0..n_accounts {
            let (currency, timezone, off) = FB_ACCOUNT_TEMPLATES[a % 3];
            fb_accounts.push(FbAccount {
                id: (acct_base + a as u64 * 17).to_string(),
                name: format!("Sandbox {currency} Account {}", a + 1),
                currency,
                timezone,
                tz_offset_hours: off,
                business_id: (1_094_000_000_000_000u64 + acct_base % 1_000_000 + a as u64)
                    .to_string(),
            });
            let first_campaign = fb_campaigns.len();
            for c in 0..FB_CAMPAIGNS_PER_ACCOUNT {
                let ci = fb_campaigns.len();
                let start = epoch_day(pick(s(&[3, ci as u64]), 0, 150));
                let created = dt(
                    start - Duration::days(3),
                    pick(s(&[4, ci as u64]), 0, 86_399),
                );
                fb_campaigns.push(FbCampaign {
                    id: (id_base + 10_000_000 + ci as u64 * 13).to_string(),
                    account: a,
                    name: format!(
                        "{} | {}",
                        ["Prospecting", "Retargeting", "Brand"][c % 3],
                        currency
                    ),
                    objective: ["OUTCOME_SALES", "OUTCOME_TRAFFIC", "OUTCOME_AWARENESS"][c % 3],
                    daily_budget_minor: pick(s(&[5, ci as u64]), 20, 300) * 100,
                    created,
                    updated: created + Duration::days(pick(s(&[6, ci as u64]), 1, 700) as i64),
                    start,
                    // Far enough out that delivery (and so the insights truth) is unaffected.
                    stop: (c % 3 == 1).then(|| start + Duration::days(5 * 365)),
                });
                for _ in 0..FB_ADSETS_PER_CAMPAIGN {
                    let si = fb_adsets.len();
                    let created = created + Duration::hours(pick(s(&[7, si as u64]), 1, 48) as i64);
                    fb_adsets.push(FbAdset {
                        id: (id_base + 20_000_000 + si as u64 * 13).to_string(),
                        account: a,
                        campaign: ci,
                        name: format!("Ad set {} of {}", si - first_campaign * 2 + 1, ci + 1),
                        daily_budget_minor: pick(s(&[8, si as u64]), 10, 150) * 100,
                        created,
                        updated: created + Duration::days(pick(s(&[9, si as u64]), 1, 800) as i64),
                        start,
                    });
                }
            }
            let first_adset = fb_adsets.len() - FB_CAMPAIGNS_PER_ACCOUNT * FB_ADSETS_PER_CAMPAIGN;
            for k in 0..FB_ADS_PER_ACCOUNT {
                let ai = fb_ads.len() as u64;
                let adset = first_adset + k % (FB_CAMPAIGNS_PER_ACCOUNT * FB_ADSETS_PER_CAMPAIGN);
                let campaign = fb_adsets[adset].campaign;
                let start =
                    fb_adsets[adset].start + Duration::days(pick(s(&[10, ai]), 0, 40) as i64);
                let created = dt(start - Duration::days(1), pick(s(&[11, ai]), 0, 86_399));
                fb_ads.push(FbAd {
                    id: (id_base + 30_000_000 + ai * 13).to_string(),
                    account: a,
                    campaign,
                    adset,
                    name: format!(
                        "Creative {} – {}",
                        k + 1,
                        ["video", "carousel", "image"][k % 3]
                    ),
                    created,
                    updated: created + Duration::days(pick(s(&[12, ai]), 1, 900) as i64),
                    start,
                    key: s(&[13, ai]),
                    base_impressions: pick(s(&[14, ai]), 300, 3000),
                    ctr_bp: pick(s(&[15, ai]), 50, 400),
                    cpm_minor: pick(s(&[16, ai]), 200, 1500),
                    cvr_permille: pick(s(&[17, ai]), 10, 60),
                    aov_minor: pick(s(&[18, ai]), 2000, 12000),
                });
            }
        }

        let g_base = GOOGLE_MANAGER_ID;
        let g_manager = GCustomer {
            id: g_base.to_string(),
            name: "Sandbox Manager (MCC)".into(),
            currency: "EUR",
            timezone: "Europe/Berlin",
            manager: true,
        };
        let mut g_clients = Vec::new();
        let mut g_campaigns = Vec::new();
        let mut g_ad_groups = Vec::new();
        let mut g_ads = Vec::new();
        for c in 0..3 * scale as usize {
            let (currency, timezone) = GOOGLE_CLIENT_TEMPLATES[c % 3];
            g_clients.push(GCustomer {
                id: (g_base + 1 + c as u64 * 7).to_string(),
                name: format!("Sandbox Client {} ({currency})", c + 1),
                currency,
                timezone,
                manager: false,
            });
            for k in 0..GOOGLE_CAMPAIGNS_PER_CLIENT {
                let ci = g_campaigns.len();
                let start = epoch_day(pick(s(&[21, ci as u64]), 0, 200));
                g_campaigns.push(GCampaign {
                    id: (20_000_000_000u64 + s(&[22]) % 1_000_000 * 1000 + ci as u64).to_string(),
                    customer: c,
                    name: format!(
                        "{} | {}",
                        ["Brand", "Generic", "Competitor", "Shopping"][k % 4],
                        currency
                    ),
                    channel: ["SEARCH", "SEARCH", "DISPLAY", "SHOPPING"][k % 4],
                    start,
                });
                for g in 0..GOOGLE_AD_GROUPS_PER_CAMPAIGN {
                    let gi = g_ad_groups.len();
                    g_ad_groups.push(GAdGroup {
                        id: (150_000_000_000u64 + s(&[23]) % 1_000_000 * 1000 + gi as u64)
                            .to_string(),
                        customer: c,
                        campaign: ci,
                        name: format!("Ad group {} / {}", g + 1, k + 1),
                    });
                    for _ in 0..GOOGLE_ADS_PER_AD_GROUP {
                        let ai = g_ads.len() as u64;
                        g_ads.push(GAd {
                            id: (700_000_000_000u64 + s(&[24]) % 1_000_000 * 1000 + ai).to_string(),
                            customer: c,
                            campaign: ci,
                            ad_group: gi,
                            name: format!("Responsive ad {}", ai + 1),
                            start,
                            key: s(&[25, ai]),
                            base_impressions: pick(s(&[26, ai]), 100, 2000),
                            ctr_bp: pick(s(&[27, ai]), 100, 900),
                            cpc_minor: pick(s(&[28, ai]), 20, 250),
                        });
                    }
                }
            }
        }

        let n_profiles = CT_PROFILES_PER_SCALE * scale as usize;
        let ct_profiles = (0..n_profiles)
            .map(|i| {
                let k = s(&[30, i as u64]);
                let first = FIRST_NAMES[(k % 12) as usize];
                let last = LAST_NAMES[((k >> 8) % 10) as usize];
                let digits = |hv: u64, n: usize| -> String {
                    (0..n)
                        .map(|j| char::from(b'0' + (h(&[hv, j as u64]) % 10) as u8))
                        .collect()
                };
                let address = match (k >> 16) % 20 {
                    0 => String::new(),
                    1 => digits(k ^ 1, 6),
                    2 => {
                        let d = digits(k ^ 2, 9);
                        format!("{}-{}-{}", &d[..3], &d[3..5], &d[5..])
                    }
                    3 => digits(k ^ 3, 9),
                    _ => format!(
                        "{} {}",
                        pick(k >> 20, 1, 240),
                        STREETS[((k >> 28) % 8) as usize]
                    ),
                };
                CtProfile {
                    identity: format!("C-{}", 10_000 + i),
                    object_id: format!("__g{:016x}", k),
                    name: format!("{first} {last}"),
                    email: format!(
                        "{}.{}{}@example.com",
                        first.to_lowercase(),
                        last.to_lowercase(),
                        i
                    ),
                    phone: format!("+49151{}", digits(k ^ 4, 8)),
                    gender: ["F", "M", "O"][((k >> 36) % 3) as usize],
                    platform: ["Android", "iOS", "Web"][((k >> 40) % 3) as usize],
                    address,
                    zip: digits(k ^ 5, 5),
                    city: CITIES[((k >> 44) % 6) as usize],
                }
            })
            .collect();

        World {
            seed,
            scale,
            fb_accounts,
            fb_campaigns,
            fb_adsets,
            fb_ads,
            g_manager,
            g_clients,
            g_campaigns,
            g_ad_groups,
            g_ads,
            ct_profiles,
        }
    }

    /// One ad's numbers for `day` as served on `today`; `None` when the ad
    /// did not deliver (before its start, after `today`, or a quiet day).
    pub fn fb_ad_day(&self, ad: usize, day: NaiveDate, today: NaiveDate) -> Option<FbMetrics> {
        let a = &self.fb_ads[ad];
        if day < a.start || day > today {
            return None;
        }
        let k = h(&[a.key, day_key(day)]);
        if k % 100 < 3 {
            return None; // ~3 % of days without delivery: no row, like the real API
        }
        let weekend = matches!(day.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun);
        let wf = if weekend { 80 } else { 100 };
        let impressions = (a.base_impressions * pick(k >> 3, 70, 130) * wf / 10_000).max(1);
        let clicks = impressions * (a.ctr_bp * pick(k >> 11, 80, 120) / 100) / 10_000;
        let spend = impressions * a.cpm_minor * pick(k >> 19, 90, 110) / 100 / 1000;
        let reach = impressions * pick(k >> 27, 70, 92) / 100;
        let link = clicks * pick(k >> 33, 85, 95) / 100;
        let p7c = clicks * a.cvr_permille / 1000 + (k >> 40) % 2;
        let p1c = p7c * pick(k >> 42, 60, 90) / 100;
        let p1v = impressions / 2000 * ((k >> 50) % 3);
        let mut m = FbMetrics {
            impressions: impressions as i64,
            clicks: clicks as i64,
            spend_minor: spend as i64,
            reach: reach as i64,
            link_clicks: link as i64,
            purchases_1d_click: p1c as i64,
            purchases_7d_click: p7c as i64,
            purchases_1d_view: p1v as i64,
            purchase_value_minor: ((p7c + p1v) * a.aov_minor) as i64,
        };
        let d = drift(day, today);
        if d > 0 {
            // Not yet removed invalid traffic: a little extra; late purchases: missing.
            m.impressions += m.impressions * d / 1000;
            m.clicks += m.clicks * d / 300;
            m.spend_minor += m.spend_minor * d / 400;
            m.reach += m.reach * d / 1000;
            m.link_clicks += m.link_clicks * d / 300;
            m.purchases_7d_click -= m.purchases_7d_click * d / 60;
            m.purchases_1d_click -= m.purchases_1d_click * d / 60;
            m.purchases_1d_view -= m.purchases_1d_view * d / 60;
            m.purchase_value_minor -= m.purchase_value_minor * d / 60;
        }
        Some(m)
    }

    pub fn fb_account_index(&self, id: &str) -> Option<usize> {
        self.fb_accounts.iter().position(|a| a.id == id)
    }

    /// One Google ad's numbers for `day` as served on `today`.
    pub fn google_ad_day(&self, ad: usize, day: NaiveDate, today: NaiveDate) -> Option<GMetrics> {
        let a = &self.g_ads[ad];
        if day < a.start || day > today {
            return None;
        }
        let k = h(&[a.key, day_key(day)]);
        let weekend = matches!(day.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun);
        let wf = if weekend { 120 } else { 100 };
        let impressions = (a.base_impressions * pick(k, 60, 140) * wf / 10_000).max(1);
        let clicks = impressions * (a.ctr_bp * pick(k >> 9, 80, 120) / 100) / 10_000;
        let cost_minor = clicks * a.cpc_minor * pick(k >> 17, 85, 115) / 100;
        // Multiples of 0.5 conversions: exact as binary doubles, so sums stay exact.
        let conv_centi = clicks * pick(k >> 25, 2, 12) / 50 * 50;
        let mut m = GMetrics {
            impressions: impressions as i64,
            clicks: clicks as i64,
            cost_micros: cost_minor as i64 * 10_000,
            conversions_centi: conv_centi as i64,
            conversions_value_minor: (conv_centi * pick(k >> 33, 30, 90)) as i64,
        };
        let d = drift(day, today);
        if d > 0 {
            m.clicks += m.clicks * d / 300;
            m.cost_micros += (m.cost_micros / 10_000) * d / 400 * 10_000;
            m.conversions_centi -= m.conversions_centi * d / 60;
            m.conversions_value_minor -= m.conversions_value_minor * d / 60;
        }
        Some(m)
    }

    /// All customers, manager first.
    pub fn g_customer(&self, id: &str) -> Option<(Option<usize>, &GCustomer)> {
        if self.g_manager.id == id {
            return Some((None, &self.g_manager));
        }
        self.g_clients
            .iter()
            .enumerate()
            .find(|(_, c)| c.id == id)
            .map(|(i, c)| (Some(i), c))
    }

    /// How many `event` occurrences happen on `day` (0 after `today`).
    pub fn ct_event_count(&self, event: &str, day: NaiveDate, today: NaiveDate) -> u64 {
        if day > today {
            return 0;
        }
        let Some(&(_, base)) = CT_EVENTS.iter().find(|(n, _)| *n == event) else {
            return 0;
        };
        let k = h(&[self.seed, 40, str_key(event), day_key(day)]);
        base * self.scale as u64 * pick(k, 80, 120) / 100
    }

    /// The `index`-th occurrence of `event` on `day`; `index < ct_event_count`.
    pub fn ct_event(&self, event: &str, day: NaiveDate, index: u64, count: u64) -> CtEvent {
        let k = h(&[self.seed, 41, str_key(event), day_key(day), index]);
        let slot = 86_400 / count.max(1);
        let secs = index * slot + k % slot.max(1);
        let t = dt(day, secs);
        let ts = t.format("%Y%m%d%H%M%S").to_string().parse().unwrap_or(0);
        CtEvent {
            profile: (k >> 20) as usize % self.ct_profiles.len(),
            ts,
            index,
        }
    }

    /// The amount of one `Charged` occurrence, in cents (its `Amount` property × 100).
    pub fn ct_charged_minor(&self, day: NaiveDate, e: &CtEvent) -> u64 {
        let k = h(&[self.seed, 42, str_key("Charged"), day_key(day), e.index]);
        pick(k >> 8, 499, 9999) * pick(k, 1, 4)
    }

    /// Event properties of one occurrence; `changed` applies the general schema
    /// change, `charged_changed` the `Charged` story (see [`crate::Faults`]).
    pub fn ct_event_props(
        &self,
        event: &str,
        day: NaiveDate,
        e: &CtEvent,
        changed: bool,
        charged_changed: bool,
    ) -> serde_json::Value {
        use serde_json::json;
        let k = h(&[self.seed, 42, str_key(event), day_key(day), e.index]);
        let qty = pick(k, 1, 4);
        let price_minor = pick(k >> 8, 499, 9999);
        let product = format!("SKU-{}", pick(k >> 20, 1000, 1099));
        let category = ["Shoes", "Shirts", "Bags", "Hats"][((k >> 30) % 4) as usize];
        let mut props = match event {
            "App Launched" => {
                json!({"App Version": format!("5.{}.{}", (k >> 3) % 3, (k >> 5) % 10)})
            }
            "Product Viewed" => json!({"Product ID": product, "Category": category,
                "Price": price_minor as f64 / 100.0}),
            "Added To Cart" => json!({"Product ID": product, "Price": price_minor as f64 / 100.0,
                "Quantity": qty}),
            "Charged" => json!({"Amount": (price_minor * qty) as f64 / 100.0, "Currency": "EUR",
                "Payment Mode": (["Card", "PayPal", "COD"][((k >> 40) % 3) as usize]),
                "Items": qty,
                "Products": [{"Product ID": product, "Category": category, "Quantity": qty}]}),
            _ => json!({}),
        };
        if changed {
            if let Some(o) = props.as_object_mut() {
                // Added property.
                o.insert(
                    "Experiment".into(),
                    json!(["A", "B"][(k >> 45) as usize % 2]),
                );
                // Renamed property.
                if let Some(v) = o.remove("Payment Mode") {
                    o.insert("Payment Method".into(), v);
                }
                // Numeric property now arrives as a string.
                if let Some(q) = o.get_mut("Quantity") {
                    *q = json!(qty.to_string());
                }
            }
        }
        if charged_changed && event == "Charged" {
            if let Some(o) = props.as_object_mut() {
                // The app team's release: `Amount` renamed, `Items` sent as text, a coupon added.
                if let Some(v) = o.remove("Amount") {
                    o.insert("amount_value".into(), v);
                }
                o.insert("Items".into(), json!(qty.to_string()));
                // Sent only with orders that used one (every third; the day's first does).
                if e.index.is_multiple_of(3) {
                    o.insert(
                        "Coupon".into(),
                        json!(format!("SAVE{}", 5 * (1 + (k >> 52) % 4))),
                    );
                }
            }
        }
        props
    }
}

/// Inclusive date iterator.
pub fn days(since: NaiveDate, until: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    let n = (until - since).num_days().max(-1) + 1;
    (0..n).map(move |i| since + Duration::days(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_exceed_2_pow_53_and_are_unique() {
        let w = World::new(7, 1);
        let mut ids: Vec<u64> = w
            .fb_ads
            .iter()
            .map(|a| a.id.parse().unwrap())
            .chain(w.fb_campaigns.iter().map(|c| c.id.parse().unwrap()))
            .chain(w.fb_adsets.iter().map(|c| c.id.parse().unwrap()))
            .collect();
        assert!(ids.iter().all(|&i| i > 1u64 << 53));
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    #[test]
    fn split_sums_exactly() {
        let m = FbMetrics {
            impressions: 1001,
            clicks: 7,
            spend_minor: 12345,
            ..Default::default()
        };
        let parts = fb_split(&m, 42, 6);
        let mut sum = FbMetrics::default();
        parts.iter().for_each(|p| sum.add(p));
        assert_eq!(sum, m);
    }

    #[test]
    fn addresses_classify() {
        assert_eq!(classify_address(""), Some(AddressProblem::Empty));
        assert_eq!(
            classify_address("123-45-6789"),
            Some(AddressProblem::SsnShaped)
        );
        assert_eq!(
            classify_address("123456789"),
            Some(AddressProblem::SsnShaped)
        );
        assert_eq!(classify_address("4711"), Some(AddressProblem::AllDigits));
        assert_eq!(classify_address("12 Main St"), None);
    }

    #[test]
    fn recent_days_drift() {
        let w = World::new(1, 1);
        let day = NaiveDate::from_ymd_opt(2024, 7, 1).unwrap();
        let later = NaiveDate::from_ymd_opt(2024, 12, 1).unwrap();
        let early = NaiveDate::from_ymd_opt(2024, 7, 5).unwrap();
        let changed =
            (0..w.fb_ads.len()).any(|a| w.fb_ad_day(a, day, later) != w.fb_ad_day(a, day, early));
        assert!(changed);
    }
}
