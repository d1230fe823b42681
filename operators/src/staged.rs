//! Output staged as numbered part objects, so that a sink writing one file
//! can take part in checkpoints and survive `kill -9`.
//!
//! A part holds the rows between two barriers and is named after the epoch
//! of the barrier that opened it (`0` before the first one). At a barrier
//! the sink closes its part: the part is complete and durable before the
//! barrier is acknowledged. On resume from checkpoint N, parts numbered
//! below N hold exactly what the checkpoint covers and are kept; parts from
//! N on were written after it and are deleted, since the replay writes them
//! again. At the end of a successful run the parts are assembled into the
//! target (a rename when there is one part) and the folder is removed; a
//! reader never sees a partial target.
//!
//! Owns the part folder (`.<file>.<sink>.parts/` beside the target) and the
//! assembly; the sink owns the encoding and the writers.

use std::sync::Arc;

use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::api::OperatorError;
use crate::storage::Location;

pub struct Parts {
    store: Arc<dyn ObjectStore>,
    target: Path,
    display: String,
    is_local: bool,
    dir: Path,
    /// Number of the part being (or to be) written.
    seq: u64,
    /// Resuming from this checkpoint, when set.
    resume: Option<u64>,
    prepared: bool,
    tmp_name: String,
}

impl Parts {
    pub fn new(loc: &Location, sink: &str) -> Parts {
        let name = loc.path.filename().unwrap_or("out").to_string();
        let mut parent: Vec<_> = loc.path.parts().collect();
        parent.pop();
        let dir_name = format!(".{name}.{sink}.parts");
        let mut dir = parent.clone();
        dir.push(dir_name.as_str().into());
        Parts {
            store: loc.store.clone(),
            target: loc.path.clone(),
            display: loc.display.clone(),
            is_local: loc.is_local,
            dir: Path::from_iter(dir),
            seq: 0,
            resume: None,
            prepared: false,
            tmp_name: format!(".{name}.tmp-{sink}-{}", std::process::id()),
        }
    }

    /// The run resumes from checkpoint `epoch`.
    pub fn resume(&mut self, epoch: u64) {
        self.resume = Some(epoch);
        self.seq = epoch;
    }

    /// Where the part being written goes.
    pub fn current(&self) -> Path {
        self.dir.clone().join(format!("{:020}.part", self.seq))
    }

    /// The part in progress was closed at barrier `epoch`; the next one
    /// starts after it.
    pub fn sealed(&mut self, epoch: u64) {
        self.seq = epoch;
    }

    fn err(&self, what: &str, e: object_store::Error) -> OperatorError {
        OperatorError::storage(format!("{what} {}", self.display), e)
    }

