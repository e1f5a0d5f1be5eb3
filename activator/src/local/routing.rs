//! Routes follow the newest *ready* revision, as Knative's route reconciler does.
//!
//! A `latestRevision: true` traffic target means the Configuration's `latestReadyRevisionName`
//! (pkg/reconciler/route/traffic/traffic.go): a new revision takes no traffic until it is ready,
//! so one that never becomes ready costs nothing and the previous one keeps serving (and keeps
//! its `min-scale`, being reachable) until then (test/e2e/minscale_readiness_test.go).
//!
//! The [`Router`] recomputes every Service's hosts each time a revision first becomes ready
//! (its loop reports it; ready stays latched, as `latestReadyRevisionName` does not move back
//! when a ready revision later loses pods), sets them in the activator's catalog, and tells
//! each revision loop its routes and whether it is reachable. Reachable: routed (a percent or a
//! tag), or newer than the latest ready revision of a Service that follows the latest (Knative's
//! `pending` routing state: it will take the traffic once ready, so its `min-scale` holds).
//! Before any revision of a Service is ready, `latestRevision` targets the latest created one,
//! whose requests wait in the activator for its first pod.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::manifest::{ServicePlan, Target};
use crate::catalog::{Catalog, RevisionKey};
use crate::split::TrafficSplit;

/// What one revision's loop learns from the router.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    /// Hosts routed to the revision, with the share of each (for the status).
    pub routes: Vec<(String, u32)>,
    /// Whether any route reaches it, now or once it is ready (else it may scale to zero
    /// whatever its `min-scale`, as in Knative).
    pub reachable: bool,
}

/// The targets of `svc` with every `latestRevision` entry aimed at `latest_ready` (the latest
/// created when none is ready yet).
pub fn resolve(svc: &ServicePlan, latest_ready: Option<&str>) -> Vec<Target> {
    let latest_created = svc.revisions.last().map(|r| r.name.as_str());
    svc.traffic
        .iter()
        .map(|t| match (t.latest, latest_ready.or(latest_created)) {
            (true, Some(r)) => Target {
                revision: r.to_owned(),
                ..t.clone()
            },
            _ => t.clone(),
        })
        .collect()
}

/// The newest revision of `svc` (declaration order, rollbacks moved last) that is ready.
pub fn latest_ready<'a>(svc: &'a ServicePlan, ready: &BTreeSet<String>) -> Option<&'a str> {
    svc.revisions
        .iter()
        .rev()
        .map(|r| r.name.as_str())
        .find(|r| ready.contains(*r))
}

/// Revisions of `svc` that are reachable given the resolved `targets` (see the module docs).
pub fn reachable(
    svc: &ServicePlan,
    targets: &[Target],
    latest_ready: Option<&str>,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = targets
        .iter()
        .filter(|t| t.percent > 0 || t.tag.is_some())
        .map(|t| t.revision.clone())
        .collect();
    if targets.iter().any(|t| t.latest) {
        let from = latest_ready
            .and_then(|r| svc.revisions.iter().position(|x| x.name == r))
            .map_or(0, |i| i + 1);
        out.extend(svc.revisions[from..].iter().map(|r| r.name.clone()));
    }
    out
}

/// Host → weighted revisions for one Service: the main host gets every target with a percent,
/// each tag its own host.
pub fn routes(
    svc: &ServicePlan,
    targets: &[Target],
    domain: &str,
) -> Vec<(String, Vec<(String, u32)>)> {
    let main = format!("{}.{}.{domain}", svc.name, svc.namespace);
    let mut split: Vec<(String, u32)> = Vec::new();
    for t in targets.iter().filter(|t| t.percent > 0) {
        match split.iter_mut().find(|(r, _)| *r == t.revision) {
            Some((_, p)) => *p += t.percent,
            None => split.push((t.revision.clone(), t.percent)),
        }
    }
    let mut out = vec![(main, split)];
    for t in targets {
        if let Some(tag) = &t.tag {
            out.push((
                format!("{tag}-{}.{}.{domain}", svc.name, svc.namespace),
                vec![(t.revision.clone(), 100)],
            ));
        }
    }
    out
}

/// Keeps the catalog's hosts and the revision loops' [`Routing`] in step with readiness.
#[derive(Debug)]
pub struct Router {
    services: Vec<ServicePlan>,
    domain: String,
    listen: String,
    catalog: Catalog,
    ready: BTreeSet<(String, String)>,
    loops: BTreeMap<(String, String), watch::Sender<Routing>>,
    shown: BTreeMap<String, String>,
}

