//! The pipeline file: parse, interpolate, check, and produce a [`Pipeline`]
//! the runtime can trust. Every problem is collected (not just the first)
//! and points at `file:line:column`. Nothing here starts a task or opens a
//! connection: validating a file has no side effects.

pub mod derive;
pub mod diagnostic;
pub mod interpolate;
pub mod value;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use operators::registry::{self, KindSpec, OptionError, PathSegment, Role};

pub use diagnostic::{Diagnostic, Severity};
use value::{Key, Node, Value};

pub const DEFAULT_BATCH_SIZE: usize = 8192;
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4;

/// Options every component accepts, handled by the engine itself.
const COMMON: &[&str] = &["kind", "inputs", "deletes", "batch_size", "channel_capacity"];
const TOP_LEVEL: &[&str] = &["pipeline", "secrets", "sources", "transforms", "sinks", "alerts"];
const PIPELINE_KEYS: &[&str] = &["name", "description", "batch_size", "channel_capacity", "checkpoint", "schedule"];
const SCHEDULE_KEYS: &[&str] = &["cron", "timezone", "on_overlap", "catch_up", "timeout", "retry", "jitter"];
const CHECKPOINT_KEYS: &[&str] = &["interval", "rows", "dir", "keep"];

/// Checkpoint every few seconds unless told otherwise: a crash then costs
/// at most a few seconds of re-reading.
pub const DEFAULT_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
pub const DEFAULT_CHECKPOINT_KEEP: usize = 3;

/// `[pipeline.checkpoint]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// Time between checkpoints; `None` with `rows` also `None`: off.
    pub interval: Option<std::time::Duration>,
    /// Source rows between checkpoints.
    pub rows: Option<u64>,
    /// Where the store lives; default `checkpoints/<pipeline>` beside the
    /// pipeline file.
    pub dir: PathBuf,
    /// Committed checkpoints kept (older ones are pruned).
    pub keep: usize,
}

impl CheckpointSettings {
    pub fn enabled(&self) -> bool {
        self.interval.is_some() || self.rows.is_some()
    }

    /// `checkpoints/<pipeline>` beside the pipeline file.
    pub fn default_for(file: &Path, pipeline: &str) -> CheckpointSettings {
        let base = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        CheckpointSettings {
            interval: Some(DEFAULT_CHECKPOINT_INTERVAL),
            rows: None,
            dir: base.join("checkpoints").join(pipeline),
            keep: DEFAULT_CHECKPOINT_KEEP,
        }
    }
}

/// Reads `5s`, `500ms`, `1m` (1ms to 24h, see [`operators::duration`]);
/// `off` (or `0`) is `None`.
pub fn parse_interval(s: &str) -> Result<Option<std::time::Duration>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") || t == "0" || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    operators::duration::parse_duration(t).map(Some)
}

/// A validated pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    pub batch_size: usize,
    pub channel_capacity: usize,
    pub checkpoint: CheckpointSettings,
    /// Sources, then transforms, then sinks, each in file order.
    pub components: Vec<Component>,
    /// Problems that do not stop a run (e.g. rejects nobody reads).
    pub warnings: Vec<Diagnostic>,
    pub source_text: String,
    /// `[secrets.<name>]`: the backends `SECRET[name.key]` references use.
    pub secrets: BTreeMap<String, secrets::BackendSpec>,
    /// `[alerts.<name>]` tables, interpolated and checked; `SECRET[...]`
    /// references in them are resolved with the components'.
    pub alerts: BTreeMap<String, serde_json::Value>,
    /// `[pipeline.schedule]`: when `engine serve` runs it.
    pub schedule: Option<server::Schedule>,
}

#[derive(Clone, Debug)]
pub struct Component {
    pub id: String,
    pub role: Role,
    pub kind: &'static KindSpec,
    pub inputs: Vec<Input>,
    /// Operator options, interpolated, without the common keys. Holds
    /// `SECRET[...]` references as written until `crate::secrets::resolve`
    /// replaces them with values.
    pub options: serde_json::Value,
    /// The options before secrets were resolved (references as written):
    /// what a rotated credential is resolved again from. None when the
    /// component has no reference or nothing was resolved yet.
    pub unresolved: Option<serde_json::Value>,
    /// Resolves the component's references again after a refusal (set with
    /// `unresolved`).
    pub rotation: RotationSlot,
    /// The component's table as written, before interpolation.
    pub raw_options: serde_json::Value,
    /// Rows per batch (sources).
    pub batch_size: usize,
    /// Capacity, in batches, of each edge into this component.
    pub channel_capacity: usize,
}

/// A component's [`operators::Rotation`], if it has secrets to rotate.
#[derive(Clone, Default)]
pub struct RotationSlot(pub Option<std::sync::Arc<dyn operators::Rotation>>);

impl std::fmt::Debug for RotationSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "RotationSlot(Some)" } else { "RotationSlot(None)" })
    }
}

/// One edge into a component: `from` (a component id) and its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub from: String,
    pub port: usize,
    pub port_name: &'static str,
    /// Listed under the sink's `deletes`: its rows are keys to delete.
    pub deletes: bool,
}

/// Why a file could not become a pipeline.
#[derive(Debug)]
pub struct ConfigErrors {
    pub file: String,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Warnings would bury the errors; they are shown once the file is valid.
        let errors: Vec<Diagnostic> =
            self.diagnostics.iter().filter(|d| d.severity == Severity::Error).cloned().collect();
        f.write_str(diagnostic::render(&self.file, &self.source, &errors).trim_end())
    }
}

impl std::error::Error for ConfigErrors {}

/// A local path made absolute (and `file://` dropped) so two spellings of
/// one file compare equal; other URLs as written.
fn target_path(p: &str) -> String {
    let local = p.strip_prefix("file://").unwrap_or(p);
    if local.contains("://") {
        return local.to_string();
    }
    std::path::absolute(local).map(|a| a.display().to_string()).unwrap_or_else(|_| local.to_string())
}

/// Reads and validates a pipeline file, looking variables up in the process
/// environment.
pub fn load(path: &Path) -> Result<Pipeline, ConfigErrors> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        source: String::new(),
        diagnostics: vec![Diagnostic::error(format!("cannot read the pipeline file: {e}"), None)],
    })?;
    load_str(path, &source, &|name| std::env::var(name).ok())
}

