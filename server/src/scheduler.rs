//! One task per scheduled pipeline: sleeps until the next fire time (plus
//! jitter), asks the supervisor for a run, and remembers the slot in
//! `<state>/scheduler.json`, so that after downtime the next start knows
//! which slots it missed (`catch_up`).
//!
//! A slot that finds the pipeline still running is skipped and recorded in
//! the history as `skipped` (`on_overlap = "skip"`), or waits for the run
//! to end (`"queue"`, at most one waiting). Owns `scheduler.json`; starts
//! runs only through the supervisor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::runs::{Supervisor, Trigger, TriggerError, Triggered};
use crate::schedule::{CatchUp, Overlap, Schedule};
use crate::{PipelineDef, now_ms};

/// Counting missed slots stops here (an every-second schedule down for a
/// week need not count to 600,000).
const MISSED_CAP: u64 = 100_000;

pub struct Scheduler {
    sup: Arc<Supervisor>,
    file: PathBuf,
    /// Per pipeline: the schedule its task follows, and how to stop it.
    tasks: Mutex<HashMap<String, (String, CancellationToken)>>,
    /// Per pipeline: the last slot handled (ms since the epoch).
    memory: Mutex<BTreeMap<String, i64>>,
}

impl Scheduler {
    pub fn new(sup: Arc<Supervisor>, state: &Path) -> Arc<Scheduler> {
        let file = state.join("scheduler.json");
        let memory = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, i64>>(&b).ok())
            .unwrap_or_default();
        Arc::new(Scheduler { sup, file, tasks: Mutex::new(HashMap::new()), memory: Mutex::new(memory) })
    }

    /// Takes a (re)loaded set of pipelines: unchanged schedules keep their
    /// task, changed ones get a new one, removed ones stop.
    pub async fn install(self: &Arc<Self>, defs: &[Arc<PipelineDef>]) {
        self.sup.set_defs(defs);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashMap<&str, (&Arc<PipelineDef>, &Schedule)> =
            defs.iter().filter_map(|d| d.schedule.as_ref().map(|s| (d.name.as_str(), (d, s)))).collect();
        tasks.retain(|name, (key, stop)| {
            let keep = wanted.get(name.as_str()).is_some_and(|(_, s)| &fingerprint(s) == key);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (name, (def, s)) in wanted {
            if tasks.contains_key(name) {
                continue;
            }
            let stop = CancellationToken::new();
            tasks.insert(name.to_string(), (fingerprint(s), stop.clone()));
            let me = self.clone();
            let def = def.clone();
            tokio::spawn(async move { me.follow(def, stop).await });
        }
    }

    /// The next fire times of `pipeline` (for the API).
    pub fn upcoming(&self, def: &PipelineDef, n: usize) -> Vec<String> {
        def.schedule
            .as_ref()
            .map(|s| s.upcoming(Timestamp::now(), n).iter().map(|z| z.to_string()).collect())
            .unwrap_or_default()
    }

    /// Stops every task and remembers now as handled: downtime is counted
    /// from here.
    pub async fn stop(&self) {
        let names: Vec<String> = {
            let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.values().for_each(|(_, s)| s.cancel());
            tasks.keys().cloned().collect()
        };
        let now = now_ms();
        for n in names {
            self.remember(&n, now);
        }
    }

    fn last(&self, pipeline: &str) -> Option<i64> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner()).get(pipeline).copied()
    }

    fn remember(&self, pipeline: &str, slot_ms: i64) {
        let snapshot = {
            let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
            let e = m.entry(pipeline.to_string()).or_insert(slot_ms);
            *e = (*e).max(slot_ms);
            m.clone()
        };
        let tmp = self.file.with_extension("json.tmp");
        let write = std::fs::write(&tmp, serde_json::to_vec_pretty(&snapshot).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, &self.file));
        if let Err(e) = write {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot remember the last scheduled slot; a restart may not catch up");
        }
    }

    /// One pipeline's schedule, until `stop`.
    async fn follow(self: Arc<Self>, def: Arc<PipelineDef>, stop: CancellationToken) {
        let Some(s) = def.schedule.clone() else { return };
        self.catch_up(&def, &s).await;
        let mut cursor = Timestamp::now();
        loop {
            let Some(slot) = s.next_after(cursor) else {
                tracing::warn!(pipeline = %def.name, cron = %s.cron, "the schedule fires no more");
                return;
            };
            let jitter = s
                .jitter
                .map(|j| Duration::from_millis(rand::random_range(0..=j.as_millis() as u64)))
                .unwrap_or_default();
            // Sleep in steps: a wall clock that moves (NTP, suspend) is
            // noticed within a minute.
            loop {
                let wait_ms = slot.as_millisecond() + jitter.as_millis() as i64 - now_ms();
                if wait_ms <= 0 {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait_ms.min(60_000) as u64)) => {}
                    _ = stop.cancelled() => return,
                }
            }
            if stop.is_cancelled() {
                return;
            }
            self.fire(&def, &s, slot, Trigger::new("schedule")).await;
            self.remember(&def.name, slot.as_millisecond());
            cursor = slot;
        }
    }

    /// Slots missed while the service was down: one run for all of them
    /// (`catch_up = "latest"`), or a `missed` row in the history.
    async fn catch_up(&self, def: &PipelineDef, s: &Schedule) {
        let now = Timestamp::now();
        let Some(last) = self.last(&def.name).and_then(|ms| Timestamp::from_millisecond(ms).ok()) else {
            // First start with this pipeline: nothing was missed.
            self.remember(&def.name, now.as_millisecond());
            return;
        };
        let (missed, latest) = s.slots_between(last, now, MISSED_CAP);
        if let Some(latest) = latest {
            let more = if missed >= MISSED_CAP { "or more " } else { "" };
            match s.catch_up {
                CatchUp::Latest => {
                    tracing::warn!(pipeline = %def.name, missed, "{missed} {more}scheduled run(s) missed while the service was down: running once now");
                    self.fire(def, s, latest, Trigger { missed, ..Trigger::new("catch-up") }).await;
                }
                CatchUp::None => {
                    tracing::warn!(pipeline = %def.name, missed, "{missed} {more}scheduled run(s) missed while the service was down (catch_up = \"none\")");
                    let why = format!(
                        "{missed} {more}scheduled run(s) missed while the service was down, the last at {latest}"
                    );
                    let id = format!("missed-{}-{}", def.name, latest.as_millisecond());
                    if let Err(e) =
                        self.sup.history().not_run(&id, &def.name, latest.as_millisecond(), "missed", &why).await
                    {
                        tracing::warn!(error = %e, "cannot record the missed runs");
                    }
                }
            }
        }
        self.remember(&def.name, now.as_millisecond());
    }

    async fn fire(&self, def: &PipelineDef, s: &Schedule, slot: Timestamp, trigger: Trigger) {
        match self.sup.trigger(&def.name, trigger, s.on_overlap == Overlap::Queue) {
            Ok(Triggered::Started { .. }) => {}
            Ok(Triggered::Queued { behind }) => {
                tracing::info!(pipeline = %def.name, behind = %behind, %slot, "slot queued behind the running run");
            }
            Err(TriggerError::Busy { run_id, .. }) => {
                tracing::warn!(pipeline = %def.name, running = %run_id, %slot, "slot skipped: the pipeline is still running (on_overlap = \"skip\")");
                let why = format!("run {run_id} was still running (on_overlap = \"skip\")");
                let id = format!("skipped-{}-{}", def.name, slot.as_millisecond());
                if let Err(e) = self.sup.history().not_run(&id, &def.name, slot.as_millisecond(), "skipped", &why).await
                {
                    tracing::warn!(error = %e, "cannot record the skipped slot");
                }
            }
            Err(e) => tracing::warn!(pipeline = %def.name, error = %e, %slot, "scheduled run not started"),
        }
    }
}

/// What makes a schedule's task different from another's.
fn fingerprint(s: &Schedule) -> String {
    serde_json::to_string(s).unwrap_or_default()
}
