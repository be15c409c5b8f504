//! Stream and table schemas: sluice's small type system and its Arrow mapping.
//!
//! Types are the ones a warehouse table needs (bigint, numeric, date,
//! timestamptz, boolean, text, jsonb). Every source declares or infers a
//! [`TableSchema`]; destinations create tables from it; the lake stores it with
//! each version so changes can be diffed.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::drift::presence::Presence;

/// Scale used for decimals whose scale the source does not declare: enough for
/// money in any currency and for micro-units.
pub const DEFAULT_DECIMAL_SCALE: i8 = 6;
/// Arrow metadata key marking a text column that holds JSON.
pub const JSON_METADATA_KEY: &str = "sluice.json";
/// The column sluice adds to every D1 table: the run that loaded the row.
pub const RUN_ID_COLUMN: &str = "_sluice_run_id";
/// The column sluice adds to every D1 table: when the row was loaded (the run's start).
pub const LOADED_AT_COLUMN: &str = "_sluice_loaded_at";

/// Whether `name` is one of the columns sluice adds itself.
pub fn is_system_column(name: &str) -> bool {
    name == RUN_ID_COLUMN || name == LOADED_AT_COLUMN
}

/// A column type, as users write it in config (`bigint`, `numeric(18,2)`, `jsonb`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FieldType {
    Boolean,
    Bigint,
    Double,
    /// Exact decimal: at most `precision` digits, `scale` of them after the point.
    Numeric {
        /// Older schema histories have no precision: they were created as 38.
        #[serde(default = "max_precision")]
        precision: u8,
        scale: i8,
    },
    Text,
    Date,
    /// An instant, stored in UTC.
    Timestamp,
    Json,
}

/// The most digits a decimal holds (Arrow's Decimal128, and sluice's default).
pub const MAX_DECIMAL_PRECISION: u8 = 38;

fn max_precision() -> u8 {
    MAX_DECIMAL_PRECISION
}

impl FieldType {
    /// `numeric(38, scale)`: a decimal with the default precision.
    pub const fn numeric(scale: i8) -> FieldType {
        FieldType::Numeric {
            precision: MAX_DECIMAL_PRECISION,
            scale,
        }
    }

    /// Parses the names users write: `bigint`, `int`, `numeric`, `numeric(18,2)`, `decimal(38, 4)`,
    /// `double`, `float`, `text`, `string`, `bool`, `date`, `timestamp`, `timestamptz`, `json`, `jsonb`.
    pub fn parse(text: &str) -> Result<FieldType, String> {
        let t = text.trim().to_ascii_lowercase();
        let (base, args) = match t.split_once('(') {
            Some((base, args)) => (base.trim(), Some(args.trim_end_matches(')'))),
            None => (t.as_str(), None),
        };
        Ok(match base {
            "bool" | "boolean" => FieldType::Boolean,
            "int" | "integer" | "bigint" | "int64" | "long" => FieldType::Bigint,
            "double" | "float" | "float64" | "real" => FieldType::Double,
            "numeric" | "decimal" | "money" => {
                let precision = match args.and_then(|a| a.split(',').next()) {
                    Some(p) => p
                        .trim()
                        .parse::<u8>()
                        .ok()
                        .filter(|p| (1..=MAX_DECIMAL_PRECISION).contains(p))
                        .ok_or_else(|| {
                            format!("invalid numeric precision in `{text}` (1 to 38 digits)")
                        })?,
                    None => MAX_DECIMAL_PRECISION,
                };
                let scale = match args.and_then(|a| a.split(',').nth(1)) {
                    Some(s) => s
                        .trim()
                        .parse::<i8>()
                        .ok()
                        .filter(|s| (0..=18).contains(s) && *s as u8 <= precision)
                        .ok_or_else(|| format!("invalid numeric scale in `{text}` (0 to 18, at most the precision)"))?,
                    None => DEFAULT_DECIMAL_SCALE.min(precision as i8),
                };
                FieldType::Numeric { precision, scale }
            }
            "text" | "string" | "varchar" | "utf8" => FieldType::Text,
            "date" => FieldType::Date,
            "timestamp" | "timestamptz" | "datetime" => FieldType::Timestamp,
            "json" | "jsonb" => FieldType::Json,
            _ => {
                return Err(format!(
                    "unknown type `{text}` (use bigint, numeric, numeric(p,s), double, text, boolean, date, timestamp or json)"
                ))
            }
        })
    }

