//! `sluice discover`: what a database holds, and the stream each table would be.

use sluice_core::config::{ConfigDocument, ConfigError, Section};
use sluice_core::schema::FieldType;
use sluice_core::source::SourceError;

use super::config::SqlConfig;
use super::{database, DescribedColumn, Relation};

/// Column names that usually grow on every change, best first.
const CURSOR_NAMES: &[&str] = &[
    "updated_at",
    "modified_at",
    "last_modified",
    "last_modified_at",
    "updated",
    "modified",
    "changed_at",
    "updated_on",
];

/// A table and how sluice would read it.
pub struct DiscoveredTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<DescribedColumn>,
    pub primary_key: Vec<String>,
    pub suggestion: Suggestion,
}

/// The sync mode discovery suggests for a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suggestion {
    /// `sync: incremental` with `cursor:` (a timestamp column named like one that changes).
    Cursor(String),
    /// `sync: incremental` with `append_key:` (a single integer primary key, no cursor).
    AppendKey(String),
    Full,
}

impl DiscoveredTable {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Columns with no D1 type: the table cannot be a stream as it is.
    pub fn unsupported(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter_map(|c| {
                c.mapped
                    .as_ref()
                    .err()
                    .map(|reason| format!("`{}`: {reason}", c.name))
            })
            .collect()
    }

    /// The stream's YAML body (under its name), indented by `indent` spaces.
    pub fn stream_yaml(&self, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut yaml = format!("{pad}table: {}\n", self.qualified());
        match &self.suggestion {
            Suggestion::Cursor(c) => {
                yaml.push_str(&format!("{pad}sync: incremental\n{pad}cursor: {c}\n"))
            }
            Suggestion::AppendKey(k) => {
                yaml.push_str(&format!("{pad}sync: incremental\n{pad}append_key: {k}\n"))
            }
            Suggestion::Full => yaml.push_str(&format!("{pad}sync: full\n")),
        }
        yaml
    }
}

fn suggest(columns: &[DescribedColumn], primary_key: &[String]) -> Suggestion {
    let typed = |name: &str, ty: FieldType| {
        columns
            .iter()
            .any(|c| c.name == name && matches!(&c.mapped, Ok((t, _)) if *t == ty))
    };
    if !primary_key.is_empty() {
        for name in CURSOR_NAMES {
            if typed(name, FieldType::Timestamp) {
                return Suggestion::Cursor(name.to_string());
            }
        }
    }
    match primary_key {
        [key] if typed(key, FieldType::Bigint) => Suggestion::AppendKey(key.clone()),
        _ => Suggestion::Full,
    }
}

/// Lists the tables of the source `section` (only those named in `only`, when given).
#[allow(clippy::result_large_err)] // ConfigError's size is the config module's choice.
pub async fn discover(
    doc: &ConfigDocument,
    section: &Section,
    only: &[String],
) -> Result<Result<Vec<DiscoveredTable>, SourceError>, ConfigError> {
    let config: SqlConfig = doc.parse_section(section)?;
    let key_prefix = section.path.join(".");
    let root = doc.file.parent().unwrap_or(std::path::Path::new("."));
    let db = database(&section.kind, &config, &key_prefix, root)
        .map_err(|e| crate::error_at_key(doc, section, e))?;
    Ok(async {
        let mut session = db.session().await?;
        let mut found = Vec::new();
        for table in session.tables().await? {
            let qualified = format!("{}.{}", table.schema, table.name);
            if !only.is_empty() && !only.iter().any(|o| *o == qualified || *o == table.name) {
                continue;
            }
            let relation = Relation::Table {
                schema: Some(table.schema.clone()),
                name: table.name.clone(),
            };
            let described = session
                .describe(&relation, &db.relation_sql(&relation))
                .await?;
            let suggestion = suggest(&described.columns, &described.primary_key);
            found.push(DiscoveredTable {
                schema: table.schema,
                name: table.name,
                columns: described.columns,
                primary_key: described.primary_key,
                suggestion,
            });
        }
        session.close().await?;
        for wanted in only {
            if !found
                .iter()
                .any(|t| t.qualified() == *wanted || t.name == *wanted)
            {
                return Err(SourceError::data(format!(
                    "no table `{wanted}` in the database"
                )));
            }
        }
        Ok(found)
    }
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::ReadAs;

    fn column(name: &str, ty: FieldType) -> DescribedColumn {
        DescribedColumn {
            name: name.into(),
            source_type: String::new(),
            mapped: Ok((ty, ReadAs::Text)),
        }
    }

    #[test]
    fn suggests_a_timestamp_cursor_then_an_integer_key_then_full() {
        let cols = vec![
            column("id", FieldType::Bigint),
            column("updated_at", FieldType::Timestamp),
        ];
        assert_eq!(
            suggest(&cols, &["id".into()]),
            Suggestion::Cursor("updated_at".into())
        );
        assert_eq!(
            suggest(&cols[..1], &["id".into()]),
            Suggestion::AppendKey("id".into())
        );
        assert_eq!(suggest(&cols, &[]), Suggestion::Full);
    }
}