/// Validates pipeline text; `lookup` resolves `${VAR}`.
pub fn load_str(path: &Path, source: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Pipeline, ConfigErrors> {
    let mut checker = Checker { diags: Vec::new(), lookup, uninterpolated: Vec::new() };
    let result = checker.check(path, source);
    let errors = checker.diags.iter().any(|d| d.severity == Severity::Error);
    match result {
        Some(mut p) if !errors => {
            derive::hubspot_enumerations(&mut p.components);
            register_credentials(&p.components);
            register_alert_credentials(&p.alerts);
            Ok(Pipeline { warnings: checker.diags, ..p })
        }
        _ => Err(ConfigErrors {
            file: path.display().to_string(),
            source: source.to_string(),
            diagnostics: checker.diags,
        }),
    }
}

struct Checker<'a> {
    diags: Vec<Diagnostic>,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// `section.id` of components with a variable that did not expand: their
    /// options are not worth building (the error is already reported).
    uninterpolated: Vec<String>,
}

/// A component as read, before its inputs are resolved.
struct Raw<'n> {
    id: &'n Key,
    role: Role,
    kind: Option<&'static KindSpec>,
    /// Input references as written, and whether each came from `deletes`.
    inputs: Vec<(String, Range<usize>, bool)>,
    node: &'n Node,
}