    /// The name shown to users and used in schema history.
    pub fn name(&self) -> String {
        match self {
            FieldType::Boolean => "boolean".into(),
            FieldType::Bigint => "bigint".into(),
            FieldType::Double => "double".into(),
            FieldType::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
            FieldType::Text => "text".into(),
            FieldType::Date => "date".into(),
            FieldType::Timestamp => "timestamp".into(),
            FieldType::Json => "json".into(),
        }
    }

    pub fn arrow_type(&self) -> DataType {
        match self {
            FieldType::Boolean => DataType::Boolean,
            FieldType::Bigint => DataType::Int64,
            FieldType::Double => DataType::Float64,
            // Files of one lake table keep one Arrow type whatever precision is
            // declared (it is enforced when values are typed, and by the warehouse).
            FieldType::Numeric { scale, .. } => DataType::Decimal128(MAX_DECIMAL_PRECISION, *scale),
            FieldType::Text | FieldType::Json => DataType::Utf8,
            FieldType::Date => DataType::Date32,
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    /// The type back from an Arrow field (the reverse of [`FieldType::arrow_type`]).
    pub fn from_arrow(field: &ArrowField) -> Option<FieldType> {
        Some(match field.data_type() {
            DataType::Boolean => FieldType::Boolean,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                FieldType::Bigint
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => FieldType::Bigint,
            DataType::Float32 | DataType::Float64 => FieldType::Double,
            DataType::Decimal128(_, s) => FieldType::numeric(*s),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                if field.metadata().contains_key(JSON_METADATA_KEY) {
                    FieldType::Json
                } else {
                    FieldType::Text
                }
            }
            DataType::Date32 | DataType::Date64 => FieldType::Date,
            DataType::Timestamp(_, _) => FieldType::Timestamp,
            _ => return None,
        })
    }

    /// True when every value of `self` can be stored in `wider` without loss.
    pub fn widens_to(&self, wider: &FieldType) -> bool {
        use FieldType::*;
        self == wider
            || matches!(
                (self, wider),
                (Bigint, Numeric { .. }) | (Bigint, Double) | (_, Text) | (Date, Timestamp)
            )
            || matches!(
                (self, wider),
                (Numeric { precision: pa, scale: a }, Numeric { precision: pb, scale: b })
                    if a <= b && (*pa as i16 - *a as i16) <= (*pb as i16 - *b as i16)
            )
    }
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    #[serde(flatten)]
    pub ty: FieldType,
    #[serde(default = "yes")]
    pub nullable: bool,
    /// Personal data: subject to the pipeline's `pii:` policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pii: bool,
}

fn yes() -> bool {
    true
}

impl Field {
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        Field {
            name: name.into(),
            ty,
            nullable: true,
            pii: false,
        }
    }

    pub fn required(mut self) -> Self {
        self.nullable = false;
        self
    }

    pub fn pii(mut self) -> Self {
        self.pii = true;
        self
    }

    pub fn arrow_field(&self) -> ArrowField {
        let field = ArrowField::new(&self.name, self.ty.arrow_type(), self.nullable);
        if self.ty == FieldType::Json {
            field.with_metadata([(JSON_METADATA_KEY.to_string(), "true".to_string())].into())
        } else {
            field
        }
    }
}

/// The columns of a stream or table, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub fields: Vec<Field>,
    /// Fields not every record carries (registry knowledge; absent = every record
    /// carries it): a run reports a missing field only when that is a real change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub presence: BTreeMap<String, Presence>,
    /// The data day (partition value) in which the registry first saw a field that
    /// a later run added, for `schema history`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub first_seen: BTreeMap<String, String>,
    /// JSON columns whose keys are fields too (declared by the source: CleverTap's
    /// `event_props`, per event name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_paths: Vec<JsonPaths>,
    /// The fields found inside those columns, per scope (the event name; `""`
    /// when unscoped), named `column.key` (`event_props.Amount`): discovered,
    /// typed and versioned like columns, never columns of the table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paths: BTreeMap<String, TableSchema>,
    /// The data day from which a re-typed field arrived as its current type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retyped_on: BTreeMap<String, String>,
    /// Likely renames seen in the data: the field that stopped arriving → what
    /// replaced it and from which day (`` `amount_value` from data of 2026-12-02 ``).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub renamed: BTreeMap<String, String>,
    /// This run's folds (folded column → the column kept): a declared rename whose
    /// new name an earlier run had evolved into its own column. The destination
    /// moves that column's values into the kept one and drops it, in the load's
    /// transaction. Not recorded: the next run has nothing left to fold.
    #[serde(skip)]
    pub folded: BTreeMap<String, String>,
}

