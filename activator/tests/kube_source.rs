//! The Kubernetes source against kube-rs's real client, over a fake API server on 127.0.0.1
//! that serves list and watch JSON for Revisions, EndpointSlices and Services: a watch that ends
//! and restarts, a BOOKMARK, a `410 Gone` ERROR that forces a re-list, and DELETED events.
#![allow(clippy::unwrap_used)] // test helpers

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use activator::catalog::{Catalog, Protocol, RevisionEntry, RevisionKey, Snapshot};
use activator::source::kube::{
    KubeSource, KubeSourceError, PRIVATE_SERVICES, PRIVATE_SLICES, PUBLIC_SLICES,
};
use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous: the watcher's backoff after an error is 0.8 s plus jitter, and CI is busy.
const DEADLINE: Duration = Duration::from_secs(30);

const REVISIONS: &str = "/apis/serving.knative.dev/v1/revisions";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const SERVICES: &str = "/api/v1/services";
const ENDPOINTS: &str = "/api/v1/endpoints";
const CONFIGMAPS: &str = "/api/v1/namespaces/knative-serving/configmaps";

/// A ConfigMap in knative-serving.
fn configmap(name: &str, rv: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "knative-serving", "name": name, "resourceVersion": rv},
        "data": data})
}

/// What the fake sends on a watch stream.
enum Msg {
    /// One watch event line.
    Event(Value),
    /// Close the stream (the API server ending a watch).
    End,
}

/// One list/watch endpoint: a path plus a label selector.
struct Resource {
    list: Mutex<(String, Vec<Value>)>,
    watch_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Msg>>>,
    watch_tx: mpsc::Sender<Msg>,
}

/// A request the fake saw: (path, selector, watch?, resourceVersion).
type Seen = (String, String, bool, String);

#[derive(Default)]
struct FakeApi {
    resources: HashMap<(String, String), Resource>,
    /// Single objects served to a plain GET of their path.
    objects: HashMap<String, Value>,
    seen: Mutex<Vec<Seen>>,
    /// Answer 403 to everything Knative's activator RBAC does not grant (a Role on configmaps
    /// and secrets in knative-serving; a ClusterRole on services, endpoints and revisions).
    upstream_rbac: std::sync::atomic::AtomicBool,
}

/// Whether Knative's `knative-serving-activator` Role and `knative-serving-activator-cluster`
/// ClusterRole (config/core/200-roles/activator.yaml) let the activator read `path`.
fn upstream_rbac_allows(path: &str) -> bool {
    [REVISIONS, SERVICES, ENDPOINTS].contains(&path)
        || path.starts_with("/api/v1/namespaces/knative-serving/configmaps")
        || path.starts_with("/api/v1/namespaces/knative-serving/secrets")
}

/// The API server's answer to a request RBAC denies.
fn forbidden(path: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{path} is forbidden: User \"system:serviceaccount:knative-serving:activator\" cannot list it"),
        "reason": "Forbidden", "details": {}, "code": 403})
}

impl FakeApi {
    fn add_config_network(&mut self, data: Value) {
        self.add_system_configmaps(data, vec![]);
    }

    /// `config-network` (served to its GET) and the namespace's ConfigMap list and watch,
    /// holding it and `others`.
    fn add_system_configmaps(&mut self, network: Value, others: Vec<Value>) {
        let cm = configmap("config-network", "1", network);
        self.objects
            .insert(format!("{CONFIGMAPS}/config-network"), cm.clone());
        let mut items = vec![cm];
        items.extend(others);
        self.add(CONFIGMAPS, "", "5", items);
    }

    fn add(&mut self, path: &str, selector: &str, rv: &str, items: Vec<Value>) {
        let (watch_tx, rx) = mpsc::channel(64);
        self.resources.insert(
            (path.into(), selector.into()),
            Resource {
                list: Mutex::new((rv.into(), items)),
                watch_rx: Arc::new(tokio::sync::Mutex::new(rx)),
                watch_tx,
            },
        );
    }

    fn res(&self, path: &str, selector: &str) -> &Resource {
        &self.resources[&(path.to_owned(), selector.to_owned())]
    }

    async fn send(&self, path: &str, selector: &str, msg: Msg) {
        self.res(path, selector)
            .watch_tx
            .send(msg)
            .await
            .expect("fake server alive");
    }

    fn set_list(&self, path: &str, selector: &str, rv: &str, items: Vec<Value>) {
        *self.res(path, selector).list.lock().unwrap() = (rv.into(), items);
    }

    fn seen(&self, path: &str, selector: &str) -> Vec<(bool, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.0 == path && s.1 == selector)
            .map(|s| (s.2, s.3.clone()))
            .collect()
    }

    fn lists(&self, path: &str, selector: &str) -> usize {
        self.seen(path, selector).iter().filter(|s| !s.0).count()
    }

    fn watch_versions(&self, path: &str, selector: &str) -> Vec<String> {
        self.seen(path, selector)
            .into_iter()
            .filter(|s| s.0)
            .map(|s| s.1)
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf-8")
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    r
}

