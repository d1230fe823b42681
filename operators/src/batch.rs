//! What flows on an edge: [`Message`]s carrying [`Batch`]es of Arrow data and
//! control signals in the same channel, so that a control signal (end of
//! stream, a checkpoint barrier) is ordered with the data before it.

use std::sync::Arc;

use arrow::array::{Array, BinaryArray, BooleanArray, UInt64Array};
use arrow::compute::filter;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// Rows plus where they came from.
///
/// `lines` and `raw` are provenance, kept beside the data instead of in it so
/// that sinks write exactly the user's columns: the 1-based line (CSV) or row
/// (Parquet) number of each row in its source object, and the row's source
/// text as read (CSV only), which is what a reject hands back for replay. Both
/// follow the rows through [`Batch::filter`]. Cloning is cheap (Arc'd
/// arrays), which is how fan-out shares a batch without copying it.
///
/// A batch with no rows may arrive once, first on an edge: it announces the
/// schema when no row will follow (a CSV sink still writes its header).
#[derive(Clone, Debug)]
pub struct Batch {
    pub records: RecordBatch,
    pub lines: Option<Arc<UInt64Array>>,
    /// Bytes, not text: a CSV row may carry invalid UTF-8 in a column the
    /// schema does not read.
    pub raw: Option<Arc<BinaryArray>>,
}

impl Batch {
    pub fn new(records: RecordBatch) -> Self {
        Batch { records, lines: None, raw: None }
    }

    pub fn with_lines(records: RecordBatch, lines: UInt64Array) -> Self {
        debug_assert_eq!(records.num_rows(), lines.len());
        Batch { records, lines: Some(Arc::new(lines)), raw: None }
    }

    /// Adds the source text of each row.
    pub fn with_raw(mut self, raw: BinaryArray) -> Self {
        debug_assert_eq!(self.records.num_rows(), raw.len());
        self.raw = Some(Arc::new(raw));
        self
    }

    pub fn num_rows(&self) -> usize {
        self.records.num_rows()
    }

    /// Line number of row `i`, when the source recorded one.
    pub fn line(&self, i: usize) -> Option<u64> {
        self.lines.as_ref().filter(|l| l.is_valid(i)).map(|l| l.value(i))
    }

    /// Source text of row `i`, when the source kept it.
    pub fn raw(&self, i: usize) -> Option<&[u8]> {
        self.raw.as_ref().filter(|r| r.is_valid(i)).map(|r| r.value(i))
    }

    /// Keeps the rows where `mask` is true; data and provenance stay aligned.
    pub fn filter(&self, mask: &BooleanArray) -> Result<Batch, ArrowError> {
        let records = arrow::compute::filter_record_batch(&self.records, mask)?;
        Ok(Batch { records, lines: filter_as(&self.lines, mask)?, raw: filter_as(&self.raw, mask)? })
    }
}

/// Filters a provenance array, keeping its concrete type.
fn filter_as<A: Array + Clone + 'static>(
    array: &Option<Arc<A>>,
    mask: &BooleanArray,
) -> Result<Option<Arc<A>>, ArrowError> {
    let Some(a) = array else { return Ok(None) };
    let f = filter(a.as_ref(), mask)?;
    let f = f
        .as_any()
        .downcast_ref::<A>()
        .cloned()
        .ok_or_else(|| ArrowError::ComputeError("provenance lost its type in a filter".into()))?;
    Ok(Some(Arc::new(f)))
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
    /// The upstream sent its last row: an operator does its end-of-input
    /// work (`finish`) once every input said so. Barriers may still follow,
    /// so that work is checkpointed too; `End` comes after.
    EndOfData,
    /// The upstream port will send nothing more.
    End,
}
