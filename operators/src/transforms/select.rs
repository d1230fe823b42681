//! `kind = "select"`: keeps, renames, reorders and casts columns, and can
//! number rows. Enough reshaping to turn one dataset's layout into another's
//! (e.g. the SSA Parquet file into Kaggle's NationalNames.csv layout).

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;

use crate::api::{BuildContext, Collector, OUT, Operator, OperatorError, Resume, Snapshot};
use crate::batch::{Barrier, Batch};
use crate::sources::csv::ColumnType;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectColumn {
    /// Output name.
    pub name: String,
    /// Input column; defaults to `name`.
    pub from: Option<String>,
    /// Cast to this type (a value that does not fit fails the run).
    #[serde(rename = "type")]
    pub ty: Option<ColumnType>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    pub columns: Vec<SelectColumn>,
    /// Adds a first column with this name holding 1, 2, 3… across the stream.
    pub row_number: Option<String>,
}

pub struct Select {
    cfg: SelectConfig,
    next_row: u64,
}

pub fn build(_ctx: &BuildContext, cfg: SelectConfig) -> Result<Select, OperatorError> {
    if cfg.columns.is_empty() {
        return Err(OperatorError::Config("columns must name at least one column".into()));
    }
    Ok(Select { cfg, next_row: 1 })
}

#[async_trait]
impl Operator for Select {
    async fn process(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError> {
        let input = &batch.records;
        let n = input.num_rows();
        let mut fields = Vec::with_capacity(self.cfg.columns.len() + 1);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.cfg.columns.len() + 1);
        if let Some(name) = &self.cfg.row_number {
            fields.push(Field::new(name, DataType::UInt64, false));
            arrays.push(Arc::new(UInt64Array::from_iter_values(self.next_row..self.next_row + n as u64)));
            self.next_row += n as u64;
        }
        for c in &self.cfg.columns {
            let from = c.from.as_deref().unwrap_or(&c.name);
            let Ok(i) = input.schema().index_of(from) else {
                let have = input.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>().join(", ");
                return Err(OperatorError::Config(format!("column `{from}` is not in the input (columns: {have})")));
            };
            let mut col = input.column(i).clone();
            if let Some(ty) = c.ty {
                let opts = arrow::compute::CastOptions { safe: false, ..Default::default() };
                col = arrow::compute::cast_with_options(&col, &ty.data_type(), &opts)
                    .map_err(|e| OperatorError::arrow(format!("casting `{from}` to {:?}", ty), e))?;
            }
            fields.push(Field::new(&c.name, col.data_type().clone(), input.schema().field(i).is_nullable()));
            arrays.push(col);
        }
        let records = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| OperatorError::arrow("building the selected batch", e))?;
        out.emit(OUT, Batch { records, lines: batch.lines, raw: batch.raw }).await
    }

    async fn on_barrier(&mut self, _barrier: Barrier, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        // The row counter is the whole state: numbering continues after a resume.
        Ok(if self.cfg.row_number.is_some() {
            Snapshot::Full(self.next_row.to_le_bytes().to_vec())
        } else {
            Snapshot::None
        })
    }

    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        if let Some(b) = &resume.full {
            let bytes: [u8; 8] = b.as_slice().try_into().map_err(|_| {
                OperatorError::Resume(format!(
                    "checkpoint {}: the row counter is {} bytes, not 8",
                    resume.epoch,
                    b.len()
                ))
            })?;
            self.next_row = u64::from_le_bytes(bytes);
        }
        Ok(())
    }
}
