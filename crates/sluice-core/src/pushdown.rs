//! Models run inside the destination (`models: { engine: destination }`): what a
//! warehouse offers sluice-transform so a model's SQL runs where its data lives.
//!
//! sluice-transform plans the model with DataFusion, unparses it to the warehouse's
//! dialect, and drives one [`WarehouseSession`]: one connection and one transaction
//! in which the model's rows are computed into a staging table, its checks run over
//! that table, and the table is published (or only its quarantine recorded) before
//! the single `COMMIT`. A dropped session rolls back: readers never see a half table,
//! and rows never travel through sluice.

use async_trait::async_trait;

use crate::destination::{DestinationError, LoadOutcome, LoadTail, TableSpec};
use crate::typing::Rejected;

/// A destination that can run SQL models itself.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// The SQL dialect it speaks (`postgres`), for messages.
    fn dialect(&self) -> &'static str;

    /// The quoted, schema-qualified name of the published table `layer.name`
    /// (`"d1"."facebook_insights"`, with the destination's schema prefix).
    fn published_table(&self, layer: &str, name: &str) -> String;

    /// The columns of the published table `layer.name` as `(name, type)` in order,
    /// the type as the warehouse spells it (`numeric(38,6)`); empty when there is no
    /// such table. How a selected model plans over a model it does not run.
    async fn columns(
        &self,
        layer: &str,
        name: &str,
    ) -> Result<Vec<(String, String)>, DestinationError>;

    /// Opens the transaction that computes and publishes `spec` (its write mode is
    /// `replace` or `overwrite_partitions`) and creates the empty staging table
    /// ([`WarehouseSession::stage`]) with `spec`'s columns. `None` when the ledger
    /// already has `load_id` for the table (a retried publish): nothing to do.
    async fn begin(
        &self,
        spec: &TableSpec,
        load_id: &str,
    ) -> Result<Option<Box<dyn WarehouseSession>>, DestinationError>;
}

/// One model's transaction in the warehouse.
#[async_trait]
pub trait WarehouseSession: Send {
    /// The staging table, quoted (`pg_temp."_sluice_model"`); its columns are the
    /// table's, named as in the destination.
    fn stage(&self) -> &str;

    /// Runs a statement. `secrets` bind as `$1`, `$2`, … (bytes): keys travel only
    /// as parameters, never in SQL text, logs or errors.
    async fn execute(&mut self, sql: &str, secrets: &[&[u8]]) -> Result<u64, DestinationError>;

    /// The rows of a query whose columns are all text (NULL as `None`).
    async fn query_text(&mut self, sql: &str)
        -> Result<Vec<Vec<Option<String>>>, DestinationError>;

    /// Publishes the staging table as the table (rows of `tail.partitions` replaced for
    /// `overwrite_partitions`, the whole table for `replace`), appends `tail.quarantine`
    /// to `<table>__quarantine`, records the load in the ledger and commits.
    async fn publish(
        self: Box<Self>,
        tail: LoadTail,
        run_id: &str,
    ) -> Result<LoadOutcome, DestinationError>;

    /// Leaves the table as it was, records `quarantine` in `<table>__quarantine` and commits.
    async fn block(
        self: Box<Self>,
        quarantine: &[Rejected],
        run_id: &str,
    ) -> Result<u64, DestinationError>;
}
