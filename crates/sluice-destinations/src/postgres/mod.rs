//! The PostgreSQL destination (also AWS RDS / Aurora PostgreSQL).
//!
//! This module owns the configuration and connections (TLS when the URL asks
//! for it); [`load`] owns the one-transaction load (evolve, stage through
//! binary `COPY`, publish by write mode, quarantine, ledger) and [`copy`] the
//! encoding of Arrow cells for `COPY … (FORMAT binary)`.
//!
//! Every load uses its own connection: a dropped load future drops the
//! connection, and PostgreSQL rolls the transaction back, so cancellation and
//! crashes can never leave a half-published table.

mod alias;
mod copy;
mod fence;
pub mod grants;
mod load;
mod models;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use sluice_core::destination::{
    Destination, DestinationError, LoadOutcome, LoadRequest, StreamedLoads, TableSpec,
};
use sluice_core::secret::{redact, Secret};
use sluice_core::typing::Rejected;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use crate::names;

/// `destination: { type: postgres, … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL: `postgres://user:password@host:5432/db`. TLS is required for
    /// any host but loopback unless `?sslmode=disable` (see `tls_mode` for every
    /// mode); the server certificate and host name are always verified, against the
    /// Mozilla roots plus `ssl_root_cert`. A secret: it is never logged.
    pub url: Secret,
    /// Prepended to every schema sluice creates: layer `d1` becomes schema
    /// `<schema_prefix>d1`, and the load ledger lives in `<schema_prefix>_sluice`.
    /// Lets several pipelines (or test runs) share a database.
    #[serde(default)]
    pub schema_prefix: String,
    /// Seconds to wait for a connection before the load fails (and is retried).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// A PEM file of extra CA certificates to trust for TLS, relative to the
    /// pipeline folder (e.g. AWS RDS's `global-bundle.pem`).
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
    /// Roles that may read D1 (clear personal data) and the load ledger: the only
    /// ones granted USAGE and SELECT on schemas `d1` and `_sluice`, which sluice
    /// keeps closed to everyone else (see [`grants`]).
    #[serde(default)]
    pub d1_readers: Vec<String>,
    /// Roles that may read the D2 layers (`d2a`, `d2b`: personal columns only as the
    /// PII policy shows them), e.g. a BI tool's role.
    #[serde(default)]
    pub readers: Vec<String>,
}

fn default_connect_timeout() -> u64 {
    10
}

/// What TLS a connection uses, from the URL's `sslmode` and where the server is.
///
/// - no `sslmode`: required (and verified) for any host but loopback, where the
///   sandbox and local test servers run without certificates;
/// - `disable`: never (a trusted network, on purpose);
/// - `allow`, `prefer`: TLS when the server offers it, verified; plaintext when it
///   does not (as libpq, and as open to a downgrade by whoever sits in between);
/// - `require`, `verify-ca`, `verify-full`: always, and always verified, chain and
///   host name (stricter than libpq's `require`/`verify-ca`: an unverified
///   certificate protects only against listeners, not against a relay).
fn tls_mode(sslmode: Option<&str>, loopback: bool) -> Result<SslMode, String> {
    Ok(match sslmode {
        None if loopback => SslMode::Disable,
        None => SslMode::Require,
        Some("disable") => SslMode::Disable,
        Some("allow" | "prefer") => SslMode::Prefer,
        Some("require" | "verify-ca" | "verify-full") => SslMode::Require,
        Some(other) => {
            return Err(format!(
                "unknown sslmode `{other}` (use disable, prefer, require, verify-ca or verify-full)"
            ))
        }
    })
}

/// True when every host of the connection is this machine (loopback or a Unix socket).
fn only_loopback(connect: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    connect.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Host::Unix(_) => true,
    })
}

/// A problem with one config key, for [`crate::build`] to point at.
#[derive(Debug)]
pub struct ConfigProblem {
    pub key: &'static str,
    pub message: String,
}

/// Loads into PostgreSQL; see the module docs.
pub struct PostgresDestination {
    config: PostgresConfig,
    connect: tokio_postgres::Config,
    /// `Some` unless TLS is off (see [`tls_mode`]).
    tls: Option<Arc<rustls::ClientConfig>>,
    described: String,
    /// Schemas whose grants this process has set (once each: see [`grants`]).
    secured: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Switched replacements: a load of a replacing table also publishes the old name.
    aliases: std::sync::Mutex<Vec<sluice_core::replace::D1Alias>>,
}

