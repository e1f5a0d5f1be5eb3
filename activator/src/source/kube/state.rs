//! The Kubernetes source's cache: watcher events in, catalog entries out. Pure (no I/O, no
//! clock), so every event sequence — re-lists, deletions, objects arriving before their
//! revision — is unit-tested here.
//!
//! Each watched kind keeps its objects digested to the few fields the activator uses, grouped by
//! the revision they belong to. An event marks the revisions it touches; only those entries are
//! recomputed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv6Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints as K8sEndpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;

use super::revision::Revision;
use crate::catalog::{Endpoints, Protocol, RevisionEntry, RevisionKey, RevisionSpec};

/// Label carrying the revision name on Knative's private and public Services and their
/// EndpointSlices (the EndpointSlice controllers copy the Service's / Endpoints' labels).
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";

/// `namespace/name` of a watched object.
type ObjKey = (String, String);

fn obj_key(meta: &ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The revision an EndpointSlice or Service belongs to: its namespace and the
/// `serving.knative.dev/revision` label. `None` when the label is missing (ignored, as Knative).
fn labelled_revision(meta: &ObjectMeta) -> Option<RevisionKey> {
    let name = meta.labels.as_ref()?.get(REVISION_LABEL)?;
    Some(RevisionKey::new(
        meta.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

/// Knative's port name for a protocol (`http` / `http2`), on Services and endpoints alike.
fn port_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "http",
        Protocol::H2c => "http2",
    }
}

/// `ip:port`, with IPv6 addresses in brackets.
fn dest(ip: &str, port: i32) -> String {
    if ip.parse::<Ipv6Addr>().is_ok() {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

// === impl Slice ===

/// The pod addresses of one EndpointSlice or one core/v1 Endpoints object, digested: groups of
/// endpoints that share a port list (an EndpointSlice is one group, each Endpoints subset one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    groups: Vec<PortGroup>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PortGroup {
    ports: Vec<(String, i32)>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SliceEndpoint {
    address: String,
    ready: bool,
    terminating: bool,
}

impl Slice {
    /// Digests a `discovery.k8s.io/v1` EndpointSlice.
    pub fn from_k8s(s: &EndpointSlice) -> Self {
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
            .collect();
        let endpoints = s
            .endpoints
            .iter()
            .filter_map(|e| {
                // Consumers use only the first address (the API says all are fungible).
                let address = e.addresses.first()?.clone();
                let c = e.conditions.as_ref();
                Some(SliceEndpoint {
                    address,
                    // "A nil value should be interpreted as ready" (EndpointConditions docs).
                    ready: c.and_then(|c| c.ready).unwrap_or(true),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                })
            })
            .collect();
        Self {
            groups: vec![PortGroup { ports, endpoints }],
        }
    }

    /// Digests a core/v1 Endpoints object (what Knative's activator watches, and all that
    /// Knative's RBAC grants): `addresses` are ready, `notReadyAddresses` not ready; the
    /// Endpoints controller already leaves terminating pods out.
    pub fn from_endpoints(e: &K8sEndpoints) -> Self {
        let groups = e
            .subsets
            .iter()
            .flatten()
            .map(|s| {
                let ports = s
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| (p.name.clone().unwrap_or_default(), p.port))
                    .collect();
                let addrs = |list: &Option<Vec<_>>, ready: bool| {
                    list.iter()
                        .flatten()
                        .map(
                            move |a: &k8s_openapi::api::core::v1::EndpointAddress| SliceEndpoint {
                                address: a.ip.clone(),
                                ready,
                                terminating: false,
                            },
                        )
                        .collect::<Vec<_>>()
                };
                let mut endpoints = addrs(&s.addresses, true);
                endpoints.extend(addrs(&s.not_ready_addresses, false));
                PortGroup { ports, endpoints }
            })
            .collect();
        Self { groups }
    }

    /// The endpoints of the groups that carry a port named `name`, with that port.
    fn with_port<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a SliceEndpoint, i32)> {
        self.groups.iter().flat_map(move |g| {
            let port = g.ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p);
            port.into_iter()
                .flat_map(move |p| g.endpoints.iter().map(move |e| (e, p)))
        })
    }
}

/// An object that lists pod addresses: an EndpointSlice or a core/v1 Endpoints.
pub trait Addresses {
    /// Its metadata (namespace, name, labels).
    fn meta(&self) -> &ObjectMeta;
    /// Its addresses, digested.
    fn digest(&self) -> Slice;
}

impl Addresses for EndpointSlice {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn digest(&self) -> Slice {
        Slice::from_k8s(self)
    }
}

impl Addresses for K8sEndpoints {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn digest(&self) -> Slice {
        Slice::from_endpoints(self)
    }
}

// === impl PrivateService ===

/// A revision's private Service, digested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivateService {
    cluster_ip: Option<String>,
    ports: Vec<(String, i32)>,
}