impl Router {
    /// Applies the initial routes (nothing ready yet) and returns each revision's routing
    /// channel, keyed `(namespace, revision)`.
    pub fn new(
        services: Vec<ServicePlan>,
        domain: String,
        listen: String,
        catalog: Catalog,
    ) -> (Self, BTreeMap<(String, String), watch::Receiver<Routing>>) {
        let mut loops = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for svc in &services {
            for r in &svc.revisions {
                let (tx, rx) = watch::channel(Routing::default());
                let key = (svc.namespace.clone(), r.name.clone());
                loops.insert(key.clone(), tx);
                receivers.insert(key, rx);
            }
        }
        let mut router = Self {
            services,
            domain,
            listen,
            catalog,
            ready: BTreeSet::new(),
            loops,
            shown: BTreeMap::new(),
        };
        router.apply();
        (router, receivers)
    }

    /// Recomputes and publishes every Service's routes.
    /// Applies the Services again (a live reload): a Service's revisions are those it had,
    /// then the ones its document declares now (newest last, so `latestRevision` still means
    /// the newest *ready* one and the previous revision keeps the traffic until the new one is
    /// ready); Services left out of the files keep their routes (`kubectl apply` without
    /// `--prune`). Returns the routing of each revision not seen before, for its loop.
    pub fn update(
        &mut self,
        services: Vec<ServicePlan>,
    ) -> BTreeMap<(String, String), watch::Receiver<Routing>> {
        let mut fresh = BTreeMap::new();
        for svc in services {
            for r in &svc.revisions {
                let key = (svc.namespace.clone(), r.name.clone());
                if !self.loops.contains_key(&key) {
                    let (tx, rx) = watch::channel(Routing::default());
                    self.loops.insert(key.clone(), tx);
                    fresh.insert(key, rx);
                }
            }
            match self
                .services
                .iter_mut()
                .find(|s| s.namespace == svc.namespace && s.name == svc.name)
            {
                Some(cur) => {
                    let mut revisions: Vec<_> = cur
                        .revisions
                        .drain(..)
                        .filter(|old| !svc.revisions.iter().any(|r| r.name == old.name))
                        .collect();
                    revisions.extend(svc.revisions);
                    *cur = ServicePlan { revisions, ..svc };
                }
                None => self.services.push(svc),
            }
        }
        self.apply();
        fresh
    }

    /// Records that a revision is ready (latched) and moves the routes that follow it.
    pub fn mark_ready(&mut self, key: &RevisionKey) {
        if self.ready.insert((key.namespace.clone(), key.name.clone())) {
            self.apply();
        }
    }

    fn apply(&mut self) {
        let mut hosts = BTreeSet::new();
        for svc in &self.services {
            let ready: BTreeSet<String> = self
                .ready
                .iter()
                .filter(|(ns, _)| *ns == svc.namespace)
                .map(|(_, r)| r.clone())
                .collect();
            let newest_ready = latest_ready(svc, &ready);
            let targets = resolve(svc, newest_ready);
            let reach = reachable(svc, &targets, newest_ready);
            let mut per_rev: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
            for (host, split) in routes(svc, &targets, &self.domain) {
                for (r, p) in &split {
                    per_rev
                        .entry(r.clone())
                        .or_default()
                        .push((host.clone(), *p));
                }
                let shown: Vec<String> = split.iter().map(|(r, p)| format!("{r} {p}%")).collect();
                let shown = shown.join(", ");
                hosts.insert(host.clone());
                if self.shown.get(&host) != Some(&shown) {
                    tracing::info!(route = %format!("http://{}/ (Host: {host})", self.listen), to = %shown, "serving");
                    self.shown.insert(host.clone(), shown);
                }
                let keyed: Vec<(RevisionKey, u32)> = split
                    .iter()
                    .map(|(r, p)| (RevisionKey::new(&svc.namespace, r), *p))
                    .collect();
                match keyed.as_slice() {
                    [(k, _)] => self.catalog.set_route(&host, k.clone()),
                    _ => match TrafficSplit::new(keyed) {
                        Ok(s) => self.catalog.set_split(&host, s),
                        Err(e) => tracing::warn!(host = %host, error = %e, "no route"),
                    },
                }
            }
            for r in &svc.revisions {
                if let Some(tx) = self.loops.get(&(svc.namespace.clone(), r.name.clone())) {
                    let next = Routing {
                        routes: per_rev.remove(&r.name).unwrap_or_default(),
                        reachable: reach.contains(&r.name),
                    };
                    tx.send_if_modified(|cur| {
                        let changed = *cur != next;
                        *cur = next;
                        changed
                    });
                }
            }
        }
        // A tag taken out of the YAML: its host goes.
        let gone: Vec<String> = self
            .shown
            .keys()
            .filter(|h| !hosts.contains(*h))
            .cloned()
            .collect();
        for h in gone {
            self.catalog.remove_route(&h);
            self.shown.remove(&h);
            tracing::info!(host = %h, "route removed");
        }
    }
}