    /// Parts on disk, in order, with their numbers.
    async fn list(&self) -> Result<Vec<(Option<u64>, Path)>, OperatorError> {
        let mut listing = self.store.list(Some(&self.dir));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = match meta {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(self.err("listing the parts of", e)),
            };
            let n = meta.location.filename().and_then(|f| f.strip_suffix(".part")).and_then(|n| n.parse::<u64>().ok());
            found.push((n, meta.location));
        }
        found.sort_by_key(|(n, _)| *n);
        Ok(found)
    }

    /// Before the first write: a fresh run removes parts a crashed run left;
    /// a resumed run removes the parts written after its checkpoint.
    pub async fn prepare(&mut self) -> Result<(), OperatorError> {
        if self.prepared {
            return Ok(());
        }
        self.prepared = true;
        for (n, path) in self.list().await? {
            let keep = matches!((n, self.resume), (Some(n), Some(r)) if n < r);
            if !keep {
                self.store.delete(&path).await.map_err(|e| self.err("removing a stale part of", e))?;
            }
        }
        Ok(())
    }

    /// A resumed run checks that the parts its checkpoint covers are there.
    pub async fn kept(&mut self) -> Result<usize, OperatorError> {
        self.prepare().await?;
        Ok(self.list().await?.len())
    }

    pub fn writer(&self) -> BufWriter {
        BufWriter::new(self.store.clone(), self.current())
    }

    /// Assembles the parts into the target. `merge` gets the parts (two or
    /// more) and a writer for the target's staging object; byte formats
    /// concatenate, Parquet re-encodes.
    pub async fn publish(&mut self, parquet_schema_merge: bool) -> Result<(), OperatorError> {
        self.prepare().await?;
        let parts: Vec<Path> = self.list().await?.into_iter().filter(|(n, _)| n.is_some()).map(|(_, p)| p).collect();
        let staging = {
            let mut parent: Vec<_> = self.target.parts().collect();
            parent.pop();
            parent.push(self.tmp_name.as_str().into());
            Path::from_iter(parent)
        };
        match parts.len() {
            0 => {
                // No rows at all: still an (empty) file, so "no output" and
                // "did not run" can be told apart.
                self.store
                    .put(&self.target, bytes::Bytes::new().into())
                    .await
                    .map_err(|e| self.err("cannot publish", e))?;
            }
            1 => {
                self.store.rename(&parts[0], &self.target).await.map_err(|e| self.err("cannot publish", e))?;
            }
            _ if self.is_local && !parquet_schema_merge => {
                // Local text parts: append them to the first one in the
                // kernel (copy_file_range), then rename it; no byte passes
                // through this process.
                let files: Vec<std::path::PathBuf> =
                    parts.iter().map(|p| std::path::PathBuf::from(format!("/{p}"))).collect();
                let display = self.display.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let mut first = std::fs::OpenOptions::new().append(true).open(&files[0])?;
                    for f in &files[1..] {
                        std::io::copy(&mut std::fs::File::open(f)?, &mut first)?;
                    }
                    first.sync_all()
                })
                .await
                .map_err(|e| OperatorError::Data(format!("assembling {display}: {e}")))?
                .map_err(|e| OperatorError::Data(format!("assembling {}: {e}", self.display)))?;
                self.store.rename(&parts[0], &self.target).await.map_err(|e| self.err("cannot publish", e))?;
            }
            _ if parquet_schema_merge => {
                merge_parquet(&self.store, &parts, &staging, &self.display).await?;
                self.store.rename(&staging, &self.target).await.map_err(|e| self.err("cannot publish", e))?;
            }
            _ => {
                let mut w = BufWriter::new(self.store.clone(), staging.clone());
                for p in &parts {
                    let got = self.store.get(p).await.map_err(|e| self.err("reading a part of", e))?;
                    let mut s = got.into_stream();
                    while let Some(chunk) = s.next().await {
                        let chunk = chunk.map_err(|e| self.err("reading a part of", e))?;
                        w.put(chunk).await.map_err(|e| self.err("assembling", e))?;
                    }
                }
                w.shutdown().await.map_err(|e| OperatorError::Data(format!("assembling {}: {e}", self.display)))?;
                self.store.rename(&staging, &self.target).await.map_err(|e| self.err("cannot publish", e))?;
            }
        }
        self.discard().await;
        Ok(())
    }

    /// Removes every part (after publishing, or when a run without
    /// checkpoints fails: nothing of it can be resumed).
    pub async fn discard(&self) {
        if let Ok(parts) = self.list().await {
            for (_, p) in parts {
                let _ = self.store.delete(&p).await;
            }
        }
        if self.is_local {
            // Also what the store's own multipart staging may have left.
            let _ = std::fs::remove_dir_all(format!("/{}", self.dir));
        }
    }
}

async fn merge_parquet(
    store: &Arc<dyn ObjectStore>,
    parts: &[Path],
    staging: &Path,
    display: &str,
) -> Result<(), OperatorError> {
    #[allow(deprecated)]
    use parquet::arrow::async_reader::ParquetObjectReader;
    use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
    use parquet::arrow::{AsyncArrowWriter, arrow_reader::ArrowReaderOptions};
    let ctx = |e| OperatorError::parquet(format!("assembling {display}"), e);
    let mut writer: Option<AsyncArrowWriter<BufWriter>> = None;
    for p in parts {
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(store.clone(), p.clone());
        let builder =
            ParquetRecordBatchStreamBuilder::new_with_options(reader, ArrowReaderOptions::new()).await.map_err(ctx)?;
        let schema = builder.schema().clone();
        let mut stream = builder.build().map_err(ctx)?;
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(
                AsyncArrowWriter::try_new(BufWriter::new(store.clone(), staging.clone()), schema, None).map_err(ctx)?,
            ),
        };
        while let Some(b) = stream.next().await {
            w.write(&b.map_err(ctx)?).await.map_err(ctx)?;
        }
    }
    if let Some(w) = writer {
        w.close().await.map_err(ctx)?;
    }
    Ok(())
}