async fn handle(api: Arc<FakeApi>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let params: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let selector = params.get("labelSelector").cloned().unwrap_or_default();
    let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let rv = params.get("resourceVersion").cloned().unwrap_or_default();
    api.seen
        .lock()
        .unwrap()
        .push((path.clone(), selector.clone(), watch, rv));
    if api.upstream_rbac.load(std::sync::atomic::Ordering::SeqCst) && !upstream_rbac_allows(&path) {
        return Ok(full(StatusCode::FORBIDDEN, &forbidden(&path)));
    }
    if let Some(obj) = api.objects.get(&path) {
        return Ok(full(StatusCode::OK, obj));
    }
    let Some(res) = api.resources.get(&(path, selector)) else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
        ));
    };
    if !watch {
        let (rv, items) = res.list.lock().unwrap().clone();
        return Ok(full(
            StatusCode::OK,
            &json!({"kind":"List","apiVersion":"v1","metadata":{"resourceVersion": rv},"items": items}),
        ));
    }
    // One watch at a time per resource: the stream owns the receiver until it ends.
    let rx = Arc::clone(&res.watch_rx).lock_owned().await;
    let body = stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(Msg::Event(v)) => {
                // The API server closes a watch after an ERROR event.
                let last = v["type"] == "ERROR";
                let line = Bytes::from(format!("{v}\n"));
                Some((Ok::<_, Infallible>(Frame::data(line)), (rx, last)))
            }
            Some(Msg::End) | None => None,
        }
    });
    let mut r = Response::new(StreamBody::new(body).boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    Ok(r)
}

async fn serve(api: Arc<FakeApi>, stop: CancellationToken) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = l.accept() => a.unwrap(),
            };
            let api = Arc::clone(&api);
            let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&api), req));
            let stop = stop.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(s), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    });
    format!("http://{addr}")
}

fn client(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

// === objects ===

fn revision(name: &str, rv: &str, cc: i64, port: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": rv,
            "labels": {"serving.knative.dev/service": "hello",
                       "serving.knative.dev/configuration": "hello"}},
        "spec": {"containerConcurrency": cc, "timeoutSeconds": 120,
            "containers": [{"image": "x", "ports": [{"name": port, "containerPort": 8080}]}]},
        "status": {}
    })
}

/// An EndpointSlice of `rev`'s private (`Private`) or public (`Public`) Service.
fn slice(
    name: &str,
    rv: &str,
    rev: &str,
    kind: &str,
    port: (&str, i32),
    eps: &[(&str, bool, bool)],
) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, ready, terminating)| {
            json!({"addresses": [ip], "conditions":
                {"ready": ready, "serving": *ready || *terminating, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": "ns", "name": format!("pod-{ip}")}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": rv, "labels": {
            "kubernetes.io/service-name": format!("{rev}-private"),
            "serving.knative.dev/revision": rev,
            "serving.knative.dev/revisionUID": "0b7d4a8e",
            "networking.internal.knative.dev/serviceType": kind}},
        "addressType": "IPv4",
        "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"},
                  {"name": "http-autometric", "port": 9090, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn service(rev: &str, rv: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": format!("{rev}-private"), "resourceVersion": rv,
            "labels": {"serving.knative.dev/revision": rev,
                       "networking.internal.knative.dev/serviceType": "Private"}},
        "spec": {"clusterIP": ip, "type": "ClusterIP", "ports": [
            {"name": "http", "port": 80, "targetPort": 8012, "protocol": "TCP"},
            {"name": "http2", "port": 81, "targetPort": 8013, "protocol": "TCP"}]}
    })
}

/// The labels Knative puts on a revision's ServerlessService objects (the private and public
/// Services, hence their Endpoints): the revision's labels plus the SKS name and service type.
fn sks_labels(rev: &str, kind: &str) -> Value {
    json!({
        "app": rev,
        "serving.knative.dev/configuration": "hello",
        "serving.knative.dev/configurationGeneration": "1",
        "serving.knative.dev/configurationUID": "5c0d6a1e",
        "serving.knative.dev/revision": rev,
        "serving.knative.dev/revisionUID": "0b7d4a8e",
        "serving.knative.dev/service": "hello",
        "serving.knative.dev/serviceUID": "9e1f2c3d",
        "networking.internal.knative.dev/serverlessservice": rev,
        "networking.internal.knative.dev/serviceType": kind,
    })
}

