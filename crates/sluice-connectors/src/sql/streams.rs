//! Streams of a database source: a table or a query, its columns from the catalog,
//! its key order and sync mode, and the D1 spec that follows from them.

use sluice_core::destination::WriteMode;
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::source::{SourceError, StreamSpec};

use super::config::{parse_overlap, Overlap, SqlStreamConfig, SyncMode};
use super::{Database, ReadAs, Relation, Session, SqlColumn};

/// How a stream is synced.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    Full,
    /// By a growing column (index into columns), with an optional overlap.
    Cursor {
        column: usize,
        overlap: Option<Overlap>,
    },
    /// By an append-only key.
    AppendKey {
        column: usize,
    },
}

/// A stream as read: its spec, relation, columns and key order.
#[derive(Debug, Clone)]
pub struct SqlStream {
    pub spec: StreamSpec,
    pub relation: Relation,
    pub columns: Vec<SqlColumn>,
    /// Columns (indices) pages are ordered and paged by; empty: one streamed query.
    pub(crate) order_key: Vec<usize>,
    pub(crate) mode: Mode,
    /// `ranges:` (1: one slice) and the key a range is paged by (the primary key,
    /// or the append key), whose leading column is split.
    pub(crate) ranges: usize,
    pub(crate) range_columns: Vec<usize>,
}

/// The relation a stream config names: `schema.table`, `table`, or a query.
pub(crate) fn relation_of(stream: &SqlStreamConfig, key: &str) -> Result<Relation, SourceError> {
    match (&stream.table, &stream.query) {
        (Some(table), None) => Ok(match table.split_once('.') {
            Some((schema, name)) => Relation::Table {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            },
            None => Relation::Table {
                schema: None,
                name: table.clone(),
            },
        }),
        (None, Some(query)) => Ok(Relation::Query(query.clone())),
        _ => Err(SourceError::config(
            "give a stream either `table:` or `query:`",
            key.to_string(),
        )),
    }
}

