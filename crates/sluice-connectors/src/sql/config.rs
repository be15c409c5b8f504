//! `type: postgres` / `type: mysql` / `type: sqlite` source configuration: every key,
//! its default and why.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_core::destination::WriteMode;
use sluice_core::secret::Secret;

/// A relational database read as a source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// `postgres://user:password@host:5432/db` or `mysql://user:password@host:3306/db`
    /// (usually `${VAR}`: the URL carries the password). Required for postgres and mysql.
    #[serde(default)]
    pub url: Option<Secret>,
    /// `type: sqlite`: the database file, relative to the pipeline's folder. It is
    /// opened read-only; each stream reads inside one read transaction (a snapshot).
    #[serde(default)]
    pub path: Option<String>,
    /// `disable`, `require` (encrypted, certificate not checked) or `verify-full`
    /// (encrypted, certificate and host name checked against the web PKI roots).
    /// Default: `require`, except `disable` for a loopback host.
    #[serde(default)]
    pub tls: Option<TlsMode>,
    /// Rows per page: one keyset query, one landed page, one batch handed to typing.
    /// Memory is bounded by it; 10 000 rows of a wide table is a few MiB.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Streams read at once, each on its own connection and snapshot.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// The streams: name → a table or a query and how to sync it
    /// (`sluice discover <source> --write TABLE…` adds them).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub streams: BTreeMap<String, SqlStreamConfig>,
}

/// `streams:` with nothing (or only comments) under it is no streams yet.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SqlStreamConfig>, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

fn default_batch_size() -> usize {
    10_000
}

fn default_concurrency() -> usize {
    2
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Every run reads the whole table in one consistent snapshot and replaces D1.
    #[default]
    Full,
    /// Each run reads rows past the stored cursor (`cursor:` or `append_key:`).
    Incremental,
    /// PostgreSQL logical replication: a snapshot once, then each run reads the
    /// inserts, updates and deletes committed since (see `cdc.rs`).
    Cdc,
}

/// One stream: a table or a query.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStreamConfig {
    /// The source table, `table` or `schema.table`.
    #[serde(default)]
    pub table: Option<String>,
    /// A SELECT read as if it were a table (give `primary_key:` for incremental sync).
    #[serde(default)]
    pub query: Option<String>,
    /// `full` (default), `incremental`, or `cdc` (PostgreSQL tables with a primary
    /// key: logical replication, so deletes are seen).
    #[serde(default)]
    pub sync: SyncMode,
    /// `sync: cdc`: the replication slot and publication (defaults below).
    #[serde(default)]
    pub cdc: Option<CdcConfig>,
    /// Incremental: the column that grows when a row changes (`updated_at`). Rows are
    /// read in (cursor, primary key) order, so ties across pages are exact.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Incremental by cursor: how far before the stored cursor each run starts again,
    /// for rows committed late with an older cursor value: `10 minutes`, `2 hours`,
    /// `30 seconds` for time cursors, a number for numeric ones. Default none.
    #[serde(default)]
    pub overlap: Option<String>,
    /// Incremental for append-only tables: a key that only grows (`id`).
    #[serde(default)]
    pub append_key: Option<String>,
    /// The key rows are merged on; default: the table's primary key in the catalog.
    #[serde(default)]
    pub primary_key: Option<Vec<String>>,
    /// Column types that override the mapping from the catalog (`amount: numeric(18,4)`),
    /// e.g. for a PostgreSQL `numeric` declared without precision.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// The D1 table (default `<source>_<stream>`).
    #[serde(default)]
    pub d1_table: Option<String>,
    /// Default: `replace` for full sync, `merge` (on the primary key) for incremental.
    #[serde(default)]
    pub write_mode: Option<WriteMode>,
    /// Incremental streams without CDC: how rows deleted at the source are found,
    /// e.g. `deletes: { scan: key, every: 1d }`. Default: not looked for (a merge
    /// never removes a row the source deleted).
    #[serde(default)]
    pub deletes: Option<DeletesConfig>,
    /// A large table read as this many primary-key ranges, each its own slice (read
    /// on its own connection, checkpointed, so a killed run re-reads only unfinished
    /// ranges) and all in one snapshot (see `ranges.rs`). For `sync: full` and an
    /// incremental stream's first run (or `--full-refresh`). Ranges read
    /// `max_concurrency` at a time and share `batch_size` (each reads pages of
    /// `batch_size` / the ranges read at once), so memory stays bounded by it.
    /// The leading primary-key column (or the append key) splits: an integer's
    /// min..max evenly, at round numbers; any other ordered key (text, uuid, date,
    /// timestamp, numeric) at quantiles the database computes in its own ordering
    /// (collation). Default 1 (no split).
    #[serde(default)]
    pub ranges: Option<usize>,
}