/// A JSON column whose keys the registry versions like columns, so a property
/// renamed, re-typed or added inside it is a schema change. Each value of
/// `scope_column` (CleverTap's `event_name`) has its own properties.
/// `JsonPaths::object("event_props")` for an object's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonPaths {
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_column: Option<String>,
    /// For a list of objects (Facebook's `actions`), the member naming each
    /// element (`action_type`): each element is the field `column.<name>`, its
    /// `value` the field's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_key: Option<String>,
}

impl JsonPaths {
    /// The keys of an object column.
    pub fn object(column: &str) -> Self {
        JsonPaths {
            column: column.to_string(),
            scope_column: None,
            element_key: None,
        }
    }

    /// Per value of `scope_column`.
    pub fn scoped_by(mut self, scope_column: &str) -> Self {
        self.scope_column = Some(scope_column.to_string());
        self
    }

    /// The elements of a list column, named by their `element_key` member.
    pub fn list_keyed_by(column: &str, element_key: &str) -> Self {
        JsonPaths {
            element_key: Some(element_key.to_string()),
            ..JsonPaths::object(column)
        }
    }
}

/// How a field inside a JSON column is shown: `event_props.Amount [Charged]`.
pub fn path_label(scope: &str, path: &str) -> String {
    if scope.is_empty() {
        path.to_string()
    } else {
        format!("{path} [{scope}]")
    }
}

impl TableSchema {
    pub fn new(fields: Vec<Field>) -> Self {
        TableSchema {
            fields,
            presence: BTreeMap::new(),
            first_seen: BTreeMap::new(),
            json_paths: Vec::new(),
            paths: BTreeMap::new(),
            retyped_on: BTreeMap::new(),
            renamed: BTreeMap::new(),
            folded: BTreeMap::new(),
        }
    }

