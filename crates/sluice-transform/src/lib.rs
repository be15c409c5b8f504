//! sluice's transform layers: D1 → D2A → D2B.
//!
//! A *model* is one SQL `SELECT` in `models/d2a/<name>.sql` or `models/d2b/<name>.sql`,
//! with optional YAML beside it (`<name>.yml`: materialisation, partition column,
//! primary key, checks). This crate owns:
//!
//! - [`project`]: loading models, reading their dependencies from the SQL's table
//!   references (`d1.x`, `d2a.y`), ordering them, and reporting SQL errors as file:line;
//! - [`pii`]: the `pii:` policy and the keyed-hash / mask / redact / encrypt functions,
//!   applied automatically to every D1 column a model reads;
//! - [`functions`]: cleaning helpers usable in any model (money, micros, currencies, safe casts);
//! - [`catalog`]: the DataFusion session over the lake's tables (`d1.*`, `d2a.*`, `d2b.*`);
//! - [`checks`]: data-quality checks and quarantine;
//! - [`compare`]: how a replacing stream's D1 table differs from the one it replaces;
//! - [`lineage`]: column-level lineage of every model, from its optimised logical plan;
//! - [`quarantine`]: every quarantine in the lake as `quarantine.<layer>__<table>`;
//! - [`preflight`]: planning every model before a run or in `sluice validate`;
//! - [`run`]: running every model into the lake and the destination ([`run_models`]),
//!   and ad-hoc queries ([`query`]);
//! - [`pushdown`]: models that run inside the warehouse (`engine: destination`): the
//!   same plan unparsed to PostgreSQL, checks and publish in one transaction there;
//! - [`published`]: models' checks over their published tables, previews (`sluice test`, `show`);
//! - [`stage`]: the models' part of a run plan (describing models to it, running
//!   the ones it selected).
//!
//! It does not extract or type source data (the executor in sluice-core does), and it
//! does not know which destination it loads (the `Destination` trait does).
//! DataFusion is only a dependency of this crate, so the rest of sluice builds fast.

pub mod catalog;
pub mod checks;
pub mod compare;
mod conform;
pub mod error;
pub mod functions;
pub mod lineage;
mod output;
pub mod pii;
pub mod preflight;
pub mod project;
pub mod published;
pub mod pushdown;
pub mod quarantine;
pub mod render;
pub mod run;
pub mod stage;
pub mod warehouse;

/// The engine's Arrow, for callers that print or inspect results.
pub use datafusion::arrow;
pub use error::TransformError;
pub use project::{Layer, Model, ModelProject};

pub use catalog::D1View;
pub use run::{query, run_models, ModelRunOptions};
pub use stage::ModelStage;