impl PostgresDestination {
    /// Validates the URL (and the CA file, if any) without connecting.
    pub fn new(config: PostgresConfig, root: &Path) -> Result<PostgresDestination, ConfigProblem> {
        let url_problem = |message: String| ConfigProblem {
            key: "url",
            message,
        };
        let url = url::Url::parse(config.url.expose()).map_err(|e| {
            url_problem(format!(
                "not a valid URL ({e}); expected postgres://user:password@host:5432/database"
            ))
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(url_problem(format!(
                "the URL scheme is `{}`; expected postgres://user:password@host:5432/database",
                url.scheme()
            )));
        }
        // tokio-postgres knows only disable/prefer/require; TLS is decided here instead.
        let (stripped, sslmode) = sluice_core::connection::take_query_param(&url, "sslmode");
        let mut connect: tokio_postgres::Config =
            stripped
                .as_str()
                .parse()
                .map_err(|e: tokio_postgres::Error| {
                    url_problem(redact(&format!("invalid connection URL: {e}")))
                })?;
        if connect.get_application_name().is_none() {
            connect.application_name("sluice");
        }
        connect.connect_timeout(Duration::from_secs(config.connect_timeout_secs.max(1)));
        let ssl_mode =
            tls_mode(sslmode.as_deref(), only_loopback(&connect)).map_err(url_problem)?;
        connect.ssl_mode(ssl_mode);
        let tls = if ssl_mode != SslMode::Disable {
            let ca = config.ssl_root_cert.as_ref().map(|p| root.join(p));
            Some(Arc::new(tls_config(ca.as_deref()).map_err(|message| {
                ConfigProblem {
                    key: "ssl_root_cert",
                    message,
                }
            })?))
        } else {
            None
        };
        let host = url.host_str().unwrap_or("localhost");
        let port = url.port().unwrap_or(5432);
        let database = url.path().trim_start_matches('/');
        let described = format!("postgres {host}:{port}/{database}");
        for (key, roles) in [
            ("d1_readers", &config.d1_readers),
            ("readers", &config.readers),
        ] {
            if let Some(bad) = roles.iter().find(|r| r.is_empty() || r.contains('\0')) {
                return Err(ConfigProblem {
                    key,
                    message: format!("`{bad}` is not a role name"),
                });
            }
        }
        Ok(PostgresDestination {
            config,
            connect,
            tls,
            described,
            secured: Default::default(),
            aliases: Default::default(),
        })
    }

    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// Whether connections use TLS: see [`tls_mode`].
    pub fn tls_mode(&self) -> SslMode {
        self.connect.get_ssl_mode()
    }

    /// A new connection, its driver task spawned; the session is in UTC so
    /// date ↔ timestamptz casts do not depend on the server's time zone.
    pub(crate) async fn connect(&self) -> Result<Client, DestinationError> {
        let connect_error = |e: tokio_postgres::Error| {
            let (target, mut message) = (self.described.clone(), redact(&error_text(&e)));
            if message.contains("server does not support TLS") {
                // TLS is the default off loopback: say how to choose otherwise.
                message.push_str(
                    " (TLS is required for hosts other than this machine; add `?sslmode=disable` \
                     to the URL only on a network you trust)",
                );
            }
            if refuses_the_settings(&e) {
                DestinationError::Refused { target, message }
            } else {
                DestinationError::Connect { target, message }
            }
        };
        let client = match &self.tls {
            None => {
                let (client, connection) =
                    self.connect.connect(NoTls).await.map_err(connect_error)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %redact(&e.to_string()), "postgres connection ended");
                    }
                });
                client
            }
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, connection) =
                    self.connect.connect(tls).await.map_err(connect_error)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %redact(&e.to_string()), "postgres connection ended");
                    }
                });
                client
            }
        };
        client
            .batch_execute("SET TIME ZONE 'UTC'")
            .await
            .map_err(connect_error)?;
        Ok(client)
    }

    /// The PostgreSQL schema of a layer.
    pub(crate) fn schema_name(&self, layer: &str) -> String {
        format!("{}{layer}", self.config.schema_prefix)
    }

    /// The schema holding the load ledger.
    pub(crate) fn ledger_schema(&self) -> String {
        format!("{}_sluice", self.config.schema_prefix)
    }
}

fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
        }
    }
    // An explicit provider: the process may link more than one rustls backend.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The server's "no" to who or where we asked for (class 28: authorization; 3D000:
/// no such database): the same settings will be refused again.
fn refuses_the_settings(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        code.starts_with("28") || code == "3D000"
    })
}

