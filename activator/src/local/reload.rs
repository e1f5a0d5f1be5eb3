//! Applying the Service YAML, at start and each time a file is saved, as `kubectl apply` would.
//!
//! Each revision is known by its template (everything but its name). Applying the files again:
//! - a document whose template matches a running revision of its Service is that revision;
//! - a changed template makes the Service's next revision (`<service>-NNNNN` after the highest
//!   number so far, or the document's `spec.template.metadata.name`, which may not be reused
//!   for a different template, Knative's rule); its pods start at once;
//! - the Service's `traffic` then applies; a name in it means the revision that document is
//!   now, and `latestRevision` follows the newest *ready* revision ([`super::routing`], as
//!   Knative's route does), so requests are never held for the switch;
//! - a bad edit changes nothing and prints the `file:line: field: message` error.
//!
//! Revisions and Services no longer in the files keep running (as `kubectl apply` without
//! `--prune`), reachable by the routes they still have.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, EngineKind};
use super::manifest::{self, RevisionPlan, ServicePlan};
use super::pod::PodTemplate;
use super::routing::{Router, Routing};
use super::scaler::RevisionLoop;
use super::status::StatusMap;
use crate::Throttlers;
use crate::catalog::{Catalog, RevisionKey, RevisionSpec};

/// How often the files' modification times are checked.
const POLL: Duration = Duration::from_millis(300);

/// The activator's reports, by revision, for the revision loops.
pub type Senders =
    Arc<std::sync::Mutex<BTreeMap<(String, String), mpsc::Sender<autoscaler::Stat>>>>;

/// Everything needed to start revisions and route to them.
pub struct Runner {
    /// The files or directories given.
    pub files: Vec<PathBuf>,
    /// Route domain.
    pub domain: String,
    /// The activator's address (for the log line).
    pub listen: std::net::SocketAddr,
    /// Autoscaler defaults.
    pub cfg: autoscaler::Config,
    /// The activator's catalog.
    pub catalog: Catalog,
    /// `GET /status`.
    pub status: StatusMap,
    /// Reports to the loops.
    pub senders: Senders,
    /// The activator's throttlers once it runs.
    pub throttlers: watch::Receiver<Option<Throttlers>>,
    /// The `queue-proxy` binary.
    pub queue_proxy: PathBuf,
    /// `--engine`.
    pub engine_choice: Option<EngineKind>,
    /// `--engine-runtime`.
    pub engine_runtime: Option<String>,
    /// The engine, once a container with only an image needs it.
    pub engine: Option<Arc<Engine>>,
    /// Time zero of the autoscaler clock.
    pub start: Instant,
    /// Stops the loops.
    pub stop: CancellationToken,
    /// The revision loops.
    pub loops: tokio::task::JoinSet<()>,
    /// Per Service (`namespace/name`): its revisions (actual name, template).
    known: BTreeMap<String, Vec<(String, String)>>,
    /// Hosts → revisions, following the newest ready revision.
    router: Arc<std::sync::Mutex<Router>>,
    /// Given to each revision loop: it reports here when its revision is first ready.
    ready: mpsc::UnboundedSender<RevisionKey>,
}