/// `cdc:` — where a `sync: cdc` stream's changes come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// The logical replication slot (default `sluice_<source>_<stream>`). Two
    /// pipelines reading one table need one slot each.
    #[serde(default)]
    pub slot: Option<String>,
    /// The publication (default: the slot's name); created `FOR TABLE` the stream's table.
    #[serde(default)]
    pub publication: Option<String>,
    /// The run warns when the slot holds more WAL than this many MiB (the server
    /// keeps all WAL since the slot's position until a run advances it). Default 1024.
    #[serde(default = "default_retained_wal_warning_mib")]
    pub retained_wal_warning_mib: u64,
}

fn default_retained_wal_warning_mib() -> u64 {
    1024
}

/// `deletes:` — a periodic scan of the source's primary keys.
///
/// When a scan is due (never done, or the last one is `every` old), the run reads
/// only the primary-key column(s) of the whole table, in one snapshot and in keyset
/// pages of `batch_size` keys, and compares them with the latest row of each key in
/// D1. A key D1 holds that the source no longer has is published again, in the same
/// load as the run's changed rows, with `_sluice_deleted_at` set to the scan's time;
/// a key marked so that the source has again is read whole and published unmarked.
/// Rows are marked, not removed: reports can still join to what a deleted customer
/// bought, the lake keeps every version, and a deletion the scan saw by mistake
/// (a table being reloaded at the source) is undone by the next scan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletesConfig {
    /// What is scanned: `key` (the primary key columns; the only kind so far).
    pub scan: DeleteScanKind,
    /// How often: `1d`, `12 hours`, `30 minutes`; `0` scans on every run. A scan reads
    /// every key of the table, so large tables want it daily rather than every run.
    #[serde(default = "default_delete_scan_every")]
    pub every: Period,
}

/// A period as written: `1d`, `12 hours`, or a bare number (`0`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Period {
    Text(String),
    Number(f64),
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Period::Text(text) => f.write_str(text),
            Period::Number(n) => write!(f, "{n}"),
        }
    }
}

fn default_delete_scan_every() -> Period {
    Period::Text("1d".into())
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeleteScanKind {
    Key,
}

/// How far before the stored cursor a run starts again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overlap {
    /// Seconds for a duration; otherwise in the cursor column's own units.
    pub amount: f64,
    pub is_duration: bool,
}

/// Parses `overlap:`: a number with an optional time unit.
pub fn parse_overlap(text: &str) -> Result<Overlap, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (text[..i].trim(), text[i..].trim()),
        None => (text, ""),
    };
    let amount: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| {
            format!("`{text}` is not an overlap: use e.g. `10 minutes`, `2 hours` or a number")
        })?;
    let seconds = match unit.trim_end_matches('s') {
        "" => {
            return Ok(Overlap {
                amount,
                is_duration: false,
            })
        }
        "second" | "sec" => 1.0,
        "minute" | "min" | "m" => 60.0,
        "hour" | "h" => 3600.0,
        "day" | "d" => 86400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in overlap `{text}` (seconds, minutes, hours, days)"
            ))
        }
    };
    Ok(Overlap {
        amount: amount * seconds,
        is_duration: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_parse_with_and_without_units() {
        let overlap = |amount, is_duration| Overlap {
            amount,
            is_duration,
        };
        assert_eq!(parse_overlap("10 minutes").unwrap(), overlap(600.0, true));
        assert_eq!(parse_overlap("1h").unwrap(), overlap(3600.0, true));
        assert_eq!(parse_overlap("250").unwrap(), overlap(250.0, false));
        assert!(parse_overlap("ten minutes").is_err());
        assert!(parse_overlap("5 fortnights").is_err());
    }
}
