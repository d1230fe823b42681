//! What `engine serve` needs of the engine: pipeline files read into the
//! service's terms ([`server::PipelineDef`]) and `SECRET[...]` references
//! resolved with the backends those files declare. The service itself
//! (schedules, runs, history, API) is the `server` crate's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::config;

/// Reads pipeline files for `engine serve`.
pub struct Catalog;

#[async_trait::async_trait]
impl server::Catalog for Catalog {
    fn load(&self, file: &Path) -> Result<server::PipelineDef, String> {
        let p = config::load(file).map_err(|e| e.to_string())?;
        Ok(server::PipelineDef {
            name: p.name.clone(),
            file: p.file.clone(),
            description: p.description.clone(),
            schedule: p.schedule.clone(),
            graph: crate::graph::json(&p),
        })
    }

    async fn run_died(&self, file: &Path, run_id: &str, why: &str) {
        let mut p = match config::load(file) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "no alert for the dead run: the pipeline file does not load");
                return;
            }
        };
        if p.alerts.is_empty() {
            return;
        }
        // Only the receivers' references: a component's may be what killed
        // the run (a credential that no longer resolves).
        p.components.clear();
        if let Err(e) = crate::secrets::resolve(&mut p).await {
            tracing::warn!(pipeline = %p.name, error = %e, "no alert for the dead run: its receivers' secrets do not resolve");
            return;
        }
        let facts = alerts::RunFacts {
            pipeline: p.name.clone(),
            run_id: run_id.to_string(),
            host: crate::notify::hostname(),
            failed: Some(("(run process)".into(), why.to_string())),
            ..Default::default()
        };
        crate::notify::send_facts(&p, facts).await;
    }

    fn rejects_files(&self, file: &Path) -> Result<Vec<PathBuf>, String> {
        let p = config::load(file).map_err(|e| e.to_string())?;
        Ok(p.components
            .iter()
            .filter(|c| c.role == operators::Role::Sink && c.kind.name == "file")
            .filter(|c| c.inputs.iter().any(|i| i.port_name == "rejects"))
            .filter_map(|c| c.options.get("path").and_then(|v| v.as_str()).map(PathBuf::from))
            .filter(|path| path.extension().is_some_and(|x| x == "ndjson" || x == "jsonl" || x == "json"))
            .collect())
    }

    async fn checkpoints(&self, file: &Path) -> Result<String, String> {
        let p = config::load(file).map_err(|e| e.to_string())?;
        let dir = crate::checkpoint::store_dir(&p);
        if !dir.exists() {
            return Ok(format!("no checkpoints for pipeline {} (no store at {})\n", p.name, dir.display()));
        }
        // sled does its I/O synchronously: off the async workers.
        tokio::task::spawn_blocking(move || {
            let store = crate::checkpoint::open_store(&p).map_err(|e| e.to_string())?;
            let mut text = format!("pipeline {}: checkpoints in {}\n", p.name, dir.display());
            text.push_str(&crate::checkpoint::list(&store).map_err(|e| e.to_string())?);
            text.push('\n');
            text.push_str(&crate::checkpoint::show(&store, None).map_err(|e| e.to_string())?);
            Ok(text)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn resolve_secret(&self, files: &[PathBuf], reference: &str) -> Result<String, String> {
        let refs = secrets::reference::scan(reference)?;
        let [(range, r)] = refs.as_slice() else {
            return Err("write one reference, like SECRET[aws.engine/api#token]".into());
        };
        if range.start != 0 || range.end != reference.len() {
            return Err("the token must be a reference alone, like SECRET[aws.engine/api#token]".into());
        }
        let declared = files
            .iter()
            .filter_map(|f| config::load(f).ok())
            .find_map(|p| p.secrets.get(&r.backend).map(|spec| (r.backend.clone(), spec.clone())));
        let Some((name, spec)) = declared else {
            return Err(format!(
                "{r}: no pipeline file served declares the secret backend `{}` under [secrets]",
                r.backend
            ));
        };
        let resolver = secrets::Resolver::new(&[(name, spec)].into_iter().collect())?;
        let wanted: BTreeSet<_> = [r.clone()].into_iter().collect();
        match resolver.resolve(&wanted).await.remove(r) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!("{r} did not resolve")),
        }
    }
}
