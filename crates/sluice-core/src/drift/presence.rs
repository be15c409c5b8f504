//! Absent is not the same as gone: which fields a stream's records carry.
//!
//! APIs leave fields out of a record when they are empty (the Graph API omits a
//! campaign's unset `stop_time`; proto3 JSON omits defaults). So "no record of
//! this run carried the field" only means "the field is gone" when the field used
//! to be in every record. The registry keeps, per field, what was learned:
//! carried by every record (the default, not written down), by some records only
//! ([`Presence::Optional`], with the share that carried it), or by none yet
//! ([`Presence::Unsent`]: declared, never sent). A run then reports a field as
//! removed only when its absence is a real change:
//!
//! - an always-carried field absent from every record of the run;
//! - an optional field absent from so many records that chance cannot explain it
//!   (fewer than one in [`CHANCE`] runs would miss it that often);
//! - never a field that was never sent.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A missing optional field is reported when a run this size would carry it at
/// least once in all but 1 of this many runs.
pub const CHANCE: f64 = 1000.0;

/// What the registry learned about a field that not every record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "presence")]
pub enum Presence {
    /// Declared or known, but no record has carried it yet.
    Unsent,
    /// Carried by some records only: `percent` of those read when this was learned.
    Optional { percent: u8 },
}

/// How many records of a run carried each field (a non-null value).
#[derive(Debug, Default)]
pub struct PresenceTally {
    rows: u64,
    carried: HashMap<String, u64>,
}

/// The outcome for one field after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// What to record for the field (`None`: carried by every record).
    Learned(Option<Presence>),
    /// A real disappearance: report it by the removed-field policy. `detail`
    /// says why it is not chance. The field keeps what was known before.
    Removed { detail: String },
}

impl PresenceTally {
    /// Counts one record's non-null fields.
    pub fn record(&mut self, fields: &Map<String, Value>) {
        self.rows += 1;
        for (name, value) in fields {
            if !value.is_null() {
                match self.carried.get_mut(name) {
                    Some(n) => *n += 1,
                    None => {
                        self.carried.insert(name.clone(), 1);
                    }
                }
            }
        }
    }

    /// Counts a typed batch's non-null values per column.
    pub fn batch(&mut self, batch: &RecordBatch) {
        self.rows += batch.num_rows() as u64;
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            let carried = (column.len() - column.null_count()) as u64;
            if carried > 0 {
                *self.carried.entry(field.name().clone()).or_default() += carried;
            }
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// What this run says about `field`, given what was known before (`known`:
    /// `None` = every record carried it, or the field is new) and whether a
    /// previous run recorded the field at all (`in_baseline`).
    pub fn judge(&self, field: &str, known: Option<Presence>, in_baseline: bool) -> Verdict {
        let n = self.rows;
        let carried = self.carried.get(field).copied().unwrap_or(0);
        if n == 0 {
            return Verdict::Learned(known);
        }
        if carried == n {
            // Once seen missing, a field stays optional: one full run proves nothing.
            return Verdict::Learned(match known {
                Some(Presence::Optional { .. }) => known,
                _ => None,
            });
        }
        if carried > 0 {
            let percent = match known {
                Some(Presence::Optional { percent }) => percent,
                _ => ((carried * 100 / n) as u8).max(1),
            };
            return Verdict::Learned(Some(Presence::Optional { percent }));
        }
        match known {
            Some(Presence::Unsent) => Verdict::Learned(known),
            None if !in_baseline => Verdict::Learned(Some(Presence::Unsent)),
            None => Verdict::Removed {
                detail: format!("absent from all {n} records, every record carried it before"),
            },
            Some(Presence::Optional { percent }) => {
                let p = f64::from(percent) / 100.0;
                if (1.0 - p).powf(n as f64) < 1.0 / CHANCE {
                    Verdict::Removed {
                        detail: format!(
                            "absent from all {n} records; {percent}% of records carried it before"
                        ),
                    }
                } else {
                    Verdict::Learned(known)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tally(records: &[Value]) -> PresenceTally {
        let mut t = PresenceTally::default();
        for r in records {
            t.record(r.as_object().unwrap());
        }
        t
    }

    #[test]
    fn a_field_some_records_omit_is_learned_optional_and_not_reported_when_a_small_run_lacks_it() {
        // Run 1: a third of the campaigns have a stop_time.
        let run1 = tally(&[
            json!({"id": "1", "stop_time": "2029-01-01"}),
            json!({"id": "2"}),
            json!({"id": "3"}),
        ]);
        let learned = run1.judge("stop_time", None, false);
        assert_eq!(
            learned,
            Verdict::Learned(Some(Presence::Optional { percent: 33 }))
        );
        // Run 2: two updated campaigns, neither with a stop_time: chance, not a change.
        let run2 = tally(&[json!({"id": "2"}), json!({"id": "3", "stop_time": null})]);
        assert_eq!(
            run2.judge("stop_time", Some(Presence::Optional { percent: 33 }), true),
            Verdict::Learned(Some(Presence::Optional { percent: 33 }))
        );
        // A run of 40 campaigns without one is not chance any more (0.67^40 ≈ 1e-7).
        let many: Vec<Value> = (0..40).map(|i| json!({"id": i.to_string()})).collect();
        assert!(matches!(
            tally(&many).judge("stop_time", Some(Presence::Optional { percent: 33 }), true),
            Verdict::Removed { .. }
        ));
    }

    #[test]
    fn never_sent_fields_are_never_removed_and_always_sent_ones_are() {
        let run = tally(&[json!({"id": "1"}), json!({"id": "2"})]);
        // Declared, never sent: recorded as unsent on the first run, quiet afterwards.
        assert_eq!(
            run.judge("lifetime_budget", None, false),
            Verdict::Learned(Some(Presence::Unsent))
        );
        assert_eq!(
            run.judge("lifetime_budget", Some(Presence::Unsent), true),
            Verdict::Learned(Some(Presence::Unsent))
        );
        // Carried by every record before, by none now: gone.
        assert!(matches!(
            run.judge("name", None, true),
            Verdict::Removed { .. }
        ));
        // Carried by every record: nothing to write down.
        assert_eq!(run.judge("id", None, true), Verdict::Learned(None));
        // A field first sent now stops being unsent.
        assert_eq!(
            run.judge("id", Some(Presence::Unsent), true),
            Verdict::Learned(None)
        );
    }
}