    /// The same columns, without registry knowledge (what destinations and files compare).
    pub fn columns_only(&self) -> TableSchema {
        TableSchema::new(self.fields.clone())
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// This schema with what `other` adds: its columns this one lacks (before sluice's
    /// own `_sluice_*` columns, which stay last), and its type where it widens ours.
    /// The rest of the registry knowledge is this schema's. For shards of one round,
    /// which each store the version their own share of the data led to.
    pub fn merged_with(&self, other: &TableSchema) -> TableSchema {
        let mut merged = self.clone();
        for field in &other.fields {
            match merged.fields.iter_mut().find(|f| f.name == field.name) {
                Some(mine) => {
                    if mine.ty.widens_to(&field.ty) {
                        mine.ty = field.ty;
                    }
                    mine.nullable |= field.nullable;
                    mine.pii |= field.pii;
                }
                None => {
                    let at = merged
                        .fields
                        .iter()
                        .position(|f| f.name.starts_with("_sluice_"))
                        .unwrap_or(merged.fields.len());
                    merged.fields.insert(at, field.clone());
                    for (map, theirs) in [
                        (&mut merged.first_seen, &other.first_seen),
                        (&mut merged.retyped_on, &other.retyped_on),
                    ] {
                        if let Some(v) = theirs.get(&field.name) {
                            map.insert(field.name.clone(), v.clone());
                        }
                    }
                    if let Some(p) = other.presence.get(&field.name) {
                        merged.presence.insert(field.name.clone(), *p);
                    }
                }
            }
        }
        merged
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(Field::arrow_field)
                .collect::<Vec<_>>(),
        ))
    }

    pub fn from_arrow(schema: &Schema) -> Result<TableSchema, String> {
        schema
            .fields()
            .iter()
            .map(|f| {
                FieldType::from_arrow(f)
                    .map(|ty| Field {
                        name: f.name().clone(),
                        ty,
                        nullable: f.is_nullable(),
                        pii: false,
                    })
                    .ok_or_else(|| {
                        format!(
                            "column `{}` has unsupported type {}",
                            f.name(),
                            f.data_type()
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TableSchema::new)
    }
}

/// Guesses a type from one JSON value; `None` for null (no information).
pub fn infer_type(value: &serde_json::Value) -> Option<FieldType> {
    use serde_json::Value as J;
    match value {
        J::Null => None,
        J::Bool(_) => Some(FieldType::Boolean),
        J::Number(n) if n.is_i64() => Some(FieldType::Bigint),
        J::Number(_) => Some(FieldType::Double),
        J::String(s) => Some(infer_string_type(s)),
        J::Array(_) | J::Object(_) => Some(FieldType::Json),
    }
}

/// Dates and timestamps are recognised in strings; numbers in strings are not (they
/// are often ids or codes with leading zeros): declare `columns:` to type those.
fn infer_string_type(s: &str) -> FieldType {
    if s.len() == 10 && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
        FieldType::Date
    } else if s.len() >= 19 && crate::typing::parse_timestamp(s).is_some() {
        FieldType::Timestamp
    } else {
        FieldType::Text
    }
}

/// The type that holds values of both `a` and `b` (used while inferring from many records).
pub fn unify(a: FieldType, b: FieldType) -> FieldType {
    if a.widens_to(&b) {
        b
    } else if b.widens_to(&a) {
        a
    } else {
        match (a, b) {
            (
                FieldType::Numeric {
                    precision: p,
                    scale: x,
                },
                FieldType::Numeric {
                    precision: q,
                    scale: y,
                },
            ) => {
                let scale = x.max(y);
                let integer = (p as i16 - x as i16).max(q as i16 - y as i16);
                let precision = (integer + scale as i16).min(MAX_DECIMAL_PRECISION as i16) as u8;
                FieldType::Numeric { precision, scale }
            }
            (FieldType::Double, FieldType::Bigint) | (FieldType::Bigint, FieldType::Double) => {
                FieldType::Double
            }
            (FieldType::Json, _) | (_, FieldType::Json) => FieldType::Json,
            _ => FieldType::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_type_names() {
        assert_eq!(FieldType::parse("BIGINT").unwrap(), FieldType::Bigint);
        assert_eq!(
            FieldType::parse("numeric(18, 2)").unwrap(),
            FieldType::Numeric {
                precision: 18,
                scale: 2
            }
        );
        assert_eq!(FieldType::parse("jsonb").unwrap(), FieldType::Json);
        assert!(FieldType::parse("blob")
            .unwrap_err()
            .contains("unknown type `blob`"));
    }

    #[test]
    fn arrow_round_trip_keeps_json_marker() {
        let schema = TableSchema::new(vec![
            Field::new("id", FieldType::Bigint).required(),
            Field::new("actions", FieldType::Json),
            Field::new("spend", FieldType::numeric(2)),
            Field::new("at", FieldType::Timestamp),
        ]);
        let back = TableSchema::from_arrow(&schema.arrow_schema()).unwrap();
        assert_eq!(back, schema);
    }

    #[test]
    fn inference_unifies_towards_the_wider_type() {
        assert_eq!(
            unify(FieldType::Bigint, FieldType::Double),
            FieldType::Double
        );
        assert_eq!(unify(FieldType::Date, FieldType::Text), FieldType::Text);
        assert_eq!(
            infer_type(&serde_json::json!("2024-07-01")),
            Some(FieldType::Date)
        );
        assert_eq!(
            infer_type(&serde_json::json!("00123")),
            Some(FieldType::Text)
        );
        assert_eq!(infer_type(&serde_json::json!([1])), Some(FieldType::Json));
    }

    /// Two shards' versions of one stream: the one stored last keeps the other's columns.
    #[test]
    fn a_merged_schema_keeps_both_shares_columns_and_the_wider_type() {
        let latest = TableSchema::new(vec![
            Field::new("id", FieldType::Bigint).required(),
            Field::new("only_latest", FieldType::Text),
            Field::new(LOADED_AT_COLUMN, FieldType::Timestamp),
        ]);
        let mut ours = TableSchema::new(vec![
            Field::new("id", FieldType::Double),
            Field::new("only_ours", FieldType::Date),
            Field::new(LOADED_AT_COLUMN, FieldType::Timestamp),
        ]);
        ours.first_seen
            .insert("only_ours".into(), "2026-12-01".into());
        let merged = latest.merged_with(&ours);
        let shape: Vec<(&str, &FieldType, bool)> = merged
            .fields
            .iter()
            .map(|f| (f.name.as_str(), &f.ty, f.nullable))
            .collect();
        assert_eq!(
            shape,
            [
                ("id", &FieldType::Double, true),
                ("only_latest", &FieldType::Text, true),
                ("only_ours", &FieldType::Date, true),
                (LOADED_AT_COLUMN, &FieldType::Timestamp, true),
            ]
        );
        assert_eq!(merged.first_seen["only_ours"], "2026-12-01");
        // Merging again changes nothing: the stored version already holds ours.
        assert_eq!(merged.merged_with(&ours), merged);
        // A narrower type of ours does not narrow the stored one.
        assert_eq!(
            ours.merged_with(&latest).field("id").unwrap().ty,
            FieldType::Double
        );
    }
}
