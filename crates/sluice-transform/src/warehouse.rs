//! The PII policy on the way to the warehouse: a [`Destination`] that shows the
//! `raw` text of D1 quarantine rows as the policy does (hashed, masked, encrypted
//! or dropped personal fields, see [`PiiPolicy::apply_to_raw`]) before the real
//! destination stores them. D1 tables themselves keep clear values; where the
//! warehouse can restrict them (PostgreSQL grants) the destination does.

use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use sluice_core::destination::{
    Destination, DestinationError, LoadOutcome, LoadRequest, TableSpec,
};
use sluice_core::typing::Rejected;

use crate::pii::PiiPolicy;

/// Wraps a destination so no D1 quarantine row reaches it with clear personal fields.
pub struct PolicedDestination {
    inner: Arc<dyn Destination>,
    policy: Arc<PiiPolicy>,
}

impl PolicedDestination {
    pub fn new(inner: Arc<dyn Destination>, policy: PiiPolicy) -> PolicedDestination {
        PolicedDestination {
            inner,
            policy: Arc::new(policy),
        }
    }
}

/// The columns of `table` its connector marked personal.
fn marked(table: &TableSpec) -> Vec<String> {
    table
        .schema
        .fields
        .iter()
        .filter(|f| f.pii)
        .map(|f| f.name.clone())
        .collect()
}

/// `rows` with their `raw` text as the policy shows it, for a D1 table; model
/// quarantines (D2) already hold rows computed from the policy's views.
fn police(policy: &PiiPolicy, table: &TableSpec, rows: &mut [Rejected]) {
    if table.layer != "d1" {
        return;
    }
    let marked = marked(table);
    for row in rows {
        row.raw = policy.apply_to_raw(&table.name, &marked, &row.raw);
    }
}

#[async_trait]
impl Destination for PolicedDestination {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn check(&self) -> Result<(), DestinationError> {
        self.inner.check().await
    }

    fn streams_loads(&self) -> sluice_core::destination::StreamedLoads {
        self.inner.streams_loads()
    }

    async fn load(&self, mut request: LoadRequest<'_>) -> Result<LoadOutcome, DestinationError> {
        let policy = self.policy.clone();
        let table = request.table;
        request.tail = request
            .tail
            .map(move |tail| {
                tail.map(|mut tail| {
                    police(&policy, table, &mut tail.quarantine);
                    tail
                })
            })
            .boxed();
        self.inner.load(request).await
    }

    async fn record_quarantine(
        &self,
        table: &TableSpec,
        run_id: &str,
        rows: &[Rejected],
    ) -> Result<u64, DestinationError> {
        let mut rows = rows.to_vec();
        police(&self.policy, table, &mut rows);
        self.inner.record_quarantine(table, run_id, &rows).await
    }

    async fn forget(
        &self,
        layer: &str,
        table: &str,
        columns: &[String],
        values: &[String],
    ) -> Result<u64, DestinationError> {
        self.inner.forget(layer, table, columns, values).await
    }

    async fn row_count(&self, layer: &str, table: &str) -> Result<Option<u64>, DestinationError> {
        self.inner.row_count(layer, table).await
    }

    /// Models in the warehouse read D1 through their own policy views (`pushdown`).
    fn warehouse(&self) -> Option<&dyn sluice_core::pushdown::Warehouse> {
        self.inner.warehouse()
    }
}