impl PrivateService {
    /// Digests a core/v1 Service.
    pub fn from_k8s(s: &Service) -> Self {
        let spec = s.spec.as_ref();
        Self {
            cluster_ip: spec
                .and_then(|s| s.cluster_ip.clone())
                .filter(|ip| !ip.is_empty() && ip != "None"),
            ports: spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.port))
                .collect(),
        }
    }

    /// `clusterIP:port` of the port named `name`; `None` without a cluster IP or that port
    /// (Knative then makes no cluster-IP update, §2.3).
    fn dest(&self, name: &str) -> Option<String> {
        let ip = self.cluster_ip.as_deref()?;
        let port = self.ports.iter().find(|(n, _)| n == name)?.1;
        Some(dest(ip, port))
    }
}

// === impl Objects ===

/// The objects of one watched kind, grouped by revision, with the watcher's re-list buffer.
#[derive(Debug)]
struct Objects<T> {
    by_rev: BTreeMap<RevisionKey, BTreeMap<String, T>>,
    rev_of: HashMap<ObjKey, RevisionKey>,
    /// Objects of a re-list in progress (`Init` .. `InitDone`). The live set stays in use until
    /// the list completes, so a re-list never flaps the catalog through an empty state.
    relist: Option<Vec<(ObjKey, Option<RevisionKey>, T)>>,
    synced: bool,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self {
            by_rev: BTreeMap::new(),
            rev_of: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T> Objects<T> {
    fn of(&self, rev: &RevisionKey) -> impl Iterator<Item = &T> {
        self.by_rev.get(rev).into_iter().flat_map(|m| m.values())
    }

    fn delete(&mut self, obj: &ObjKey, touched: &mut BTreeSet<RevisionKey>) {
        if let Some(rev) = self.rev_of.remove(obj) {
            if let Some(m) = self.by_rev.get_mut(&rev) {
                m.remove(&obj.1);
                if m.is_empty() {
                    self.by_rev.remove(&rev);
                }
            }
            touched.insert(rev);
        }
    }

    fn apply(
        &mut self,
        obj: ObjKey,
        rev: Option<RevisionKey>,
        v: T,
        touched: &mut BTreeSet<RevisionKey>,
    ) {
        // Removing first also handles a relabelled object moving to another revision.
        self.delete(&obj, touched);
        if let Some(rev) = rev {
            self.by_rev
                .entry(rev.clone())
                .or_default()
                .insert(obj.1.clone(), v);
            self.rev_of.insert(obj, rev.clone());
            touched.insert(rev);
        }
    }

    /// Applies one watcher event; `digest` turns an object into (key, revision, value).
    fn handle<K>(
        &mut self,
        event: Event<K>,
        digest: impl Fn(&K) -> (ObjKey, Option<RevisionKey>, T),
        touched: &mut BTreeSet<RevisionKey>,
    ) {
        match event {
            Event::Apply(o) => {
                let (k, r, v) = digest(&o);
                self.apply(k, r, v, touched);
            }
            Event::Delete(o) => self.delete(&digest(&o).0, touched),
            Event::Init => self.relist = Some(Vec::new()),
            Event::InitApply(o) => {
                let d = digest(&o);
                match &mut self.relist {
                    Some(buf) => buf.push(d),
                    // Not expected from kube-runtime; applying keeps the state correct anyway.
                    None => self.apply(d.0, d.1, d.2, touched),
                }
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                // Everything not in the new list is gone (deleted while the watch was down).
                touched.extend(self.by_rev.keys().cloned());
                self.by_rev.clear();
                self.rev_of.clear();
                for (k, r, v) in listed {
                    self.apply(k, r, v, touched);
                }
                self.synced = true;
            }
        }
    }
}

// === impl State ===

/// Which watch an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `serving.knative.dev/v1` Revisions.
    Revisions,
    /// Private EndpointSlices (pod addresses).
    PrivateSlices,
    /// Public EndpointSlices (activator subsetting).
    PublicSlices,
    /// Private Services (cluster-IP fallback).
    PrivateServices,
}

impl Kind {
    /// All kinds, in watch order.
    pub const ALL: [Kind; 4] = [
        Kind::Revisions,
        Kind::PrivateSlices,
        Kind::PublicSlices,
        Kind::PrivateServices,
    ];
}

/// Everything the watchers have seen, and the catalog entries derived from it.
#[derive(Debug, Default)]
pub struct State {
    revisions: Objects<RevisionSpec>,
    private: Objects<Slice>,
    public: Objects<Slice>,
    services: Objects<PrivateService>,
    derived: BTreeMap<RevisionKey, Arc<RevisionEntry>>,
}

fn slice_digest<K: Addresses>(s: &K) -> (ObjKey, Option<RevisionKey>, Slice) {
    (obj_key(s.meta()), labelled_revision(s.meta()), s.digest())
}

impl State {
    /// A Revision event. Returns whether the derived entries changed.
    pub fn on_revision(&mut self, e: Event<Revision>) -> bool {
        let mut touched = BTreeSet::new();
        self.revisions.handle(
            e,
            |r| {
                let k = obj_key(&r.metadata);
                let rev = RevisionKey::new(k.0.clone(), k.1.clone());
                (k, Some(rev), r.to_spec())
            },
            &mut touched,
        );
        self.recompute(touched)
    }