/// Marks revisions ready as their loops report it, until `stop` (the router is shared with the
/// reload, which adds Services and revisions; the lock is never held across an await).
pub async fn follow_ready(
    router: std::sync::Arc<std::sync::Mutex<Router>>,
    mut ready: mpsc::UnboundedReceiver<RevisionKey>,
    stop: CancellationToken,
) {
    loop {
        let key = tokio::select! {
            () = stop.cancelled() => return,
            k = ready.recv() => match k {
                Some(k) => k,
                None => return,
            },
        };
        router
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .mark_ready(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::manifest::parse;

    fn t(revision: &str, percent: u32, tag: Option<&str>, latest: bool) -> Target {
        Target {
            revision: revision.into(),
            percent,
            tag: tag.map(Into::into),
            latest,
        }
    }

    fn two_revisions(traffic: &str) -> ServicePlan {
        let doc = |target: &str, traffic: &str| {
            format!(
                "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: hello}}\nspec:\n{traffic}  template:\n    spec:\n      containers: [{{command: [helloworld], env: [{{name: TARGET, value: {target}}}]}}]\n"
            )
        };
        let text = format!("{}---\n{}", doc("blue", ""), doc("green", traffic));
        let (mut svcs, _) = parse(&[("a.yaml", &text)], &autoscaler::Config::default()).unwrap();
        svcs.remove(0)
    }

    #[test]
    fn main_host_splits_by_percent_and_tags_get_their_own_host() {
        let svc = two_revisions("");
        let targets = vec![
            t("hello-1", 50, None, false),
            t("hello-2", 30, Some("old"), false),
            t("hello-1", 20, Some("current"), false),
            t("hello-3", 0, Some("next"), false),
        ];
        assert_eq!(
            routes(&svc, &targets, "example.com"),
            vec![
                (
                    "hello.default.example.com".to_owned(),
                    vec![("hello-1".to_owned(), 70), ("hello-2".to_owned(), 30)]
                ),
                (
                    "old-hello.default.example.com".to_owned(),
                    vec![("hello-2".to_owned(), 100)]
                ),
                (
                    "current-hello.default.example.com".to_owned(),
                    vec![("hello-1".to_owned(), 100)]
                ),
                (
                    "next-hello.default.example.com".to_owned(),
                    vec![("hello-3".to_owned(), 100)]
                ),
            ]
        );
    }

    /// Issue 16 item 6: until the new revision is ready, the latest-revision route stays on
    /// the previous ready one, which stays reachable (its min-scale holds), and the new one is
    /// reachable too (pending); once the new one is ready, the old one is unreachable.
    #[test]
    fn latest_revision_means_the_newest_ready_one() {
        let svc = two_revisions("");
        let none = BTreeSet::new();
        // Nothing ready: the latest created, where requests wait for its first pod.
        let targets = resolve(&svc, latest_ready(&svc, &none));
        assert_eq!(targets[0].revision, "hello-00002");
        assert_eq!(
            reachable(&svc, &targets, None),
            BTreeSet::from(["hello-00001".to_owned(), "hello-00002".to_owned()])
        );
        // The old one ready, the new one not (yet, or ever): traffic stays on the old.
        let old = BTreeSet::from(["hello-00001".to_owned()]);
        let lr = latest_ready(&svc, &old);
        assert_eq!(lr, Some("hello-00001"));
        let targets = resolve(&svc, lr);
        assert_eq!(targets[0].revision, "hello-00001");
        assert_eq!(targets[0].percent, 100);
        assert_eq!(
            reachable(&svc, &targets, lr),
            BTreeSet::from(["hello-00001".to_owned(), "hello-00002".to_owned()])
        );
        // Both ready: the new one takes the traffic, the old one may scale to zero.
        let both = BTreeSet::from(["hello-00001".to_owned(), "hello-00002".to_owned()]);
        let lr = latest_ready(&svc, &both);
        let targets = resolve(&svc, lr);
        assert_eq!(targets[0].revision, "hello-00002");
        assert_eq!(
            reachable(&svc, &targets, lr),
            BTreeSet::from(["hello-00002".to_owned()])
        );
    }

    /// Pinned targets do not move; a tag on `latestRevision` follows the latest ready.
    #[test]
    fn pinned_targets_stay_and_latest_tags_follow() {
        let svc = two_revisions(
            "  traffic:\n    - {revisionName: hello-00001, percent: 100}\n    - {tag: latest}\n",
        );
        let old = BTreeSet::from(["hello-00001".to_owned()]);
        let targets = resolve(&svc, latest_ready(&svc, &old));
        assert_eq!(
            targets,
            vec![
                t("hello-00001", 100, None, false),
                t("hello-00001", 0, Some("latest"), true)
            ]
        );
        let both = BTreeSet::from(["hello-00001".to_owned(), "hello-00002".to_owned()]);
        let targets = resolve(&svc, latest_ready(&svc, &both));
        assert_eq!(targets[1].revision, "hello-00002");
    }
}