/// core/v1 Endpoints of `rev`'s private Service as the Endpoints controller writes them: one
/// subset with every port of the Service (named as on the Service, numbered as the target),
/// ready pods in `addresses`, unready ones in `notReadyAddresses`.
fn private_endpoints(
    rev: &str,
    rv: &str,
    port: (&str, i32),
    ready: &[&str],
    not_ready: &[&str],
) -> Value {
    let addr = |ip: &&str| {
        json!({"ip": ip, "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": "ns", "name": format!("{rev}-deployment-{ip}"),
                "uid": "7d9c0b1a"}})
    };
    let mut subset = json!({"ports": [
        {"name": port.0, "port": port.1, "protocol": "TCP"},
        {"name": "https", "port": 8112, "protocol": "TCP"},
        {"name": "http-autometric", "port": 9090, "protocol": "TCP"},
        {"name": "http-usermetric", "port": 9091, "protocol": "TCP"},
        {"name": "http-queueadm", "port": 8022, "protocol": "TCP"}]});
    if !ready.is_empty() {
        subset["addresses"] = ready.iter().map(addr).collect();
    }
    if !not_ready.is_empty() {
        subset["notReadyAddresses"] = not_ready.iter().map(addr).collect();
    }
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"namespace": "ns", "name": format!("{rev}-private"), "resourceVersion": rv,
            "labels": sks_labels(rev, "Private")},
        "subsets": [subset]
    })
}

/// core/v1 Endpoints of `rev`'s public Service as Knative's SKS reconciler writes them in proxy
/// mode (`MakePublicEndpoints`): named as the revision, the activators' addresses, ports
/// filtered to the serving port and 8112.
fn public_endpoints(rev: &str, rv: &str, activators: &[&str]) -> Value {
    let addrs: Vec<Value> = activators
        .iter()
        .map(|ip| {
            json!({"ip": ip, "targetRef": {"kind": "Pod", "namespace": "knative-serving",
            "name": format!("activator-{ip}")}})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"namespace": "ns", "name": rev, "resourceVersion": rv,
            "labels": sks_labels(rev, "Public"),
            "ownerReferences": [{"apiVersion": "networking.internal.knative.dev/v1alpha1",
                "kind": "ServerlessService", "name": rev, "uid": "1a2b3c4d", "controller": true,
                "blockOwnerDeletion": true}]},
        "subsets": [{"addresses": addrs, "ports": [
            {"name": "http", "port": 8012, "protocol": "TCP"},
            {"name": "https", "port": 8112, "protocol": "TCP"}]}]
    })
}

fn event(kind: &str, object: Value) -> Msg {
    Msg::Event(json!({"type": kind, "object": object}))
}

fn key(name: &str) -> RevisionKey {
    RevisionKey::new("ns", name)
}

async fn wait_for(catalog: &Catalog, what: &str, pred: impl Fn(&Snapshot) -> bool) {
    let mut rx = catalog.subscribe();
    let ok = tokio::time::timeout(DEADLINE, async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        ok.is_ok() && pred(&catalog.snapshot()),
        "timed out waiting for {what}; catalog: {:#?}",
        catalog.snapshot().revisions
    );
}