impl Checker<'_> {
    fn err(&mut self, message: impl Into<String>, span: Range<usize>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(message, Some(span)));
        self.diags.last_mut().expect("just pushed")
    }

    fn check(&mut self, path: &Path, source: &str) -> Option<Pipeline> {
        let root = match value::parse(source) {
            Ok(r) => r,
            Err((msg, span)) => {
                self.diags.push(Diagnostic::error(format!("invalid TOML: {msg}"), span));
                return None;
            }
        };
        let raw_root = root.clone();
        let mut root = root;
        self.interpolate(&mut root, &mut Vec::new());
        let secrets = self.secret_backends(&root);
        self.secret_references(&root, &secrets);
        let alerts = self.alerts(&root);
        let table = root.value.as_table().unwrap_or(&[]);
        for (k, _) in table {
            if !TOP_LEVEL.contains(&k.name.as_str()) {
                let d = self.err(format!("unknown section `{}`", k.name), k.span.clone());
                d.help = Some(match diagnostic::closest(&k.name, TOP_LEVEL.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? sections are: {}", TOP_LEVEL.join(", ")),
                    None => format!("sections are: {}", TOP_LEVEL.join(", ")),
                });
            }
        }

        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into());
        let mut name = stem;
        let mut description = None;
        let mut batch_size = DEFAULT_BATCH_SIZE;
        let mut channel_capacity = DEFAULT_CHANNEL_CAPACITY;
        let mut checkpoint_node = None;
        let mut schedule = None;
        if let Some((key, p)) = root.get("pipeline") {
            match p.value.as_table() {
                None => {
                    self.err(format!("`pipeline` must be a table, found {}", p.value.type_name()), key.span.clone());
                }
                Some(entries) => {
                    for (k, v) in entries {
                        match k.name.as_str() {
                            "name" => name = self.string(v, "pipeline.name").unwrap_or(name),
                            "description" => description = self.string(v, "pipeline.description"),
                            "batch_size" => batch_size = self.positive(v, "pipeline.batch_size").unwrap_or(batch_size),
                            "channel_capacity" => {
                                channel_capacity =
                                    self.positive(v, "pipeline.channel_capacity").unwrap_or(channel_capacity)
                            }
                            "checkpoint" => checkpoint_node = Some(v),
                            "schedule" => schedule = self.schedule(k, v),
                            other => self.unknown_option(k, other, "[pipeline]", PIPELINE_KEYS),
                        }
                    }
                }
            }
        }

        let mut checkpoint = CheckpointSettings::default_for(path, &name);
        if let Some(v) = checkpoint_node {
            self.checkpoint_settings(v, &mut checkpoint);
        }

        // Read every component.
        let mut raws: Vec<Raw<'_>> = Vec::new();
        for role in [Role::Source, Role::Transform, Role::Sink] {
            let Some((key, section)) = root.get(role.table()) else { continue };
            let Some(entries) = section.value.as_table() else {
                self.err(
                    format!("`{}` must be a table of components, found {}", role.table(), section.value.type_name()),
                    key.span.clone(),
                );
                continue;
            };
            for (id, node) in entries {
                if let Some(raw) = self.read_component(role, id, node) {
                    raws.push(raw);
                }
            }
        }
        if raws.iter().all(|r| r.role != Role::Source) {
            self.diags
                .push(Diagnostic::error("the pipeline has no source", None).with_help("add a [sources.<id>] table"));
        }
        if raws.iter().all(|r| r.role != Role::Sink) {
            self.diags.push(Diagnostic::error("the pipeline has no sink", None).with_help("add a [sinks.<id>] table"));
        }

        // Duplicate ids across sections (TOML itself refuses them within one).
        let mut first_seen: HashMap<&str, &Raw<'_>> = HashMap::new();
        for r in &raws {
            if let Some(prev) = first_seen.get(r.id.name.as_str()) {
                let (line, col) = diagnostic::line_col(source, prev.id.span.start);
                let msg =
                    format!("duplicate id `{}`: already used by [{}.{}]", r.id.name, prev.role.table(), prev.id.name);
                self.err(msg, r.id.span.clone()).help = Some(format!(
                    "first defined at line {line}, column {col}; ids must be unique across sources, transforms and sinks"
                ));
            } else {
                first_seen.insert(&r.id.name, r);
            }
        }

        // Resolve inputs.
        let by_id: BTreeMap<&str, &Raw<'_>> = raws.iter().map(|r| (r.id.name.as_str(), r)).collect();
        let mut components = Vec::new();
        for r in &raws {
            let mut inputs = Vec::new();
            for (text, span, deletes) in &r.inputs {
                let (from, port) = match text.split_once('.') {
                    Some((f, p)) => (f, Some(p)),
                    None => (text.as_str(), None),
                };
                let Some(up) = by_id.get(from) else {
                    let names: Vec<&str> = raws
                        .iter()
                        .filter(|x| x.role != Role::Sink && x.id.name != r.id.name)
                        .map(|x| x.id.name.as_str())
                        .collect();
                    let d =
                        self.err(format!("unknown input `{text}` of [{}.{}]", r.role.table(), r.id.name), span.clone());
                    d.help = Some(match diagnostic::closest(from, names.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`? components: {}", names.join(", ")),
                        None => format!("components: {}", names.join(", ")),
                    });
                    continue;
                };
                let Some(kind) = up.kind else { continue };
                if kind.ports.is_empty() {
                    // Sinks have no output, except the ports some declare
                    // (e.g. `crm.rejects`).
                    self.err(format!("`{from}` is a {} sink and has no output to read from", kind.name), span.clone());
                    continue;
                }
                let port_idx = match port {
                    None => 0,
                    Some(p) => match kind.ports.iter().position(|x| *x == p) {
                        Some(i) => i,
                        None => {
                            let d = self.err(
                                format!("`{from}` ({} {}) has no output port `{p}`", kind.name, role_word(up.role)),
                                span.clone(),
                            );
                            d.help = Some(format!("its ports: {}", kind.ports.join(", ")));
                            continue;
                        }
                    },
                };
                if kind.ports.is_empty() {
                    continue;
                }
                let input = Input {
                    from: from.to_string(),
                    port: port_idx,
                    port_name: kind.ports[port_idx],
                    deletes: *deletes,
                };
                if inputs.iter().any(|i: &Input| i.from == input.from && i.port == input.port) {
                    // Two edges from one port would deliver every row twice.
                    self.err(
                        format!("[{}.{}] reads `{from}.{}` twice", r.role.table(), r.id.name, input.port_name),
                        span.clone(),
                    )
                    .help = Some("list each input once".into());
                    continue;
                }
                inputs.push(input);
            }
            let Some(kind) = r.kind else { continue };
            let errors_before = self.diags.len();
            let (options, bs, cap) = self.options(r, kind);
            let expanded = !self.uninterpolated.contains(&format!("{}.{}", r.role.table(), r.id.name));
            if self.diags.len() == errors_before && expanded {
                // Options that deserialise can still be unusable (a regex
                // that does not compile, min above max, an unknown URL
                // scheme). Building is free of side effects, so do it now and
                // report here rather than at run time.
                let ctx = operators::BuildContext {
                    pipeline: String::new(),
                    id: r.id.name.clone(),
                    batch_size: bs.unwrap_or(batch_size),
                    raw_options: raw_table(&raw_root, r.role, &r.id.name),
                    rotation: None,
                };
                // References stand for values only a run fetches; a
                // placeholder lets the build check everything else.
                if let Err(e) = (kind.build)(&ctx, crate::secrets::placeholders(&options)) {
                    let message = e.to_string();
                    let span = quoted_value(r.node, &message).unwrap_or_else(|| r.id.span.clone());
                    self.err(format!("[{}.{}]: {message}", r.role.table(), r.id.name), span);
                }
            }
            components.push(Component {
                id: r.id.name.clone(),
                role: r.role,
                kind,
                inputs,
                options,
                unresolved: None,
                rotation: RotationSlot::default(),
                raw_options: raw_table(&raw_root, r.role, &r.id.name),
                batch_size: bs.unwrap_or(batch_size),
                channel_capacity: cap.unwrap_or(channel_capacity),
            });
        }

        self.shared_targets(&raws, &components);

        let unique_ids = first_seen.len() == raws.len();
        if let Some(cycle) = crate::graph::find_cycle(&components).filter(|_| unique_ids) {
            let span = raws.iter().find(|r| r.id.name == cycle[0]).map(|r| r.id.span.clone()).unwrap_or(0..0);
            self.err(format!("the pipeline has a cycle: {}", cycle.join(" -> ")), span).help =
                Some("data must flow one way, from sources to sinks".into());
        }

        // Warnings: outputs that go nowhere.
        for c in &components {
            for (i, port) in c.kind.ports.iter().enumerate() {
                let read = components.iter().any(|d| d.inputs.iter().any(|inp| inp.from == c.id && inp.port == i));
                if read {
                    continue;
                }
                let span = raws.iter().find(|r| r.id.name == c.id).map(|r| r.id.span.clone());
                if *port == "rejects" {
                    self.diags.push(
                        Diagnostic::warning(
                            format!(
                                "rejected rows of `{}` are not written anywhere (port `{}.rejects` has no reader)",
                                c.id, c.id
                            ),
                            span,
                        )
                        .with_help(format!("add a sink with inputs = [\"{}.rejects\"] to keep them", c.id)),
                    );
                } else if i == 0 {
                    self.diags
                        .push(Diagnostic::warning(format!("the output of `{}` is not read by anything", c.id), span));
                }
            }
        }

        Some(Pipeline {
            name,
            description,
            file: path.to_path_buf(),
            batch_size,
            channel_capacity,
            checkpoint,
            components,
            warnings: Vec::new(),
            source_text: source.to_string(),
            secrets,
            alerts,
            schedule,
        })
    }

    fn read_component<'n>(&mut self, role: Role, id: &'n Key, node: &'n Node) -> Option<Raw<'n>> {
        let where_ = format!("[{}.{}]", role.table(), id.name);
        let Some(_) = node.value.as_table() else {
            self.err(format!("{where_} must be a table, found {}", node.value.type_name()), node.span.clone());
            return None;
        };
        let kind = match node.get("kind") {
            None => {
                let names = registry::names(role);
                self.err(format!("{where_} has no `kind`"), id.span.clone()).help =
                    Some(format!("{} kinds: {}", role_word(role), names.join(", ")));
                None
            }
            Some((_, v)) => match &v.value {
                Value::String(k) => match registry::find(role, k) {
                    Some(spec) => Some(spec),
                    None => {
                        let names = registry::names(role);
                        let d = self.err(format!("unknown {} kind `{k}` in {where_}", role_word(role)), v.span.clone());
                        d.help = Some(match diagnostic::closest(k, names.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`? {} kinds: {}", role_word(role), names.join(", ")),
                            None => format!("{} kinds: {}", role_word(role), names.join(", ")),
                        });
                        None
                    }
                },
                other => {
                    self.err(
                        format!("`kind` in {where_} must be a string, found {}", other.type_name()),
                        v.span.clone(),
                    );
                    None
                }
            },
        };
        let mut inputs = Vec::new();
        match (role, node.get("inputs")) {
            (Role::Source, Some((k, _))) => {
                self.err(format!("{where_} is a source and cannot have inputs"), k.span.clone());
            }
            (Role::Source, None) => {}
            (_, None) => {
                self.err(format!("{where_} has no `inputs`"), id.span.clone()).help =
                    Some(format!("every {} reads from something: add inputs = [\"<component id>\"]", role_word(role)));
            }
            (_, Some((_, v))) => {
                if self.input_list(v, &where_, "inputs", false, &mut inputs) == 0 {
                    self.err(format!("{where_} has an empty `inputs`"), v.span.clone()).help =
                        Some(format!("every {} reads from something", role_word(role)));
                }
            }
        }
        if let Some((k, v)) = node.get("deletes") {
            if role != Role::Sink {
                self.err(format!("{where_} is not a sink: only sinks take `deletes`"), k.span.clone());
            } else if kind.is_some_and(|k| !k.deletes) {
                let able: Vec<&str> =
                    registry::KINDS.iter().filter(|k| k.role == Role::Sink && k.deletes).map(|k| k.name).collect();
                self.err(
                    format!("{where_}: a {} sink cannot apply deletions", kind.map(|k| k.name).unwrap_or_default()),
                    k.span.clone(),
                )
                .help = Some(format!("sinks that can: {}", able.join(", ")));
            } else {
                self.input_list(v, &where_, "deletes", true, &mut inputs);
            }
        }
        Some(Raw { id, role, kind, inputs, node })
    }

    /// Two sinks writing one target would interleave their output: refused
    /// (a file sink's or an outbox's `path`, a sql sink's url and table).
    fn shared_targets(&mut self, raws: &[Raw<'_>], components: &[Component]) {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for c in components.iter().filter(|c| c.role == Role::Sink) {
            let target = match c.kind.name {
                "file" => c.options.get("path").and_then(|v| v.as_str()).map(target_path),
                "hubspot" if c.options.get("token").and_then(|v| v.as_str()).is_none_or(str::is_empty) => {
                    Some(target_path(
                        c.options.get("outbox").and_then(|v| v.as_str()).unwrap_or("data/out/hubspot-outbox.ndjson"),
                    ))
                }
                "sql" => match (
                    c.options.get("url").and_then(|v| v.as_str()),
                    c.options.get("table").and_then(|v| v.as_str()),
                ) {
                    (Some(u), Some(t)) => Some(format!("table {t} at {}", operators::sinks::sql::db::redact(u))),
                    _ => None,
                },
                _ => None,
            };
            let Some(target) = target else { continue };
            if let Some(first) = seen.get(&target) {
                let span = raws.iter().find(|r| r.role == Role::Sink && r.id.name == c.id).map(|r| r.id.span.clone());
                let msg = format!("sinks `{first}` and `{}` write the same target ({target})", c.id);
                let d = self.err(msg, span.unwrap_or(0..0));
                d.help = Some("each sink needs its own output: two writers would interleave their rows".into());
            } else {
                seen.insert(target, c.id.as_str());
            }
        }
    }

    /// Reads an array of input references (`inputs` or `deletes`) into
    /// `out`; returns how many it held.
    fn input_list(
        &mut self,
        v: &Node,
        where_: &str,
        key: &str,
        deletes: bool,
        out: &mut Vec<(String, Range<usize>, bool)>,
    ) -> usize {
        let Value::Array(items) = &v.value else {
            self.err(
                format!("`{key}` of {where_} must be an array of strings, found {}", v.value.type_name()),
                v.span.clone(),
            );
            return usize::MAX;
        };
        for it in items {
            match &it.value {
                Value::String(s) => out.push((s.clone(), it.span.clone(), deletes)),
                other => {
                    self.err(
                        format!("{key} of {where_} must be strings, found {}", other.type_name()),
                        it.span.clone(),
                    );
                }
            }
        }
        items.len()
    }

    /// Checks operator options against the kind's schema, collecting every
    /// problem: after each error the offending key is set aside and the
    /// check runs again.
    fn options(&mut self, r: &Raw<'_>, kind: &'static KindSpec) -> (serde_json::Value, Option<usize>, Option<usize>) {
        let where_ = format!("[{}.{}]", r.role.table(), r.id.name);
        let mut batch_size = None;
        let mut capacity = None;
        let mut options = serde_json::Map::new();
        for (k, v) in r.node.value.as_table().unwrap_or(&[]) {
            match k.name.as_str() {
                "kind" | "inputs" | "deletes" => {}
                "batch_size" if r.role == Role::Source => {
                    batch_size = self.positive(v, &format!("{where_}.batch_size"))
                }
                "channel_capacity" if r.role != Role::Source => {
                    capacity = self.positive(v, &format!("{where_}.channel_capacity"))
                }
                _ => {
                    options.insert(k.name.clone(), v.value.to_json());
                }
            }
        }
        let mut value = serde_json::Value::Object(options);
        let mut seen = Vec::new();
        let mut removed = Vec::new();
        for _ in 0..32 {
            let Err(OptionError { path, message }) = (kind.check)(&value) else { break };
            let removable = !path.is_empty() && !message.starts_with("missing field");
            let key = (path.clone(), message.clone());
            if seen.contains(&key) {
                break;
            }
            seen.push(key);
            // A required option set aside after its own error is not also
            // "missing": that error was already reported.
            let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
            if let Some(field) = missing {
                let mut full = path.clone();
                full.push(PathSegment::Key(field.to_string()));
                if removed.contains(&full) {
                    break;
                }
            }
            self.option_error(r, kind, &path, &message);
            if !removable || !remove_path(&mut value, &path) {
                break;
            }
            removed.push(path);
        }
        (value, batch_size, capacity)
    }

    fn option_error(&mut self, r: &Raw<'_>, kind: &KindSpec, path: &[PathSegment], message: &str) {
        let where_ = format!("[{}.{}]", r.role.table(), r.id.name);
        let dotted = path
            .iter()
            .map(|s| match s {
                PathSegment::Key(k) => k.clone(),
                PathSegment::Index(i) => format!("[{i}]"),
            })
            .collect::<Vec<_>>()
            .join(".")
            .replace(".[", "[");
        let (key_span, value_span) = locate(r.node, path).unwrap_or((None, r.id.span.clone()));
        let key_or_value = key_span.clone().unwrap_or_else(|| value_span.clone());
        let expected = backticked_after(message, "expected");
        if let Some(field) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
            let mut options: Vec<&str> = expected.iter().map(String::as_str).collect();
            if path.len() <= 1 {
                options.extend(COMMON.iter().copied().filter(|c| match r.role {
                    Role::Source => *c != "inputs" && *c != "deletes" && *c != "channel_capacity",
                    Role::Transform => *c != "batch_size" && *c != "deletes",
                    Role::Sink => *c != "batch_size",
                }));
            }
            let d = self.err(
                format!("unknown option `{dotted}` in {where_} ({} {})", kind.name, role_word(r.role)),
                key_or_value,
            );
            d.help = Some(match diagnostic::closest(field, options.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? options here: {}", options.join(", ")),
                None => format!("options here: {}", options.join(", ")),
            });
        } else if let Some(variant) = message.strip_prefix("unknown variant `").and_then(|m| m.split('`').next()) {
            let d = self.err(format!("`{dotted}` in {where_} cannot be `{variant}`"), value_span);
            d.help = Some(match diagnostic::closest(variant, expected.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`? allowed: {}", expected.join(", ")),
                None => format!("allowed: {}", expected.join(", ")),
            });
        } else if message.starts_with("missing field") {
            let at = if dotted.is_empty() { String::new() } else { format!(".{dotted}") };
            self.err(format!("{where_}{at}: {message}"), if path.is_empty() { r.id.span.clone() } else { value_span });
        } else if let Some(problem) = node_at(r.node, path).and_then(|n| number_problem(&n.value, message)) {
            self.err(format!("`{dotted}` in {where_} {problem}"), value_span);
        } else {
            self.err(format!("wrong type or value for `{dotted}` in {where_}: {message}"), value_span);
        }
    }

    fn checkpoint_settings(&mut self, node: &Node, out: &mut CheckpointSettings) {
        let Some(entries) = node.value.as_table() else {
            self.err(
                format!("`pipeline.checkpoint` must be a table, found {}", node.value.type_name()),
                node.span.clone(),
            );
            return;
        };
        let mut interval_set = false;
        for (k, v) in entries {
            match k.name.as_str() {
                "interval" => {
                    interval_set = true;
                    if let Some(s) = self.string(v, "pipeline.checkpoint.interval") {
                        match parse_interval(&s) {
                            Ok(d) => out.interval = d,
                            Err(e) => {
                                self.err(format!("`pipeline.checkpoint.interval`: {e}"), v.span.clone()).help =
                                    Some(format!(
                                        "write a duration like \"5s\" or \"500ms\" ({}), or \"off\"",
                                        operators::duration::RANGE
                                    ));
                            }
                        }
                    }
                }
                "rows" => out.rows = self.positive_u64(v, "pipeline.checkpoint.rows"),
                "dir" => {
                    if let Some(s) = self.string(v, "pipeline.checkpoint.dir") {
                        out.dir = PathBuf::from(s);
                    }
                }
                "keep" => out.keep = self.positive(v, "pipeline.checkpoint.keep").unwrap_or(out.keep),
                other => self.unknown_option(k, other, "[pipeline.checkpoint]", CHECKPOINT_KEYS),
            }
        }
        // `rows` alone means by rows only.
        if out.rows.is_some() && !interval_set {
            out.interval = None;
        }
    }

    /// `[pipeline.schedule]`; each problem is reported at the option.
    fn schedule(&mut self, key: &Key, node: &Node) -> Option<server::Schedule> {
        let Some(entries) = node.value.as_table() else {
            self.err(
                format!("`pipeline.schedule` must be a table, found {}", node.value.type_name()),
                node.span.clone(),
            );
            return None;
        };
        let get = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v);
        for (k, _) in entries {
            if !SCHEDULE_KEYS.contains(&k.name.as_str()) {
                self.unknown_option(k, &k.name, "[pipeline.schedule]", SCHEDULE_KEYS);
            }
        }
        let Some(cron_node) = get("cron") else {
            self.err("`pipeline.schedule.cron` is required, e.g. cron = \"0 2 * * *\"", key.span.clone());
            return None;
        };
        let cron = self.string(cron_node, "pipeline.schedule.cron")?;
        let tz_node = get("timezone");
        let tz = match tz_node {
            Some(v) => Some(self.string(v, "pipeline.schedule.timezone")?),
            None => None,
        };
        let errors_before = self.diags.iter().filter(|d| d.severity == Severity::Error).count();
        let mut s = match server::Schedule::new(&cron, tz.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                let span = if e.option == "timezone" { tz_node.map(|n| n.span.clone()) } else { None };
                self.err(
                    format!("`pipeline.schedule.{}`: {}", e.option, e.message),
                    span.unwrap_or(cron_node.span.clone()),
                )
                .help = Some(if e.option == "timezone" {
                    "IANA names are listed by `timedatectl list-timezones` (or see /usr/share/zoneinfo)".into()
                } else {
                    "5 fields: minute hour day-of-month month day-of-week; 6 with seconds first; or @hourly, @daily, @weekly".into()
                });
                // Go on checking the other options against a stand-in.
                match server::Schedule::new(if e.option == "cron" { "0 0 * * *" } else { &cron }, None) {
                    Ok(s) => s,
                    Err(_) => return None,
                }
            }
        };
        for (name, apply) in [
            (
                "on_overlap",
                server::Schedule::set_overlap
                    as fn(&mut server::Schedule, &str) -> Result<(), server::schedule::ScheduleError>,
            ),
            ("catch_up", server::Schedule::set_catch_up),
        ] {
            if let Some(v) = get(name) {
                let Some(text) = self.string(v, &format!("pipeline.schedule.{name}")) else {
                    continue;
                };
                if let Err(e) = apply(&mut s, &text) {
                    self.err(format!("`pipeline.schedule.{}`: {}", e.option, e.message), v.span.clone());
                }
            }
        }
        let duration = |this: &mut Self, name: &str, v: &Node| -> Option<std::time::Duration> {
            let text = this.string(v, &format!("pipeline.schedule.{name}"))?;
            match operators::duration::parse_duration(&text) {
                Ok(d) => Some(d),
                Err(e) => {
                    this.err(format!("`pipeline.schedule.{name}`: {e}"), v.span.clone()).help = Some(format!(
                        "write a duration like \"2h\", \"30m\" or \"90s\" ({})",
                        operators::duration::RANGE
                    ));
                    None
                }
            }
        };
        if let Some(v) = get("timeout") {
            s.timeout = duration(self, "timeout", v);
        }
        if let Some(v) = get("jitter") {
            s.jitter = duration(self, "jitter", v);
        }
        if let Some(v) = get("retry") {
            match v.value.as_table() {
                None => {
                    self.err(
                        format!("`pipeline.schedule.retry` must be a table like {{ attempts = 3, backoff = \"2m\" }}, found {}", v.value.type_name()),
                        v.span.clone(),
                    );
                }
                Some(r) => {
                    for (k, rv) in r {
                        match k.name.as_str() {
                            "attempts" => match &rv.value {
                                Value::Integer(i) if (0..=100).contains(i) => s.retry.attempts = *i as u32,
                                _ => {
                                    self.err(
                                        "`pipeline.schedule.retry.attempts` must be an integer from 0 to 100",
                                        rv.span.clone(),
                                    );
                                }
                            },
                            "backoff" => {
                                if let Some(d) = duration(self, "retry.backoff", rv) {
                                    s.retry.backoff = d;
                                }
                            }
                            other => {
                                self.unknown_option(k, other, "[pipeline.schedule] retry", &["attempts", "backoff"]);
                            }
                        }
                    }
                }
            }
        }
        let errors = self.diags.iter().filter(|d| d.severity == Severity::Error).count();
        (errors == errors_before).then_some(s)
    }

    fn positive_u64(&mut self, v: &Node, what: &str) -> Option<u64> {
        // Any count a run could reach; TOML integers stop at i64::MAX anyway.
        const MAX: i64 = i64::MAX;
        match &v.value {
            Value::Integer(i) if *i > 0 => Some(*i as u64),
            Value::Integer(i) => {
                self.err(format!("`{what}` is out of range: must be between 1 and {MAX}, found {i}"), v.span.clone());
                None
            }
            Value::HugeInteger(s) => {
                self.err(format!("`{what}` is out of range: must be between 1 and {MAX}, found {s}"), v.span.clone());
                None
            }
            other => {
                self.err(format!("`{what}` must be a positive integer, found {}", other.type_name()), v.span.clone());
                None
            }
        }
    }

    fn string(&mut self, v: &Node, what: &str) -> Option<String> {
        match &v.value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(format!("`{what}` must be a string, found {}", other.type_name()), v.span.clone());
                None
            }
        }
    }

    fn positive(&mut self, v: &Node, what: &str) -> Option<usize> {
        // Both are allocated up front (builders, channel slots): a huge value
        // is a typo that would exhaust memory, not a setting.
        const MAX: i64 = 1 << 20;
        match &v.value {
            Value::Integer(i) if *i > 0 && *i <= MAX => Some(*i as usize),
            Value::Integer(i) => {
                self.err(format!("`{what}` is out of range: must be between 1 and {MAX}, found {i}"), v.span.clone());
                None
            }
            Value::HugeInteger(s) => {
                self.err(format!("`{what}` is out of range: must be between 1 and {MAX}, found {s}"), v.span.clone());
                None
            }
            other => {
                self.err(format!("`{what}` must be a positive integer, found {}", other.type_name()), v.span.clone());
                None
            }
        }
    }

    fn unknown_option(&mut self, k: &Key, name: &str, where_: &str, options: &[&str]) {
        let d = self.err(format!("unknown option `{name}` in {where_}"), k.span.clone());
        d.help = Some(match diagnostic::closest(name, options.iter().copied()) {
            Some(s) => format!("did you mean `{s}`? options here: {}", options.join(", ")),
            None => format!("options here: {}", options.join(", ")),
        });
    }

    /// `[secrets.<name>]` tables, each checked as the backend it declares.
    fn secret_backends(&mut self, root: &Node) -> BTreeMap<String, secrets::BackendSpec> {
        self.named_tables(root, "secrets", "backends", secrets::backend::KINDS, |v| secrets::BackendSpec::from_json(v))
    }

    /// `[alerts.<name>]` tables, each checked as the receiver it declares
    /// (references stand in as placeholders until a run resolves them).
    fn alerts(&mut self, root: &Node) -> BTreeMap<String, serde_json::Value> {
        self.named_tables(root, "alerts", "receivers", alerts::KINDS, |v| {
            alerts::AlertSpec::from_json(&alert_placeholders(v)).map(|_| v.clone())
        })
    }

    /// A section of named tables (`[<section>.<name>]`), each parsed by
    /// `parse`; a problem is reported at the option it names, else at the
    /// table's name.
    fn named_tables<T>(
        &mut self,
        root: &Node,
        section: &str,
        what: &str,
        kinds: &[&str],
        parse: impl Fn(&serde_json::Value) -> Result<T, String>,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        let Some((key, table)) = root.get(section) else { return out };
        let Some(entries) = table.value.as_table() else {
            self.err(
                format!("`{section}` must be a table of {what}, found {}", table.value.type_name()),
                key.span.clone(),
            );
            return out;
        };
        for (name, node) in entries {
            if !name.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                self.err(
                    format!("the name `{}` in [{section}] may hold only letters, digits, `_` and `-`", name.name),
                    name.span.clone(),
                );
                continue;
            }
            match parse(&node.value.to_json()) {
                Ok(v) => {
                    out.insert(name.name.clone(), v);
                }
                Err(message) => {
                    let span = quoted_value(node, &message)
                        .or_else(|| {
                            backticked_after(&message, "field")
                                .first()
                                .and_then(|f| node.get(f).map(|(k, _)| k.span.clone()))
                        })
                        .unwrap_or_else(|| name.span.clone());
                    self.err(format!("[{section}.{}]: {message}", name.name), span).help =
                        Some(format!("kinds: {}", kinds.join(", ")));
                }
            }
        }
        out
    }

    /// Every `SECRET[backend.key]` in a component names a declared backend
    /// and is well formed; none appears where nothing would resolve it.
    fn secret_references(&mut self, root: &Node, declared: &BTreeMap<String, secrets::BackendSpec>) {
        let mut strings = Vec::new();
        collect_strings(root, &mut Vec::new(), &mut strings);
        for (path, node) in strings {
            let Value::String(text) = &node.value else { continue };
            if !text.contains("SECRET[") {
                continue;
            }
            let section = path.first().map(String::as_str).unwrap_or("");
            if !matches!(section, "sources" | "transforms" | "sinks" | "alerts") {
                self.err(
                    format!("secret references are resolved only in component options, not in `{}`", path.join(".")),
                    node.span.clone(),
                );
                continue;
            }
            match secrets::reference::scan(text) {
                Err(message) => {
                    self.err(format!("{message} (in {})", path.join(".")), node.span.clone());
                }
                Ok(refs) => {
                    for (_, r) in refs {
                        if declared.contains_key(&r.backend) {
                            continue;
                        }
                        let names: Vec<&str> = declared.keys().map(String::as_str).collect();
                        let d = self.err(
                            format!("{r} names the secret backend `{}`, which is not declared", r.backend),
                            node.span.clone(),
                        );
                        d.help =
                            Some(match (diagnostic::closest(&r.backend, names.iter().copied()), names.is_empty()) {
                                (_, true) => format!(
                                    "declare it: [secrets.{}] with kind = one of {}",
                                    r.backend,
                                    secrets::backend::KINDS.join(", ")
                                ),
                                (Some(s), _) => format!("did you mean `{s}`? declared: {}", names.join(", ")),
                                (None, _) => format!("declared: {}", names.join(", ")),
                            });
                    }
                }
            }
        }
    }

    /// Expands `${VAR}` in every string value, in place.
    fn interpolate(&mut self, node: &mut Node, path: &mut Vec<String>) {
        match &mut node.value {
            Value::String(s) => match interpolate::interpolate(s, self.lookup) {
                Ok(v) => *s = v,
                Err(e) => {
                    if path.len() >= 2 {
                        self.uninterpolated.push(format!("{}.{}", path[0], path[1]));
                    }
                    let at = if path.is_empty() { String::new() } else { format!(" (in {})", path.join(".")) };
                    self.err(format!("{e}{at}"), node.span.clone()).help = match &e {
                        interpolate::InterpolateError::Unset { var } => {
                            Some(format!("export {var}=… or write ${{{var}:-default}} to give a default"))
                        }
                        _ => None,
                    };
                }
            },
            Value::Array(items) => {
                for (i, it) in items.iter_mut().enumerate() {
                    path.push(format!("[{i}]"));
                    self.interpolate(it, path);
                    path.pop();
                }
            }
            Value::Table(entries) => {
                for (k, v) in entries.iter_mut() {
                    path.push(k.name.clone());
                    self.interpolate(v, path);
                    path.pop();
                }
            }
            _ => {}
        }
    }
}

/// Every string value under `node`, with its key path.
fn collect_strings<'n>(node: &'n Node, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'n Node)>) {
    match &node.value {
        Value::String(_) => out.push((path.clone(), node)),
        Value::Array(items) => {
            for (i, it) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                collect_strings(it, path, out);
                path.pop();
            }
        }
        Value::Table(entries) => {
            for (k, v) in entries {
                path.push(k.name.clone());
                collect_strings(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Registers for redaction what a pipeline holds in credential positions:
/// options named like credentials (`token`, `password`, `api_key`) and the
/// password of any URL, whether written literally or from `${VAR}`.
/// References are registered when they resolve.
fn register_credentials(components: &[Component]) {
    fn walk(key: &str, v: &serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                if s.contains("SECRET[") {
                    return;
                }
                if secrets::redact::is_credential_name(key) {
                    secrets::redact::register(s);
                }
                secrets::redact::register_url_password(s);
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(key, i)),
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| walk(k, v)),
            _ => {}
        }
    }
    for c in components {
        walk("", &c.options);
    }
}

/// An `[alerts.x]` table with its references replaced for validation: a
/// whole URL (`webhook_url = "SECRET[...]"`) by a URL, a whole address
/// (`from`, `to`) by an address, anything else by the usual placeholder, so
/// that a receiver whose URL is a secret validates.
fn alert_placeholders(table: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    let stand_in = |key: &str, v: &J| -> J {
        match v {
            J::String(s)
                if s.trim_start().starts_with("SECRET[")
                    && s.trim_end().ends_with(']')
                    && s.matches("SECRET[").count() == 1 =>
            {
                if key.ends_with("url") {
                    J::String("https://secret-placeholder.invalid/".into())
                } else if key == "from" || key == "to" {
                    J::String("secret-placeholder@example.invalid".into())
                } else {
                    crate::secrets::placeholders(v)
                }
            }
            other => crate::secrets::placeholders(other),
        }
    };
    match table {
        J::Object(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        J::Array(items) => J::Array(items.iter().map(|i| stand_in(k, i)).collect()),
                        other => stand_in(k, other),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => crate::secrets::placeholders(other),
    }
}

/// A receiver's credentials (a routing key, a Slack webhook URL) as written
/// or from `${VAR}`; references are registered when they resolve.
fn register_alert_credentials(alerts: &BTreeMap<String, serde_json::Value>) {
    for table in alerts.values() {
        if let Ok(spec) = alerts::AlertSpec::from_json(table) {
            spec.credentials().into_iter().filter(|c| !c.contains("SECRET[")).for_each(secrets::redact::register);
        }
    }
}

/// `[<role>.<id>]` as written in the file (before `${VAR}` expansion).
fn raw_table(root: &Node, role: Role, id: &str) -> serde_json::Value {
    root.get(role.table()).and_then(|(_, t)| t.get(id)).map(|(_, n)| n.value.to_json()).unwrap_or_default()
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Source => "source",
        Role::Transform => "transform",
        Role::Sink => "sink",
    }
}

/// The span of the value at `path` under `node`: the key's span when the
/// last segment names a key that exists (an unknown option), else the value.
fn locate(node: &Node, path: &[PathSegment]) -> Option<(Option<Range<usize>>, Range<usize>)> {
    let mut cur = node;
    let mut last_key: Option<&Key> = None;
    for seg in path {
        match (seg, &cur.value) {
            (PathSegment::Key(k), Value::Table(entries)) => {
                let (key, next) = entries.iter().find(|(kk, _)| &kk.name == k).map(|(a, b)| (a, b))?;
                last_key = Some(key);
                cur = next;
            }
            (PathSegment::Index(i), Value::Array(items)) => {
                cur = items.get(*i)?;
                last_key = None;
            }
            _ => return Some((None, cur.span.clone())),
        }
    }
    Some((last_key.map(|k| k.span.clone()), cur.span.clone()))
}

/// Where an error found while building a component points: the one
/// option it names in backticks (its key), else the one string value it
/// quotes. `None` when nothing, or more than one, matches.
fn quoted_value(node: &Node, message: &str) -> Option<Range<usize>> {
    fn walk<'n>(node: &'n Node, keys: &mut Vec<&'n Key>, strings: &mut Vec<&'n Node>) {
        match &node.value {
            Value::String(_) => strings.push(node),
            Value::Array(items) => items.iter().for_each(|n| walk(n, keys, strings)),
            Value::Table(entries) => entries.iter().for_each(|(k, n)| {
                keys.push(k);
                walk(n, keys, strings)
            }),
            _ => {}
        }
    }
    fn one<T>(mut it: impl Iterator<Item = T>) -> Option<T> {
        match (it.next(), it.next()) {
            (Some(x), None) => Some(x),
            _ => None,
        }
    }
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).filter(|q| !q.is_empty()).collect();
    let (mut keys, mut strings) = (Vec::new(), Vec::new());
    walk(node, &mut keys, &mut strings);
    let key = one(keys.into_iter().filter(|k| k.name != "kind" && quoted.contains(&k.name.as_str())));
    let value = || one(strings.iter().filter(|n| matches!(&n.value, Value::String(s) if quoted.contains(&s.as_str()))));
    key.map(|k| k.span.clone()).or_else(|| value().map(|n| n.span.clone()))
}

/// The node at `path` under `node`, if it is there.
fn node_at<'n>(node: &'n Node, path: &[PathSegment]) -> Option<&'n Node> {
    let mut cur = node;
    for seg in path {
        cur = match (seg, &cur.value) {
            (PathSegment::Key(k), Value::Table(entries)) => &entries.iter().find(|(kk, _)| &kk.name == k)?.1,
            (PathSegment::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The range of an integer type as serde names it ("expected u32").
fn integer_range(ty: &str) -> Option<(i128, i128)> {
    Some(match ty {
        "u8" => (0, u8::MAX.into()),
        "u16" => (0, u16::MAX.into()),
        "u32" => (0, u32::MAX.into()),
        "u64" => (0, u64::MAX.into()),
        "usize" => (0, usize::MAX as i128),
        "i8" => (i8::MIN.into(), i8::MAX.into()),
        "i16" => (i16::MIN.into(), i16::MAX.into()),
        "i32" => (i32::MIN.into(), i32::MAX.into()),
        "i64" => (i64::MIN.into(), i64::MAX.into()),
        "isize" => (isize::MIN as i128, isize::MAX as i128),
        _ => return None,
    })
}

/// What is wrong with a number serde refused, said in the user's terms:
/// serde sees a huge integer as a float (JSON has no bigger integers), a
/// negative one as "invalid value", and NaN as a string (see
/// `Value::to_json`). `None` when the problem is not about a number.
fn number_problem(v: &Value, message: &str) -> Option<String> {
    let expected = message.rsplit_once("expected ")?.1.trim();
    let found = match v {
        Value::Integer(i) => i.to_string(),
        Value::HugeInteger(s) => s.clone(),
        // As TOML writes it (Rust would say "NaN").
        Value::Float(f) if f.is_nan() => "nan".to_string(),
        Value::Float(f) if !f.is_finite() => f.to_string(),
        _ => return None,
    };
    if let Some((lo, hi)) = integer_range(expected) {
        if matches!(v, Value::Integer(i) if (lo..=hi).contains(&i128::from(*i))) {
            return None;
        }
        return Some(match v {
            Value::Float(_) => format!("must be an integer between {lo} and {hi}, found {found}"),
            _ => format!("is out of range: must be between {lo} and {hi}, found {found}"),
        });
    }
    match (v, expected) {
        (Value::Float(_), "f64" | "f32") => Some(format!("must be a finite number, found {found}")),
        (Value::Float(_), _) => Some(format!("must be {expected}, found {found}")),
        _ => None,
    }
}

/// Names in backticks after `word` in a serde message: the alternatives of
/// "unknown field `x`, expected one of `a`, `b`".
fn backticked_after(message: &str, word: &str) -> Vec<String> {
    let Some(i) = message.find(word) else { return Vec::new() };
    message[i..].split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn remove_path(v: &mut serde_json::Value, path: &[PathSegment]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut cur = v;
    for seg in parents {
        cur = match (seg, cur) {
            (PathSegment::Key(k), serde_json::Value::Object(m)) => match m.get_mut(k) {
                Some(n) => n,
                None => return false,
            },
            (PathSegment::Index(i), serde_json::Value::Array(a)) => match a.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (PathSegment::Key(k), serde_json::Value::Object(m)) => m.remove(k).is_some(),
        (PathSegment::Index(i), serde_json::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of the first error `text` gets.
    fn first_error(text: &str) -> String {
        let e = load_str(Path::new("p.toml"), text, &|_| None).expect_err("invalid");
        e.diagnostics.iter().find(|d| d.severity == Severity::Error).expect("an error").message.clone()
    }

    const BASE: &str =
        "[sources.a]\nkind = \"file\"\npath = \"in.csv\"\n[sinks.b]\nkind = \"blackhole\"\ninputs = [\"a\"]\n";

    #[test]
    fn alert_urls_and_addresses_may_be_secrets() {
        let text = format!(
            "[secrets.m]\nkind = \"directory\"\npath = \"/run/secrets\"\n\
             [alerts.slack]\nkind = \"slack\"\nwebhook_url = \"SECRET[m.slack]\"\n\
             [alerts.mail]\nkind = \"email\"\nsmtp_host = \"smtp.example.com\"\nfrom = \"SECRET[m.from]\"\nto = [\"SECRET[m.to]\"]\n{BASE}"
        );
        let p = load_str(Path::new("p.toml"), &text, &|_| None).expect("valid");
        assert_eq!(p.alerts["slack"]["webhook_url"], "SECRET[m.slack]", "kept unresolved for the run");
        // A URL that is not one is still refused.
        let m = first_error(&format!("[alerts.hook]\nkind = \"webhook\"\nurl = \"ftp://x\"\n{BASE}"));
        assert!(m.contains("not an http:// or https:// URL"), "{m}");
    }

    #[test]
    fn out_of_range_numbers_say_so_with_the_range() {
        let m = first_error(&format!("[pipeline]\nbatch_size = 99999999999999999999\n{BASE}"));
        assert_eq!(
            m,
            "`pipeline.batch_size` is out of range: must be between 1 and 1048576, found 99999999999999999999"
        );
        let m = first_error(&format!("[pipeline.checkpoint]\nrows = -3\n{BASE}"));
        assert!(m.contains("is out of range: must be between 1 and 9223372036854775807, found -3"), "{m}");
        // Operator options: serde saw a float (too big) or an invalid value (negative).
        let m = first_error(&BASE.replace("path = \"in.csv\"", "path = \"in.csv\"\ninfer_rows = 99999999999999999999"));
        assert!(
            m.contains("`infer_rows` in [sources.a] is out of range: must be between 0 and 18446744073709551615"),
            "{m}"
        );
        let m = first_error(&format!("{BASE}delay_ms = -1\n"));
        assert!(
            m.contains("`delay_ms` in [sinks.b] is out of range: must be between 0 and 18446744073709551615, found -1"),
            "{m}"
        );
        let m = first_error(&format!("{BASE}delay_ms = nan\n"));
        assert!(m.contains("must be an integer between 0 and 18446744073709551615, found nan"), "{m}");
    }

    #[test]
    fn absurd_checkpoint_intervals_are_errors_not_panics() {
        for v in ["99999999999999999999s", "-1s", "nan", "", "1e400s", "25h"] {
            let m = first_error(&format!("[pipeline.checkpoint]\ninterval = \"{v}\"\n{BASE}"));
            assert!(m.starts_with("`pipeline.checkpoint.interval`: "), "{v}: {m}");
        }
        let m = first_error(&format!("[pipeline.checkpoint]\ninterval = \"99999999999999999999s\"\n{BASE}"));
        assert!(m.contains("out of range") && m.contains("between 1ms and 24h"), "{m}");
    }
}
