//! sluice's destinations: where published tables live.
//!
//! Each destination implements [`sluice_core::destination::Destination`]: it
//! creates and evolves tables from a [`sluice_core::schema::TableSchema`], bulk
//! loads Arrow batches, and publishes rows, quarantined records and a ledger
//! entry in one transaction. The executor only knows the trait; this crate owns
//! the SQL.
//!
//! - [`postgres`]: PostgreSQL / RDS through binary `COPY` into a staging table.
//! - [`sqlite`]: the embedded default, a single file beside the pipeline.

mod columns;
mod names;
pub mod postgres;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

use sluice_core::config::{suggest, ConfigDocument, ConfigError, Section};
use sluice_core::destination::Destination;

pub use postgres::{PostgresConfig, PostgresDestination};
pub use sqlite::{SqliteConfig, SqliteDestination};

/// The `type:` values a `destination:` section accepts.
pub const KINDS: &[&str] = &["postgres", "sqlite"];

/// Builds the pipeline's destination from its `destination:` section; `None` =
/// the embedded default, SQLite at `<root>/warehouse.db`.
pub fn build(
    doc: &ConfigDocument,
    section: Option<&Section>,
    root: &Path,
) -> Result<Arc<dyn Destination>, ConfigError> {
    let Some(section) = section else {
        return Ok(Arc::new(SqliteDestination::new(
            SqliteConfig::default(),
            root,
        )));
    };
    let at = |key: &str| {
        let mut path = section.path.clone();
        path.push(key.to_string());
        path
    };
    match section.kind.as_str() {
        "postgres" | "postgresql" => {
            let config: PostgresConfig = doc.parse_section(section)?;
            let destination = PostgresDestination::new(config, root)
                .map_err(|e| doc.error_at(&at(e.key), e.message))?;
            Ok(Arc::new(destination))
        }
        "sqlite" => {
            let config: SqliteConfig = doc.parse_section(section)?;
            Ok(Arc::new(SqliteDestination::new(config, root)))
        }
        other => {
            let mut error =
                doc.error_at(&at("type"), format!("unknown destination type `{other}`"));
            error.help = Some(match suggest(other, KINDS.iter().copied()) {
                Some(kind) => format!("did you mean `{kind}`?"),
                None => format!("valid types: {}", KINDS.join(", ")),
            });
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::{Lookup, PipelineConfig};

    struct NoEnv;
    impl Lookup for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn build_from(yaml: &str) -> Result<Arc<dyn Destination>, ConfigError> {
        let root = Path::new("/srv/project");
        let config = PipelineConfig::parse("pipeline.yaml".into(), yaml.into(), root, &NoEnv)?;
        build(&config.doc, config.destination.as_ref(), root)
    }

    #[test]
    fn default_is_sqlite_beside_the_pipeline() {
        let d = build_from("name: p\n").unwrap();
        assert_eq!(d.describe(), "sqlite /srv/project/warehouse.db");
    }

    #[test]
    fn postgres_describe_hides_credentials() {
        let d = build_from(
            "name: p\ndestination:\n  type: postgres\n  url: postgres://loader:hunter2@db.example.com:6432/warehouse?sslmode=require\n",
        )
        .unwrap();
        assert_eq!(d.describe(), "postgres db.example.com:6432/warehouse");
    }

    #[test]
    fn misspelt_type_and_keys_are_reported_with_suggestions() {
        let err = build_from("name: p\ndestination:\n  type: postgress\n  url: postgres://h/db\n")
            .err()
            .unwrap();
        assert_eq!(err.path, "destination.type");
        assert_eq!(err.position.map(|p| p.line), Some(3));
        assert_eq!(err.help.as_deref(), Some("did you mean `postgres`?"));

        let err = build_from(
            "name: p\ndestination:\n  type: postgres\n  url: postgres://h/db\n  schema_prefx: x\n",
        )
        .err()
        .unwrap();
        assert_eq!(err.path, "destination.schema_prefx");
        assert_eq!(err.help.as_deref(), Some("did you mean `schema_prefix`?"));

        let err = build_from("name: p\ndestination:\n  type: postgres\n  url: mysql://h/db\n")
            .err()
            .unwrap();
        assert_eq!(err.path, "destination.url");
    }
}