fn entry(s: &Snapshot, name: &str) -> Option<Arc<RevisionEntry>> {
    s.revisions.get(&key(name)).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_feed_the_catalog_through_restarts_bookmarks_gone_and_deletions() {
    let mut api = FakeApi::default();
    api.add(
        REVISIONS,
        "",
        "100",
        vec![
            revision("hello-00001", "90", 2, "user-port"),
            revision("grpc-00001", "91", 0, "h2c"),
            revision("old-00001", "92", 1, "user-port"),
        ],
    );
    api.add(
        SLICES,
        PRIVATE_SLICES,
        "200",
        vec![
            slice(
                "hello-00001-private-a1",
                "190",
                "hello-00001",
                "Private",
                ("http", 8012),
                &[
                    ("10.1.0.1", true, false),
                    ("10.1.0.2", false, false),
                    ("10.1.0.3", false, true),
                ],
            ),
            slice(
                "grpc-00001-private-b1",
                "191",
                "grpc-00001",
                "Private",
                ("http2", 8013),
                &[("10.1.1.1", true, false)],
            ),
        ],
    );
    api.add(
        SLICES,
        PUBLIC_SLICES,
        "200",
        vec![slice(
            "hello-00001-x9",
            "192",
            "hello-00001",
            "Public",
            ("http", 8012),
            &[("10.2.0.3", true, false), ("10.2.0.20", true, false)],
        )],
    );
    api.add(
        SERVICES,
        PRIVATE_SERVICES,
        "300",
        vec![service("hello-00001", "290", "10.96.0.10")],
    );
    let api = Arc::new(api);
    let stop = CancellationToken::new();
    let url = serve(Arc::clone(&api), stop.clone()).await;
    let catalog = Catalog::new();

    // start() returns once every watch has listed: the catalog is complete at once.
    let src = KubeSource::start(client(&url), catalog.clone(), DEADLINE)
        .await
        .expect("source syncs");
    let snap = catalog.snapshot();
    assert_eq!(snap.revisions.len(), 3);
    let hello = entry(&snap, "hello-00001").expect("hello");
    assert_eq!(hello.spec.container_concurrency, 2);
    assert_eq!(hello.spec.timeout, Duration::from_secs(120));
    assert_eq!(hello.spec.service, "hello");
    assert_eq!(hello.endpoints.ready, ["10.1.0.1:8012"]);
    assert_eq!(hello.endpoints.not_ready, ["10.1.0.2:8012"]);
    assert_eq!(hello.endpoints.cluster_ip.as_deref(), Some("10.96.0.10:80"));
    // Sorted as strings, as Knative sorts them for the activator index.
    assert_eq!(
        hello.activators.as_deref(),
        Some(&["10.2.0.20".to_owned(), "10.2.0.3".to_owned()][..])
    );
    let grpc = entry(&snap, "grpc-00001").expect("grpc");
    assert_eq!(grpc.spec.protocol, Protocol::H2c);
    assert_eq!(grpc.endpoints.ready, ["10.1.1.1:8013"]);
    assert_eq!(grpc.endpoints.cluster_ip, None);

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(src.run(shutdown.clone()));

    // MODIFIED: the not-ready pod turns ready.
    api.send(
        SLICES,
        PRIVATE_SLICES,
        event(
            "MODIFIED",
            slice(
                "hello-00001-private-a1",
                "201",
                "hello-00001",
                "Private",
                ("http", 8012),
                &[("10.1.0.1", true, false), ("10.1.0.2", true, false)],
            ),
        ),
    )
    .await;
    wait_for(&catalog, "pod 10.1.0.2 ready", |s| {
        entry(s, "hello-00001").is_some_and(|e| {
            e.endpoints.ready == ["10.1.0.1:8012", "10.1.0.2:8012"]
                && e.endpoints.not_ready.is_empty()
        })
    })
    .await;

    // A BOOKMARK, then the API server ends the watch: the watcher re-watches from the
    // bookmark's resourceVersion without a re-list, and sees what happens next.
    api.send(
        REVISIONS,
        "",
        event(
            "BOOKMARK",
            json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"resourceVersion": "150"}}),
        ),
    )
    .await;
    api.send(REVISIONS, "", Msg::End).await;
    api.send(
        REVISIONS,
        "",
        event("ADDED", revision("new-00001", "151", 5, "user-port")),
    )
    .await;
    wait_for(&catalog, "new revision after the watch restart", |s| {
        entry(s, "new-00001").is_some_and(|e| e.spec.container_concurrency == 5)
    })
    .await;
    assert_eq!(api.watch_versions(REVISIONS, ""), ["100", "150"]);
    assert_eq!(
        api.lists(REVISIONS, ""),
        1,
        "a bookmark restart must not re-list"
    );

    // 410 Gone on the private-slice watch. Meanwhile (unseen by the watch) pod 10.1.0.1 went
    // away and grpc's slice was deleted: only the re-list can tell, and the state must drop
    // both.
    api.set_list(
        SLICES,
        PRIVATE_SLICES,
        "400",
        vec![slice(
            "hello-00001-private-a1",
            "399",
            "hello-00001",
            "Private",
            ("http", 8012),
            &[("10.1.0.2", true, false)],
        )],
    );
    api.send(
        SLICES,
        PRIVATE_SLICES,
        Msg::Event(json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 200 (350)", "reason": "Expired", "code": 410}})),
    )
    .await;
    wait_for(&catalog, "re-list after 410 Gone", |s| {
        entry(s, "hello-00001").is_some_and(|e| e.endpoints.ready == ["10.1.0.2:8012"])
            && entry(s, "grpc-00001").is_some_and(|e| e.endpoints.ready.is_empty())
    })
    .await;
    assert_eq!(
        api.lists(SLICES, PRIVATE_SLICES),
        2,
        "410 Gone must re-list"
    );
    // The watch resumes from the re-list's resourceVersion (it starts just after the catalog
    // update, so wait for it).
    let resumed = tokio::time::timeout(DEADLINE, async {
        while api.watch_versions(SLICES, PRIVATE_SLICES).len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(resumed.is_ok(), "no watch after the re-list");
    assert_eq!(api.watch_versions(SLICES, PRIVATE_SLICES), ["200", "400"]);

    // DELETED events: a revision, a private Service, a private slice.
    api.send(
        REVISIONS,
        "",
        event("DELETED", revision("old-00001", "160", 1, "user-port")),
    )
    .await;
    api.send(
        SERVICES,
        PRIVATE_SERVICES,
        event("DELETED", service("hello-00001", "301", "10.96.0.10")),
    )
    .await;
    api.send(
        SLICES,
        PRIVATE_SLICES,
        event(
            "DELETED",
            slice(
                "hello-00001-private-a1",
                "401",
                "hello-00001",
                "Private",
                ("http", 8012),
                &[],
            ),
        ),
    )
    .await;
    wait_for(&catalog, "deletions applied", |s| {
        entry(s, "old-00001").is_none()
            && entry(s, "hello-00001")
                .is_some_and(|e| e.endpoints.cluster_ip.is_none() && e.endpoints.ready.is_empty())
    })
    .await;

    // Public slices update the activator subset; a new private Service gives a cluster IP.
    api.send(
        SLICES,
        PUBLIC_SLICES,
        event(
            "MODIFIED",
            slice(
                "hello-00001-x9",
                "202",
                "hello-00001",
                "Public",
                ("http", 8012),
                &[
                    ("10.2.0.3", true, false),
                    ("10.2.0.20", true, false),
                    ("10.2.0.100", true, false),
                ],
            ),
        ),
    )
    .await;
    api.send(
        SERVICES,
        PRIVATE_SERVICES,
        event("ADDED", service("new-00001", "302", "10.96.0.11")),
    )
    .await;
    wait_for(&catalog, "public slice and new service", |s| {
        entry(s, "hello-00001").is_some_and(|e| e.activators.as_ref().is_some_and(|a| a.len() == 3))
            && entry(s, "new-00001")
                .is_some_and(|e| e.endpoints.cluster_ip.as_deref() == Some("10.96.0.11:80"))
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("source stops on shutdown")
        .expect("no panic");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_watched_when_endpointslices_are_forbidden() {
    // Knative's RBAC: EndpointSlices are 403, core/v1 Endpoints are allowed. The EndpointSlice
    // lists are registered too, so only the 403 (not a 404) can steer the source away.
    let mut api = FakeApi {
        upstream_rbac: true.into(),
        ..FakeApi::default()
    };
    api.add(
        REVISIONS,
        "",
        "10",
        vec![
            revision("hello-00001", "9", 2, "user-port"),
            revision("grpc-00001", "9", 0, "h2c"),
        ],
    );
    api.add(SLICES, PRIVATE_SLICES, "10", vec![]);
    api.add(SLICES, PUBLIC_SLICES, "10", vec![]);
    api.add(
        ENDPOINTS,
        PRIVATE_SLICES,
        "20",
        vec![
            private_endpoints(
                "hello-00001",
                "19",
                ("http", 8012),
                &["10.1.0.1"],
                &["10.1.0.2"],
            ),
            private_endpoints("grpc-00001", "19", ("http2", 8013), &["10.1.1.1"], &[]),
        ],
    );
    api.add(
        ENDPOINTS,
        PUBLIC_SLICES,
        "20",
        vec![public_endpoints(
            "hello-00001",
            "19",
            &["10.2.0.3", "10.2.0.20"],
        )],
    );
    api.add(
        SERVICES,
        PRIVATE_SERVICES,
        "30",
        vec![service("hello-00001", "29", "10.96.0.10")],
    );
    let api = Arc::new(api);
    let stop = CancellationToken::new();
    let url = serve(Arc::clone(&api), stop.clone()).await;
    let catalog = Catalog::new();
    let src = KubeSource::start(client(&url), catalog.clone(), DEADLINE)
        .await
        .expect("syncs from Endpoints");
    let snap = catalog.snapshot();
    let hello = entry(&snap, "hello-00001").expect("hello");
    assert_eq!(hello.endpoints.ready, ["10.1.0.1:8012"]);
    assert_eq!(hello.endpoints.not_ready, ["10.1.0.2:8012"]);
    assert_eq!(hello.endpoints.cluster_ip.as_deref(), Some("10.96.0.10:80"));
    assert_eq!(
        hello.activators.as_deref(),
        Some(&["10.2.0.20".to_owned(), "10.2.0.3".to_owned()][..])
    );
    let grpc = entry(&snap, "grpc-00001").expect("grpc");
    assert_eq!(grpc.endpoints.ready, ["10.1.1.1:8013"]);
    assert!(
        api.watch_versions(SLICES, PRIVATE_SLICES).is_empty(),
        "no EndpointSlice watch after the 403"
    );

    // The Endpoints watch is followed: the unready pod turns ready, the public set shrinks.
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(src.run(shutdown.clone()));
    api.send(
        ENDPOINTS,
        PRIVATE_SLICES,
        event(
            "MODIFIED",
            private_endpoints(
                "hello-00001",
                "21",
                ("http", 8012),
                &["10.1.0.1", "10.1.0.2"],
                &[],
            ),
        ),
    )
    .await;
    api.send(
        ENDPOINTS,
        PUBLIC_SLICES,
        event(
            "MODIFIED",
            public_endpoints("hello-00001", "22", &["10.2.0.3"]),
        ),
    )
    .await;
    wait_for(&catalog, "Endpoints updates", |s| {
        entry(s, "hello-00001").is_some_and(|e| {
            e.endpoints.ready == ["10.1.0.1:8012", "10.1.0.2:8012"]
                && e.activators.as_deref() == Some(&["10.2.0.3".to_owned()][..])
        })
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("stops")
        .expect("no panic");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_naming_the_watch_that_cannot_list() {
    // Revisions are served; the EndpointSlice and Service lists 404 (as without RBAC or CRDs
    // they would fail): start() gives up after its deadline with the last error.
    let mut api = FakeApi::default();
    api.add(REVISIONS, "", "1", vec![]);
    let api = Arc::new(api);
    let stop = CancellationToken::new();
    let url = serve(api, stop.clone()).await;
    let err = KubeSource::start(client(&url), Catalog::new(), Duration::from_secs(2))
        .await
        .expect_err("cannot sync");
    match &err {
        KubeSourceError::Sync { last_error, .. } => {
            assert!(
                last_error.contains("404") || last_error.to_lowercase().contains("not found"),
                "{err}"
            )
        }
        other => panic!("unexpected {other}"),
    }
    stop.cancel();
}

// === the real binary, in-cluster style ===

/// A kubeconfig pointing at the fake API server, in a fresh temp dir (returned for cleanup).
fn kubeconfig(test: &str, url: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("activator-kube-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();
    (dir, path)
}

/// A queue-proxy stand-in: answers the activator's probe and requests.
async fn fake_pod(stop: CancellationToken) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = tower::service_fn(|req: Request<Incoming>| async move {
        let probe = req
            .headers()
            .get("k-network-probe")
            .is_some_and(|v| v == "queue");
        let body = if probe { "queue" } else { "hello from the pod" };
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            body.as_bytes(),
        ))))
    });
    tokio::spawn(shared::http::server::serve(
        l,
        svc,
        shared::http::server::ServerOptions::default(),
        stop,
    ));
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /` for `ns/hello-00001` through the activator: (status, body), or `None` if it is not up.
async fn get_revision(port: u16) -> Option<(StatusCode, String)> {
    use hyper_util::client::legacy::Client;
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .uri(format!("http://127.0.0.1:{port}/"))
        .header("knative-serving-namespace", "ns")
        .header("knative-serving-revision", "hello-00001")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.request(req))
        .await
        .ok()?
        .ok()?;
    let status = r.status();
    let body = r.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Starts the real binary with only Knative's env and a kubeconfig for the fake API server.
fn spawn_activator(kubeconfig: &std::path::Path, port: u16) -> tokio::process::Child {
    activator_command(kubeconfig, port)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The binary's stdout lines, collected as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(child: &mut tokio::process::Child) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let me = Self::default();
        let out = child.stdout.take().expect("piped stdout");
        let lines = me.clone();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                lines.0.lock().unwrap().push(l);
            }
        });
        me
    }

    fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn dump(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// Retries `probe` until `found` holds (or [`DEADLINE`]).
async fn eventually<F: std::future::Future<Output = ()>>(
    what: &str,
    lines: &Lines,
    mut probe: impl FnMut() -> F,
    found: impl Fn() -> bool,
) {
    let ok = tokio::time::timeout(DEADLINE, async {
        loop {
            probe().await;
            if found() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "timed out waiting for {what}; logs:\n{}",
        lines.dump()
    );
}

/// A request the shared server answers 400 with a debug-level log line.
async fn malformed_request(port: u16) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        let _ = s
            .write_all(b"CONNECT example.com:80 HTTP/1.0\r\n\r\n")
            .await;
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    }
}

fn activator_command(kubeconfig: &std::path::Path, port: u16) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_activator"));
    c.env_clear()
        .env("POD_NAME", "activator-0")
        .env("POD_IP", "10.2.0.3")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .env("KUBECONFIG", kubeconfig)
        .args(["--stats-sink", "none", "--metrics-addr", "none"])
        .args(["--http1-addr", &format!("127.0.0.1:{port}")])
        .args(["--h2c-addr", &format!("127.0.0.1:{}", free_port())])
        // Knative's 8008 is left alone in tests (the profiling test sets its own port).
        .env("PROFILING_PORT", "0")
        .kill_on_drop(true);
    c
}

/// Routes a request for `ns/hello-00001` through the binary to the fake pod, then deletes the
/// Revision and waits for the 404.
async fn routes_then_forgets(api: &FakeApi, port: u16) {
    let served = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(r) = get_revision(port).await {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("activator answers");
    assert_eq!(served, (StatusCode::OK, "hello from the pod".to_owned()));

    // The binary follows the watch: a deleted Revision is 404 for new requests.
    api.send(
        REVISIONS,
        "",
        event("DELETED", revision("hello-00001", "11", 1, "user-port")),
    )
    .await;
    let gone = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some((StatusCode::NOT_FOUND, _)) = get_revision(port).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "revision still served after DELETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_revisions_from_the_api_server_by_default() {
    let stop = CancellationToken::new();
    let pod = fake_pod(stop.clone()).await;
    let mut api = FakeApi::default();
    api.add(
        REVISIONS,
        "",
        "10",
        vec![revision("hello-00001", "9", 1, "user-port")],
    );
    api.add(
        SLICES,
        PRIVATE_SLICES,
        "10",
        vec![slice(
            "hello-00001-private-a1",
            "9",
            "hello-00001",
            "Private",
            ("http", i32::from(pod.port())),
            &[("127.0.0.1", true, false)],
        )],
    );
    api.add(SLICES, PUBLIC_SLICES, "10", vec![]);
    api.add(SERVICES, PRIVATE_SERVICES, "10", vec![]);
    api.add_config_network(json!({"mesh-compatibility-mode": "auto"}));
    let api = Arc::new(api);
    let url = serve(Arc::clone(&api), stop.clone()).await;

    let (dir, kubeconfig) = kubeconfig("serves", &url);
    let port = free_port();
    let mut child = spawn_activator(&kubeconfig, port);
    routes_then_forgets(&api, port).await;
    child.kill().await.unwrap();
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_routes_with_knatives_own_rbac_and_endpoints() {
    // Only the image swapped: Knative's Role and ClusterRole, so every EndpointSlice request is
    // 403 and the pod addresses come from the Endpoints objects Kubernetes writes.
    let stop = CancellationToken::new();
    let pod = fake_pod(stop.clone()).await;
    let mut api = FakeApi {
        upstream_rbac: true.into(),
        ..FakeApi::default()
    };
    api.add(
        REVISIONS,
        "",
        "10",
        vec![revision("hello-00001", "9", 1, "user-port")],
    );
    api.add(
        ENDPOINTS,
        PRIVATE_SLICES,
        "10",
        vec![private_endpoints(
            "hello-00001",
            "9",
            ("http", i32::from(pod.port())),
            &["127.0.0.1"],
            &[],
        )],
    );
    api.add(ENDPOINTS, PUBLIC_SLICES, "10", vec![]);
    api.add(SERVICES, PRIVATE_SERVICES, "10", vec![]);
    api.add_config_network(json!({}));
    let api = Arc::new(api);
    let url = serve(Arc::clone(&api), stop.clone()).await;

    let (dir, kubeconfig) = kubeconfig("upstream-rbac", &url);
    let port = free_port();
    let mut child = spawn_activator(&kubeconfig, port);
    routes_then_forgets(&api, port).await;
    child.kill().await.unwrap();
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_system_internal_tls() {
    let stop = CancellationToken::new();
    let mut api = FakeApi::default();
    api.add_config_network(json!({"system-internal-tls": "enabled"}));
    let url = serve(Arc::new(api), stop.clone()).await;
    let (dir, kubeconfig) = kubeconfig("tls", &url);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_activator"))
        .env_clear()
        .env("POD_NAME", "activator-0")
        .env("POD_IP", "10.2.0.3")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .env("KUBECONFIG", &kubeconfig)
        .args(["--stats-sink", "none", "--metrics-addr", "none"])
        .args(["--http1-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--h2c-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("exits by itself")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let logs = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("system-internal-tls"), "{logs}");
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_logging_and_observability_apply_live_from_the_api() {
    // Knative's RBAC and ConfigMaps, nothing mounted: the level and the request log come from
    // the API server and change while the binary runs.
    let stop = CancellationToken::new();
    let pod = fake_pod(stop.clone()).await;
    let mut api = FakeApi {
        upstream_rbac: true.into(),
        ..FakeApi::default()
    };
    api.add(
        REVISIONS,
        "",
        "10",
        vec![revision("hello-00001", "9", 1, "user-port")],
    );
    api.add(
        ENDPOINTS,
        PRIVATE_SLICES,
        "10",
        vec![private_endpoints(
            "hello-00001",
            "9",
            ("http", i32::from(pod.port())),
            &["127.0.0.1"],
            &[],
        )],
    );
    api.add(ENDPOINTS, PUBLIC_SLICES, "10", vec![]);
    api.add(SERVICES, PRIVATE_SERVICES, "10", vec![]);
    let logging = |rv: &str, level: &str| {
        configmap(
            "config-logging",
            rv,
            json!({"zap-logger-config": "{\"level\": \"info\"}", "loglevel.activator": level}),
        )
    };
    api.add_system_configmaps(
        json!({}),
        vec![
            logging("2", "info"),
            configmap(
                "config-observability",
                "3",
                json!({"metrics-protocol": "prometheus"}),
            ),
        ],
    );
    let api = Arc::new(api);
    let url = serve(Arc::clone(&api), stop.clone()).await;
    let (dir, kubeconfig) = kubeconfig("live", &url);
    let port = free_port();
    let mut child = activator_command(&kubeconfig, port)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::follow(&mut child);
    let get = || async {
        let _ = get_revision(port).await;
    };
    eventually("the activator serving", &lines, get, || {
        lines.count("\"message\":\"kubernetes source synced\"") == 1
    })
    .await;
    assert_eq!(get_revision(port).await.map(|r| r.0), Some(StatusCode::OK));

    // At info, the malformed request's debug line is not written.
    malformed_request(port).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lines.count("rejected a malformed request"),
        0,
        "{}",
        lines.dump()
    );
    assert_eq!(lines.count("REQLOG"), 0);

    // loglevel.activator: debug, no restart.
    api.send(CONFIGMAPS, "", event("MODIFIED", logging("20", "debug")))
        .await;
    eventually(
        "the debug level applied",
        &lines,
        || malformed_request(port),
        || lines.count("rejected a malformed request") > 0,
    )
    .await;

    // The request log turns on the same way.
    api.send(
        CONFIGMAPS,
        "",
        event(
            "MODIFIED",
            configmap(
                "config-observability",
                "21",
                json!({"logging.enable-request-log": "true",
                    "logging.request-log-template": "REQLOG {{.Request.Method}} {{.Response.Code}}"}),
            ),
        ),
    )
    .await;
    eventually("a request log line", &lines, get, || {
        lines.count("REQLOG GET 200") > 0
    })
    .await;

    // And back to info: the debug line stops (checked after the level change is logged).
    api.send(CONFIGMAPS, "", event("MODIFIED", logging("22", "info")))
        .await;
    eventually(
        "info applied",
        &lines,
        || async {},
        || lines.count("config-logging applied") >= 3,
    )
    .await;
    let before = lines.count("rejected a malformed request");
    malformed_request(port).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines.count("rejected a malformed request"), before);

    child.kill().await.unwrap();
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET path` on 127.0.0.1:`port`: the status, or `None` when nothing answers.
async fn status_of(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_profiling_switches_the_profiling_port_live() {
    let stop = CancellationToken::new();
    let mut api = FakeApi {
        upstream_rbac: true.into(),
        ..FakeApi::default()
    };
    api.add(REVISIONS, "", "10", vec![]);
    api.add(ENDPOINTS, PRIVATE_SLICES, "10", vec![]);
    api.add(ENDPOINTS, PUBLIC_SLICES, "10", vec![]);
    api.add(SERVICES, PRIVATE_SERVICES, "10", vec![]);
    api.add_system_configmaps(
        json!({}),
        vec![configmap("config-observability", "3", json!({}))],
    );
    let api = Arc::new(api);
    let url = serve(Arc::clone(&api), stop.clone()).await;
    let (dir, kubeconfig) = kubeconfig("profiling", &url);
    let pport = free_port();
    let mut child = activator_command(&kubeconfig, free_port())
        .env("PROFILING_PORT", pport.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Off by default, as Knative: the port answers 404.
    let off = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(s) = status_of(pport, "/debug/pprof/heap").await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("profiling port listens");
    assert_eq!(off, 404);
    api.send(
        CONFIGMAPS,
        "",
        event(
            "MODIFIED",
            configmap(
                "config-observability",
                "4",
                json!({"runtime-profiling": "enabled"}),
            ),
        ),
    )
    .await;
    let on = tokio::time::timeout(DEADLINE, async {
        while status_of(pport, "/debug/pprof/heap").await != Some(200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(on.is_ok(), "runtime-profiling: enabled not applied");
    assert_eq!(
        status_of(pport, "/debug/pprof/profile?seconds=1").await,
        Some(200)
    );
    api.send(
        CONFIGMAPS,
        "",
        event(
            "MODIFIED",
            configmap(
                "config-observability",
                "5",
                json!({"runtime-profiling": "disabled"}),
            ),
        ),
    )
    .await;
    let off = tokio::time::timeout(DEADLINE, async {
        while status_of(pport, "/debug/pprof/heap").await != Some(404) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(off.is_ok(), "profiling still on");
    child.kill().await.unwrap();
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_source_moves_to_endpoints_when_slices_become_forbidden() {
    // Our RBAC at start (EndpointSlices), then Knative's re-applied: the slice watch restarts
    // into a 403 and the source carries on from Endpoints without a restart.
    let mut api = FakeApi::default();
    api.add(
        REVISIONS,
        "",
        "10",
        vec![revision("hello-00001", "9", 1, "user-port")],
    );
    api.add(
        SLICES,
        PRIVATE_SLICES,
        "10",
        vec![slice(
            "hello-00001-private-a1",
            "9",
            "hello-00001",
            "Private",
            ("http", 8012),
            &[("10.1.0.1", true, false)],
        )],
    );
    api.add(SLICES, PUBLIC_SLICES, "10", vec![]);
    api.add(
        ENDPOINTS,
        PRIVATE_SLICES,
        "20",
        vec![private_endpoints(
            "hello-00001",
            "19",
            ("http", 8012),
            &["10.1.0.1", "10.1.0.7"],
            &[],
        )],
    );
    api.add(ENDPOINTS, PUBLIC_SLICES, "20", vec![]);
    api.add(SERVICES, PRIVATE_SERVICES, "10", vec![]);
    let api = Arc::new(api);
    let stop = CancellationToken::new();
    let url = serve(Arc::clone(&api), stop.clone()).await;
    let catalog = Catalog::new();
    let src = KubeSource::start(client(&url), catalog.clone(), DEADLINE)
        .await
        .expect("syncs from EndpointSlices");
    assert_eq!(
        entry(&catalog.snapshot(), "hello-00001")
            .unwrap()
            .endpoints
            .ready,
        ["10.1.0.1:8012"]
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(src.run(shutdown.clone()));
    api.upstream_rbac
        .store(true, std::sync::atomic::Ordering::SeqCst);
    api.send(SLICES, PRIVATE_SLICES, Msg::End).await;
    wait_for(&catalog, "pods from Endpoints after the 403", |s| {
        entry(s, "hello-00001")
            .is_some_and(|e| e.endpoints.ready == ["10.1.0.1:8012", "10.1.0.7:8012"])
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("stops")
        .expect("no panic");
    stop.cancel();
}