pub(crate) async fn build_stream(
    db: &dyn Database,
    session: &mut dyn Session,
    source: &str,
    stream_name: &str,
    config: &SqlStreamConfig,
    key: &str,
) -> Result<SqlStream, SourceError> {
    if !sluice_core::config::is_identifier(stream_name) {
        return Err(SourceError::config(
            "stream names may use lowercase letters, digits and `_`",
            key.to_string(),
        ));
    }
    let relation = relation_of(config, key)?;
    let what = relation.describe();
    let relation_key = if config.table.is_some() {
        format!("{key}.table")
    } else {
        format!("{key}.query")
    };
    let described = session
        .describe(&relation, &db.relation_sql(&relation))
        .await
        .map_err(|e| SourceError::config(e.message, relation_key.clone()))?;
    for declared in config.columns.keys() {
        if !described.columns.iter().any(|c| &c.name == declared) {
            return Err(SourceError::config(
                format!("`{what}` has no column `{declared}`"),
                format!("{key}.columns.{declared}"),
            ));
        }
    }
    let mut columns = Vec::new();
    for column in described.columns {
        let mapped = match config.columns.get(&column.name) {
            Some(declared) => FieldType::parse(declared)
                .map(|ty| (ty, ReadAs::Text))
                .map_err(|e| {
                    SourceError::config(e, format!("{key}.columns.{}", column.name))
                })?,
            None => column.mapped.map_err(|reason| {
                SourceError::config(
                    format!(
                        "`{what}` column `{}`: {reason}; declare its type under `columns:` or leave it out with a `query:`",
                        column.name
                    ),
                    relation_key.clone(),
                )
            })?,
        };
        columns.push(SqlColumn {
            name: column.name,
            ty: mapped.0,
            read_as: mapped.1,
            source_type: column.source_type,
        });
    }
    let index_of = |name: &str, field: &str| {
        columns.iter().position(|c| c.name == name).ok_or_else(|| {
            SourceError::config(
                format!("`{what}` has no column `{name}`"),
                format!("{key}.{field}"),
            )
        })
    };
    let primary_key = config.primary_key.clone().unwrap_or(described.primary_key);
    if config.sync == SyncMode::Cdc {
        // Checked here, before the merge's own need of a key (see `cdc.rs` for the rest).
        if matches!(relation, Relation::Query(_)) {
            return Err(SourceError::config(
                "`sync: cdc` replicates a table's changes, and a `query:` has none: give `table:`",
                format!("{key}.query"),
            ));
        }
        if primary_key.is_empty() {
            return Err(SourceError::config(
                format!("`sync: cdc` merges changes on the primary key, and `{what}` has none in the catalog: declare `primary_key:`"),
                format!("{key}.primary_key"),
            ));
        }
    }
    let pk_indices = primary_key
        .iter()
        .map(|c| index_of(c, "primary_key"))
        .collect::<Result<Vec<_>, _>>()?;
    let (mode, order_key) = match config.sync {
        // A snapshot is a full read; its changes come from the slot (`cdc.rs`).
        SyncMode::Full | SyncMode::Cdc => {
            if config.cursor.is_some() || config.append_key.is_some() {
                return Err(SourceError::config(
                    "`cursor:` and `append_key:` are for `sync: incremental`",
                    format!("{key}.sync"),
                ));
            }
            (Mode::Full, pk_indices.clone())
        }
        SyncMode::Incremental => match (&config.cursor, &config.append_key) {
            (Some(cursor), None) => {
                let column = index_of(cursor, "cursor")?;
                if pk_indices.is_empty() {
                    return Err(SourceError::config(
                        format!("incremental sync by cursor needs a primary key to merge changed rows on, and `{what}` has none in the catalog: declare `primary_key:`"),
                        format!("{key}.primary_key"),
                    ));
                }
                let overlap = config
                    .overlap
                    .as_deref()
                    .map(parse_overlap)
                    .transpose()
                    .map_err(|e| SourceError::config(e, format!("{key}.overlap")))?;
                let mut order = vec![column];
                order.extend(pk_indices.iter().copied().filter(|i| *i != column));
                (Mode::Cursor { column, overlap }, order)
            }
            (None, Some(append_key)) => {
                let column = index_of(append_key, "append_key")?;
                (Mode::AppendKey { column }, vec![column])
            }
            _ => {
                return Err(SourceError::config(
                    "`sync: incremental` needs `cursor:` (a column that grows on every change) or `append_key:` (a key that only grows)",
                    format!("{key}.sync"),
                ))
            }
        },
    };
    if let Mode::Cursor { column, .. } | Mode::AppendKey { column } = mode {
        let ty = columns[column].ty;
        if matches!(ty, FieldType::Json | FieldType::Boolean) {
            return Err(SourceError::config(
                format!(
                    "column `{}` ({}) cannot order rows",
                    columns[column].name, columns[column].source_type
                ),
                format!("{key}.cursor"),
            ));
        }
    }
    let ranges = config.ranges.unwrap_or(1);
    let range_columns = match &mode {
        Mode::AppendKey { column } if pk_indices.is_empty() => vec![*column],
        _ => pk_indices.clone(),
    };
    // Any ordered key splits (integers evenly, others at quantiles); JSON has no order.
    let splittable = |i: usize| columns[i].ty != FieldType::Json && columns[i].read_as == ReadAs::Text;
    if ranges == 0 || (ranges > 1 && !range_columns.first().is_some_and(|&i| splittable(i))) {
        return Err(SourceError::config(
            format!(
                "`ranges: {ranges}` needs a number of ranges (1 or more) and a primary key whose first column is ordered (a number, text, uuid, date or timestamp) to split; `{what}` has {}",
                match range_columns.first() {
                    Some(&i) => format!("`{}` ({})", columns[i].name, columns[i].source_type),
                    None => "no primary key (declare `primary_key:`)".into(),
                }
            ),
            format!("{key}.ranges"),
        ));
    }
    // Merge on the primary key (or the append key) so re-read rows replace themselves.
    let merge_key = match (&mode, primary_key.is_empty()) {
        (Mode::AppendKey { column }, true) => vec![columns[*column].name.clone()],
        _ => primary_key.clone(),
    };
    let write_mode = config.write_mode.unwrap_or(match mode {
        Mode::Full if config.sync == SyncMode::Cdc => WriteMode::Merge,
        Mode::Full => WriteMode::Replace,
        _ => WriteMode::Merge,
    });
    if write_mode == WriteMode::Merge && merge_key.is_empty() {
        return Err(SourceError::config(
            "write_mode merge needs a primary key",
            format!("{key}.write_mode"),
        ));
    }
    let fields = columns
        .iter()
        .map(|c| {
            let field = Field::new(&c.name, c.ty);
            if merge_key.contains(&c.name) {
                field.required()
            } else {
                field
            }
        })
        .collect();
    Ok(SqlStream {
        spec: StreamSpec {
            name: stream_name.to_string(),
            table: config
                .d1_table
                .clone()
                .unwrap_or_else(|| format!("{source}_{stream_name}")),
            schema: TableSchema::new(fields),
            infer_columns: false,
            primary_key: merge_key,
            partition_column: None,
            write_mode,
            dedupe: Default::default(),
        },
        relation,
        columns,
        order_key,
        mode,
        ranges,
        range_columns,
    })
}

/// A stream known by name only (the database did not answer when it was built):
/// declared `columns:` and `primary_key:` but nothing from the catalog; never read.
pub(crate) fn unread_stream(
    source: &str,
    stream_name: &str,
    config: &SqlStreamConfig,
    key: &str,
) -> Result<SqlStream, SourceError> {
    let relation = relation_of(config, key)?;
    let mut columns = Vec::new();
    for (name, declared) in &config.columns {
        let ty = FieldType::parse(declared)
            .map_err(|e| SourceError::config(e, format!("{key}.columns.{name}")))?;
        columns.push(SqlColumn {
            name: name.clone(),
            ty,
            read_as: ReadAs::Text,
            source_type: declared.clone(),
        });
    }
    let primary_key = config.primary_key.clone().unwrap_or_default();
    let write_mode = match (config.write_mode, config.sync) {
        (Some(mode), _) => mode,
        (None, SyncMode::Incremental | SyncMode::Cdc) if !primary_key.is_empty() => {
            WriteMode::Merge
        }
        _ => WriteMode::Replace,
    };
    Ok(SqlStream {
        spec: StreamSpec {
            name: stream_name.to_string(),
            table: config
                .d1_table
                .clone()
                .unwrap_or_else(|| format!("{source}_{stream_name}")),
            schema: TableSchema::new(columns.iter().map(|c| Field::new(&c.name, c.ty)).collect()),
            infer_columns: false,
            primary_key,
            partition_column: None,
            write_mode,
            dedupe: Default::default(),
        },
        relation,
        columns,
        order_key: Vec::new(),
        mode: Mode::Full,
        ranges: 1,
        range_columns: Vec::new(),
    })
}