    /// A private EndpointSlice (or, under Knative's RBAC, private Endpoints) event.
    pub fn on_private_slice<K: Addresses>(&mut self, e: Event<K>) -> bool {
        let mut touched = BTreeSet::new();
        self.private.handle(e, slice_digest, &mut touched);
        self.recompute(touched)
    }

    /// A public EndpointSlice (or public Endpoints) event.
    pub fn on_public_slice<K: Addresses>(&mut self, e: Event<K>) -> bool {
        let mut touched = BTreeSet::new();
        self.public.handle(e, slice_digest, &mut touched);
        self.recompute(touched)
    }

    /// A private Service event.
    pub fn on_private_service(&mut self, e: Event<Service>) -> bool {
        let mut touched = BTreeSet::new();
        self.services.handle(
            e,
            |s| {
                (
                    obj_key(&s.metadata),
                    labelled_revision(&s.metadata),
                    PrivateService::from_k8s(s),
                )
            },
            &mut touched,
        );
        self.recompute(touched)
    }

    /// Whether `kind` has completed its first list.
    pub fn synced(&self, kind: Kind) -> bool {
        match kind {
            Kind::Revisions => self.revisions.synced,
            Kind::PrivateSlices => self.private.synced,
            Kind::PublicSlices => self.public.synced,
            Kind::PrivateServices => self.services.synced,
        }
    }

    /// The catalog entries: one per known Revision.
    pub fn entries(&self) -> &BTreeMap<RevisionKey, Arc<RevisionEntry>> {
        &self.derived
    }

    fn recompute(&mut self, touched: BTreeSet<RevisionKey>) -> bool {
        let mut changed = false;
        for k in touched {
            let next = self.entry(&k).map(Arc::new);
            let same = self.derived.get(&k) == next.as_ref();
            if !same {
                changed = true;
                match next {
                    Some(e) => self.derived.insert(k, e),
                    None => self.derived.remove(&k),
                };
            }
        }
        changed
    }

    /// The catalog entry of `k`: `None` until (and after) its Revision exists. Slices and
    /// Services seen before the Revision are kept and applied when it arrives.
    fn entry(&self, k: &RevisionKey) -> Option<RevisionEntry> {
        let spec = self.revisions.of(k).next()?.clone();
        let port = port_name(spec.protocol);
        let mut ready = BTreeSet::new();
        let mut not_ready = BTreeSet::new();
        for s in self.private.of(k) {
            // Like Knative's subsets: only groups that carry the protocol's port count.
            for (e, p) in s.with_port(port) {
                // Terminating pods are dropped, as core/v1 Endpoints drop them.
                if e.terminating {
                    continue;
                }
                let d = dest(&e.address, p);
                if e.ready {
                    ready.insert(d);
                } else {
                    not_ready.insert(d);
                }
            }
        }
        let not_ready = not_ready.difference(&ready).cloned().collect();
        let cluster_ip = self.services.of(k).find_map(|s| s.dest(port));
        let mut public = self.public.of(k).peekable();
        let activators = public.peek().is_some().then(|| {
            let ips: BTreeSet<String> = public
                .flat_map(|s| s.with_port(port))
                .filter(|(e, _)| e.ready && !e.terminating)
                .map(|(e, _)| e.address.clone())
                .collect();
            // BTreeSet order is the lexicographic string order Knative sorts by (§2.4).
            ips.into_iter().collect()
        });
        Some(RevisionEntry {
            spec,
            endpoints: Endpoints {
                ready: ready.into_iter().collect(),
                not_ready,
                cluster_ip,
            },
            activators,
        })
    }
}

#[cfg(test)]
mod tests;
