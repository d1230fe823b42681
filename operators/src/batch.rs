//! What flows on an edge: [`Message`]s carrying [`Batch`]es of Arrow data and
//! control signals in the same channel, so that a control signal (end of
//! stream, a checkpoint barrier) is ordered with the data before it.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, UInt64Array};
use arrow::compute::filter;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// Rows plus where they came from.
///
/// `lines` is provenance, kept beside the data instead of in it so that sinks
/// write exactly the user's columns: the 1-based line (CSV) or row (Parquet)
/// number of each row in its source object. Cloning is cheap (Arc'd arrays),
/// which is how fan-out shares a batch without copying it.
#[derive(Clone, Debug)]
pub struct Batch {
    pub records: RecordBatch,
    pub lines: Option<Arc<UInt64Array>>,
}

impl Batch {
    pub fn new(records: RecordBatch) -> Self {
        Batch { records, lines: None }
    }

    pub fn with_lines(records: RecordBatch, lines: UInt64Array) -> Self {
        debug_assert_eq!(records.num_rows(), lines.len());
        Batch { records, lines: Some(Arc::new(lines)) }
    }

    pub fn num_rows(&self) -> usize {
        self.records.num_rows()
    }

    /// Line number of row `i`, when the source recorded one.
    pub fn line(&self, i: usize) -> Option<u64> {
        self.lines.as_ref().filter(|l| l.is_valid(i)).map(|l| l.value(i))
    }

    /// Keeps the rows where `mask` is true; data and provenance stay aligned.
    pub fn filter(&self, mask: &BooleanArray) -> Result<Batch, ArrowError> {
        let records = arrow::compute::filter_record_batch(&self.records, mask)?;
        let lines = match &self.lines {
            Some(l) => {
                let f = filter(l.as_ref(), mask)?;
                let f = f
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .cloned()
                    .ok_or_else(|| ArrowError::ComputeError("line numbers lost their type".into()))?;
                Some(Arc::new(f))
            }
            None => None,
        };
        Ok(Batch { records, lines })
    }
}

/// A checkpoint barrier. Carried in-band; aligned and acted upon by the
/// runtime (the checkpoint protocol arrives with the checkpoint store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Barrier {
    pub epoch: u64,
}

/// Everything an edge carries.
#[derive(Clone, Debug)]
pub enum Message {
    Data(Batch),
    Barrier(Barrier),
    /// The upstream port will send nothing more.
    End,
}