/// A driver error with the server's code and message (and hint) when there are some.
/// Never the server's `detail`: it quotes row values ("Failing row contains (…)",
/// "Key (email)=(…) already exists"), and this text goes to logs and run records.
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(hint) = db.hint() {
                text.push_str("; hint: ");
                text.push_str(hint);
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

#[async_trait]
impl Destination for PostgresDestination {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn streams_loads(&self) -> StreamedLoads {
        StreamedLoads::LockingTable
    }

    fn set_d1_aliases(&self, aliases: &[sluice_core::replace::D1Alias]) {
        *self.aliases.lock().expect("aliases lock") = aliases
            .iter()
            .filter(|a| a.replacement.switch)
            .cloned()
            .collect();
    }

    async fn check(&self) -> Result<(), DestinationError> {
        let mut client = self.connect().await?;
        let denied = |e: tokio_postgres::Error| DestinationError::Connect {
            target: self.described.clone(),
            message: format!(
                "cannot create schemas and tables: {}",
                redact(&error_text(&e))
            ),
        };
        let tx = client.transaction().await.map_err(denied)?;
        let schema = names::pg(&format!("{}_check", self.ledger_schema()));
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE {schema}.probe (id bigint)"
        ))
        .await
        .map_err(denied)?;
        tx.rollback().await.map_err(denied)?;
        // Every role named in `readers` / `d1_readers` must exist, or loads will fail.
        let roles: Vec<&str> = self
            .config
            .readers
            .iter()
            .chain(&self.config.d1_readers)
            .map(String::as_str)
            .collect();
        let missing: Vec<String> = client
            .query(
                "SELECT r FROM unnest($1::text[]) r \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)",
                &[&roles],
            )
            .await
            .map_err(denied)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !missing.is_empty() {
            return Err(DestinationError::Refused {
                target: self.described.clone(),
                message: format!(
                    "destination.readers / d1_readers name roles that do not exist: {}",
                    missing.join(", ")
                ),
            });
        }
        Ok(())
    }

    async fn load(&self, request: LoadRequest<'_>) -> Result<LoadOutcome, DestinationError> {
        load::load(self, request).await
    }

    fn warehouse(&self) -> Option<&dyn sluice_core::pushdown::Warehouse> {
        Some(self)
    }

    async fn record_quarantine(
        &self,
        table: &TableSpec,
        run_id: &str,
        rows: &[Rejected],
    ) -> Result<u64, DestinationError> {
        load::record_quarantine(self, table, run_id, rows).await
    }

    async fn forget(
        &self,
        layer: &str,
        table: &str,
        columns: &[String],
        values: &[String],
    ) -> Result<u64, DestinationError> {
        let mut client = self.connect().await?;
        let schema = names::fit(&self.schema_name(layer), names::POSTGRES_MAX_IDENTIFIER);
        let failed = |e: tokio_postgres::Error| DestinationError::Load {
            table: format!("{layer}.{table}"),
            message: redact(&error_text(&e)),
        };
        let tx = client.transaction().await.map_err(failed)?;
        let mut deleted = 0;
        let quarantine = format!("{table}__quarantine");
        for (name, wanted) in [(table, columns.to_vec()), (&quarantine, vec!["raw".into()])] {
            let name = names::fit(name, names::POSTGRES_MAX_IDENTIFIER);
            let present: Vec<String> = tx
                .query(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = $1 AND table_name = $2",
                    &[&schema, &name],
                )
                .await
                .map_err(failed)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let qualified = format!("{}.{}", names::quote(&schema), names::quote(&name));
            for column in wanted
                .iter()
                .map(|c| names::fit(c, names::POSTGRES_MAX_IDENTIFIER))
            {
                if !present.contains(&column) {
                    continue;
                }
                let col = names::quote(&column);
                // The quarantine's `raw` holds whole records: a value anywhere in it counts.
                let sql = if name.ends_with("__quarantine") && column == "raw" {
                    format!(
                        "DELETE FROM {qualified} WHERE EXISTS \
                         (SELECT 1 FROM unnest($1::text[]) v WHERE strpos({col}, v) > 0)"
                    )
                } else {
                    format!("DELETE FROM {qualified} WHERE {col}::text = ANY($1::text[])")
                };
                deleted += tx.execute(&sql, &[&values]).await.map_err(failed)?;
            }
        }
        tx.commit().await.map_err(failed)?;
        Ok(deleted)
    }

    async fn row_count(&self, layer: &str, table: &str) -> Result<Option<u64>, DestinationError> {
        let client = self.connect().await?;
        let schema = names::fit(&self.schema_name(layer), names::POSTGRES_MAX_IDENTIFIER);
        let name = names::fit(table, names::POSTGRES_MAX_IDENTIFIER);
        let failed = |e: tokio_postgres::Error| DestinationError::Load {
            table: format!("{layer}.{table}"),
            message: redact(&error_text(&e)),
        };
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&schema, &name],
            )
            .await
            .map_err(failed)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            names::quote(&schema),
            names::quote(&name)
        );
        let count: i64 = client.query_one(&sql, &[]).await.map_err(failed)?.get(0);
        Ok(Some(count as u64))
    }
}