/// Why an apply was refused (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The YAML is invalid.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// A container needs an engine that is not there.
    #[error(transparent)]
    Engine(#[from] super::engine::EngineError),
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// A revision's template as text: equal text, same revision.
fn fingerprint(r: &RevisionPlan) -> String {
    let mut r = r.clone();
    r.name.clear();
    format!("{r:?}")
}

fn number(service: &str, name: &str) -> Option<u64> {
    name.strip_prefix(service)?.strip_prefix('-')?.parse().ok()
}

impl Runner {
    /// A runner with nothing applied yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        files: Vec<PathBuf>,
        domain: String,
        listen: std::net::SocketAddr,
        cfg: autoscaler::Config,
        catalog: Catalog,
        status: StatusMap,
        throttlers: watch::Receiver<Option<Throttlers>>,
        queue_proxy: PathBuf,
        engine_choice: Option<EngineKind>,
        engine_runtime: Option<String>,
    ) -> Self {
        let router = Arc::new(std::sync::Mutex::new(
            Router::new(
                Vec::new(),
                domain.clone(),
                listen.to_string(),
                catalog.clone(),
            )
            .0,
        ));
        let (ready, ready_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(super::routing::follow_ready(
            Arc::clone(&router),
            ready_rx,
            stop.clone(),
        ));
        Runner {
            files,
            domain,
            listen,
            cfg,
            catalog,
            status,
            senders: Arc::default(),
            throttlers,
            queue_proxy,
            engine_choice,
            engine_runtime,
            engine: None,
            start: Instant::now(),
            stop,
            loops: tokio::task::JoinSet::new(),
            known: BTreeMap::new(),
            router,
            ready,
        }
    }

    /// Reads the files and applies them. `first`: the start (new revisions are not logged as
    /// such).
    ///
    /// # Errors
    /// Invalid YAML, or no engine for an image; nothing was changed.
    pub async fn apply_files(&mut self, first: bool) -> Result<(), ApplyError> {
        let (services, warnings) = manifest::load_paths(&self.files, &self.cfg)?;
        for w in &warnings {
            tracing::warn!(at = %w.at, field = %w.field, "{}", w.message);
        }
        self.apply(services, first).await
    }

    async fn apply(&mut self, services: Vec<ServicePlan>, first: bool) -> Result<(), ApplyError> {
        // Plan everything before changing anything, so a refused apply changes nothing.
        struct Planned {
            svc: ServicePlan,
            new: Vec<RevisionPlan>,
            map: BTreeMap<String, String>,
        }
        let mut planned = Vec::new();
        for svc in services {
            let skey = format!("{}/{}", svc.namespace, svc.name);
            let mut known = self.known.get(&skey).cloned().unwrap_or_default();
            let mut new = Vec::new();
            let mut map = BTreeMap::new();
            for r in &svc.revisions {
                let fp = fingerprint(r);
                if let Some((name, _)) = known.iter().find(|(_, f)| *f == fp) {
                    map.insert(r.name.clone(), name.clone());
                    continue;
                }
                let explicit = number(&svc.name, &r.name).is_none();
                let taken = known.iter().any(|(n, _)| *n == r.name);
                let name = match (explicit, taken) {
                    (true, true) => {
                        return Err(manifest::ManifestError::Field {
                            file: self
                                .files
                                .iter()
                                .map(|f| f.display().to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                            line: 0,
                            field: "spec.template.metadata.name".into(),
                            message: format!(
                                "revision {:?} exists with a different template; give the new template a new name (Knative's rule)",
                                r.name
                            ),
                        }
                        .into());
                    }
                    (_, false) => r.name.clone(),
                    (false, true) => {
                        let next = known
                            .iter()
                            .filter_map(|(n, _)| number(&svc.name, n))
                            .max()
                            .unwrap_or(0)
                            + 1;
                        format!("{}-{next:05}", svc.name)
                    }
                };
                known.push((name.clone(), fp));
                map.insert(r.name.clone(), name.clone());
                new.push(RevisionPlan { name, ..r.clone() });
            }
            planned.push(Planned { svc, new, map });
        }
        if let Some(r) = planned
            .iter()
            .flat_map(|p| &p.new)
            .find(|r| r.program.as_os_str().is_empty())
            && self.engine.is_none()
        {
            let e = Engine::find(
                self.engine_choice,
                self.engine_runtime.clone(),
                &format!("{}/{}", r.namespace, r.name),
                r.image.as_deref().unwrap_or_default(),
            )?;
            tracing::info!(engine = %e.program.display(), runtime = ?e.runtime, "container engine");
            e.remove_leftovers().await;
            self.engine = Some(Arc::new(e));
        }
        for p in planned {
            let skey = format!("{}/{}", p.svc.namespace, p.svc.name);
            let mut svc = p.svc;
            // A `revisionName` keeps naming the revision of that name (as in Knative), or, for
            // one not running yet, the revision its document makes; `latestRevision` targets
            // are the router's (the newest ready revision).
            let known_names: BTreeSet<String> = self
                .known
                .get(&skey)
                .map(|k| k.iter().map(|(n, _)| n.clone()).collect())
                .unwrap_or_default();
            for t in &mut svc.traffic {
                let keep = !t.latest && known_names.contains(&t.revision);
                if !keep && let Some(actual) = p.map.get(&t.revision) {
                    t.revision.clone_from(actual);
                }
            }
            let known = self.known.entry(skey.clone()).or_default();
            for r in &p.new {
                known.push((r.name.clone(), fingerprint(r)));
            }
            // The Service as the router sees it: each document's revision under its actual name.
            svc.revisions = svc
                .revisions
                .iter()
                .map(|r| RevisionPlan {
                    name: p
                        .map
                        .get(&r.name)
                        .cloned()
                        .unwrap_or_else(|| r.name.clone()),
                    ..r.clone()
                })
                .collect();
            // Revisions first, then routes: a route never points at a revision the catalog
            // lacks.
            for r in &p.new {
                if !first {
                    tracing::info!(service = %skey, revision = %r.name, "new revision");
                }
                self.catalog.upsert_revision(
                    RevisionKey::new(&r.namespace, &r.name),
                    RevisionSpec {
                        container_concurrency: r.container_concurrency,
                        timeout: r.timeout,
                        response_start_timeout: r.response_start_timeout,
                        idle_timeout: r.idle_timeout,
                        protocol: r.protocol,
                        service: r.service.clone(),
                        configuration: r.service.clone(),
                        ..RevisionSpec::default()
                    },
                );
            }
            let mut routing = self
                .router
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .update(vec![svc]);
            for r in p.new {
                let rx = routing
                    .remove(&(r.namespace.clone(), r.name.clone()))
                    .unwrap_or_else(|| watch::channel(Routing::default()).1);
                self.start_revision(r, rx);
            }
        }
        Ok(())
    }

    fn start_revision(&mut self, r: RevisionPlan, routing: watch::Receiver<Routing>) {
        let cc = i32::try_from(r.container_concurrency).unwrap_or(i32::MAX);
        // Annotations were validated by the manifest; reachability is the router's (the loop
        // applies it as it changes).
        let reachable = routing.borrow().reachable;
        let settings =
            autoscaler::RevisionSettings::resolve(&self.cfg, &r.annotations, cc, reachable);
        let key = RevisionKey::new(&r.namespace, &r.name);
        let (tx, srx) = mpsc::channel(64);
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((key.namespace.clone(), key.name.clone()), tx);
        let (otx, orx) = tokio::sync::oneshot::channel();
        let mut th = self.throttlers.clone();
        tokio::spawn(async move {
            if let Ok(t) = th.wait_for(Option::is_some).await
                && let Some(t) = t.as_ref()
            {
                let _ = otx.send(Arc::clone(t));
            }
        });
        let rl = RevisionLoop {
            template: PodTemplate {
                key: key.clone(),
                service: r.service.clone(),
                program: super::resolve_program(&r.program),
                queue_proxy: self.queue_proxy.clone(),
                engine: self.engine.clone(),
                plan: r,
            },
            settings,
            routing,
            ready: self.ready.clone(),
            status: Arc::clone(&self.status),
            catalog: self.catalog.clone(),
            stats: srx,
            throttlers: Some(orx),
            start: self.start,
        };
        self.loops.spawn(rl.run(self.stop.clone()));
    }
}

/// The files' modification times (directories: their YAML files), to notice a save.
fn stamp(files: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    for f in files {
        let mut entries = vec![f.clone()];
        if f.is_dir()
            && let Ok(rd) = std::fs::read_dir(f)
        {
            entries.extend(rd.filter_map(Result::ok).map(|e| e.path()));
        }
        for p in entries {
            let m = std::fs::metadata(&p).ok();
            out.push((
                p,
                m.as_ref().and_then(|m| m.modified().ok()),
                m.map_or(0, |m| m.len()),
            ));
        }
    }
    out.sort();
    out
}

/// Applies the files again whenever one is saved, until `stop`.
pub async fn watch_files(runner: Arc<tokio::sync::Mutex<Runner>>, stop: CancellationToken) {
    let files = runner.lock().await.files.clone();
    let mut last = stamp(&files);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let now = stamp(&files);
        if now == last {
            continue;
        }
        // An editor may write in several steps: wait until the files are still.
        tokio::time::sleep(POLL).await;
        last = stamp(&files);
        let mut r = runner.lock().await;
        match r.apply_files(false).await {
            Ok(()) => tracing::info!("reloaded"),
            Err(e) => tracing::error!("reload refused, still running the previous state: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_numbers_are_read_from_generated_names_only() {
        assert_eq!(number("hello", "hello-00002"), Some(2));
        assert_eq!(number("hello", "hello-blue"), None);
        assert_eq!(number("hello", "hello2-00001"), None);
    }
}
