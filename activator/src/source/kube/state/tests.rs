use serde_json::json;

use super::*;

fn rev(name: &str, port: &str) -> Revision {
    serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": "1"},
        "spec": {"containerConcurrency": 1, "containers": [{"ports": [{"name": port}]}]}
    }))
    .expect("valid revision")
}

/// A slice for `rev` with (ip, ready, terminating) endpoints and one port.
fn slice(
    name: &str,
    rev: &str,
    kind: &str,
    port: (&str, i32),
    eps: &[(&str, Option<bool>, bool)],
) -> EndpointSlice {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(ip, ready, term)| {
            json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": term}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": "1", "labels": {
            REVISION_LABEL: rev, "networking.internal.knative.dev/serviceType": kind}},
        "addressType": "IPv4",
        "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("valid slice")
}

fn service(rev: &str, ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": format!("{rev}-private"), "resourceVersion": "1",
            "labels": {REVISION_LABEL: rev}},
        "spec": {"clusterIP": ip, "ports": [
            {"name": "http", "port": 80, "targetPort": 8012},
            {"name": "http2", "port": 81, "targetPort": 8013}]}
    }))
    .expect("valid service")
}

fn key(name: &str) -> RevisionKey {
    RevisionKey::new("ns", name)
}

fn synced() -> State {
    let mut s = State::default();
    for k in Kind::ALL {
        match k {
            Kind::Revisions => {
                s.on_revision(Event::Init);
                s.on_revision(Event::InitDone);
            }
            Kind::PrivateSlices => {
                s.on_private_slice(Event::<EndpointSlice>::Init);
                s.on_private_slice(Event::<EndpointSlice>::InitDone);
            }
            Kind::PublicSlices => {
                s.on_public_slice(Event::<EndpointSlice>::Init);
                s.on_public_slice(Event::<EndpointSlice>::InitDone);
            }
            Kind::PrivateServices => {
                s.on_private_service(Event::Init);
                s.on_private_service(Event::InitDone);
            }
        }
        assert!(s.synced(k));
    }
    s
}

#[test]
fn slices_map_conditions_to_ready_and_not_ready() {
    let mut s = synced();
    assert!(s.on_revision(Event::Apply(rev("r", "user-port"))));
    let eps = [
        ("10.0.0.1", Some(true), false),
        ("10.0.0.2", Some(false), false),
        // Terminating pods are gone for the activator, even while still serving.
        ("10.0.0.3", Some(false), true),
        // An unknown readiness counts as ready.
        ("10.0.0.4", None, false),
    ];
    assert!(s.on_private_slice(Event::Apply(slice(
        "r-a",
        "r",
        "Private",
        ("http", 8012),
        &eps
    ))));
    // A second slice of the same Service adds its pods; its own port number is used.
    let more = [("10.0.0.5", Some(true), false)];
    s.on_private_slice(Event::Apply(slice(
        "r-b",
        "r",
        "Private",
        ("http", 9012),
        &more,
    )));
    let e = &s.entries()[&key("r")];
    assert_eq!(
        e.endpoints.ready,
        ["10.0.0.1:8012", "10.0.0.4:8012", "10.0.0.5:9012"]
    );
    assert_eq!(e.endpoints.not_ready, ["10.0.0.2:8012"]);
    assert_eq!(e.activators, None);

    // Deleting one slice removes its pods only.
    assert!(s.on_private_slice(Event::Delete(slice(
        "r-b",
        "r",
        "Private",
        ("http", 1),
        &[]
    ))));
    assert_eq!(
        s.entries()[&key("r")].endpoints.ready,
        ["10.0.0.1:8012", "10.0.0.4:8012"]
    );
}

#[test]
fn the_protocol_selects_the_port_by_name() {
    let mut s = synced();
    s.on_revision(Event::Apply(rev("r", "h2c")));
    s.on_private_slice(Event::Apply(slice(
        "r-a",
        "r",
        "Private",
        ("http", 8012),
        &[("10.0.0.1", Some(true), false)],
    )));
    // No `http2` port: no dests, as Knative skips subsets without the named port.
    assert!(s.entries()[&key("r")].endpoints.ready.is_empty());
    s.on_private_slice(Event::Apply(slice(
        "r-b",
        "r",
        "Private",
        ("http2", 8013),
        &[("fd00::1", Some(true), false)],
    )));
    assert_eq!(s.entries()[&key("r")].endpoints.ready, ["[fd00::1]:8013"]);
    s.on_private_service(Event::Apply(service("r", "10.96.0.9")));
    assert_eq!(
        s.entries()[&key("r")].endpoints.cluster_ip.as_deref(),
        Some("10.96.0.9:81")
    );
}

#[test]
fn a_headless_or_portless_service_gives_no_cluster_ip() {
    let mut s = synced();
    s.on_revision(Event::Apply(rev("r", "http1")));
    s.on_private_service(Event::Apply(service("r", "None")));
    assert_eq!(s.entries()[&key("r")].endpoints.cluster_ip, None);
    s.on_private_service(Event::Apply(service("r", "10.96.0.9")));
    assert_eq!(
        s.entries()[&key("r")].endpoints.cluster_ip.as_deref(),
        Some("10.96.0.9:80")
    );
    s.on_private_service(Event::Delete(service("r", "")));
    assert_eq!(s.entries()[&key("r")].endpoints.cluster_ip, None);
}

#[test]
fn public_slices_give_sorted_activator_ips() {
    let mut s = synced();
    s.on_revision(Event::Apply(rev("r", "http1")));
    let eps = [
        ("10.0.0.9", Some(true), false),
        ("10.0.0.10", Some(true), false),
        ("10.0.0.2", Some(false), false),
    ];
    s.on_public_slice(Event::Apply(slice(
        "r-x",
        "r",
        "Public",
        ("http", 8012),
        &eps,
    )));
    // String order, not numeric: "10.0.0.10" < "10.0.0.9". Not-ready addresses are excluded.
    assert_eq!(
        s.entries()[&key("r")].activators.as_deref(),
        Some(&["10.0.0.10".to_owned(), "10.0.0.9".to_owned()][..])
    );
    // Public slices never add pod dests.
    assert!(s.entries()[&key("r")].endpoints.ready.is_empty());
}

#[test]
fn objects_before_their_revision_are_kept_and_applied_later() {
    let mut s = synced();
    assert!(!s.on_private_slice(Event::Apply(slice(
        "r-a",
        "r",
        "Private",
        ("http", 8012),
        &[("10.0.0.1", Some(true), false)]
    ))));
    assert!(s.entries().is_empty());
    s.on_revision(Event::Apply(rev("r", "http1")));
    assert_eq!(s.entries()[&key("r")].endpoints.ready, ["10.0.0.1:8012"]);
    // Deleting the revision removes the entry; re-adding it brings its pods back.
    assert!(s.on_revision(Event::Delete(rev("r", "http1"))));
    assert!(s.entries().is_empty());
    s.on_revision(Event::Apply(rev("r", "http1")));
    assert_eq!(s.entries()[&key("r")].endpoints.ready, ["10.0.0.1:8012"]);
}

#[test]
fn a_relist_replaces_the_kind_atomically() {
    let mut s = synced();
    s.on_revision(Event::Apply(rev("a", "http1")));
    s.on_revision(Event::Apply(rev("b", "http1")));
    // A re-list (watch restart after 410 Gone): the old state stays until InitDone.
    assert!(!s.on_revision(Event::Init));
    assert!(!s.on_revision(Event::InitApply(rev("b", "http1"))));
    assert!(!s.on_revision(Event::InitApply(rev("c", "http1"))));
    assert_eq!(s.entries().len(), 2);
    assert!(s.on_revision(Event::InitDone));
    let keys: Vec<_> = s.entries().keys().map(|k| k.name.as_str()).collect();
    assert_eq!(keys, ["b", "c"]);
    // A re-list with nothing changed changes nothing.
    s.on_revision(Event::Init);
    s.on_revision(Event::InitApply(rev("b", "http1")));
    s.on_revision(Event::InitApply(rev("c", "http1")));
    assert!(!s.on_revision(Event::InitDone));
}

#[test]
fn unlabelled_or_relabelled_objects() {
    let mut s = synced();
    s.on_revision(Event::Apply(rev("a", "http1")));
    s.on_revision(Event::Apply(rev("b", "http1")));
    let eps = [("10.0.0.1", Some(true), false)];
    s.on_private_slice(Event::Apply(slice(
        "x",
        "a",
        "Private",
        ("http", 8012),
        &eps,
    )));
    assert_eq!(s.entries()[&key("a")].endpoints.ready.len(), 1);
    // The same slice now labelled for b moves.
    s.on_private_slice(Event::Apply(slice(
        "x",
        "b",
        "Private",
        ("http", 8012),
        &eps,
    )));
    assert!(s.entries()[&key("a")].endpoints.ready.is_empty());
    assert_eq!(s.entries()[&key("b")].endpoints.ready.len(), 1);
    // Losing the label drops it.
    let mut unlabelled = slice("x", "b", "Private", ("http", 8012), &eps);
    unlabelled.metadata.labels = None;
    s.on_private_slice(Event::Apply(unlabelled));
    assert!(s.entries()[&key("b")].endpoints.ready.is_empty());
}

#[test]
fn null_endpoints_and_ports_from_go_nil_slices() {
    let mut s = synced();
    s.on_revision(Event::Apply(rev("r", "http1")));
    let empty: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "r-a", "resourceVersion": "1",
            "labels": {REVISION_LABEL: "r"}},
        "addressType": "IPv4", "endpoints": null, "ports": null
    }))
    .expect("null lists parse");
    s.on_private_slice(Event::Apply(empty));
    let e = &s.entries()[&key("r")];
    assert!(e.endpoints.ready.is_empty() && e.endpoints.not_ready.is_empty());
}

#[test]
fn core_endpoints_subsets_count_only_with_the_protocols_port() {
    // Knative's RBAC path: core/v1 Endpoints. Each subset has its own ports; as in Knative's
    // endpointsToDests only subsets carrying the protocol's port name give dests, with that
    // subset's port number.
    let mut s = synced();
    s.on_revision(Event::Apply(rev("r", "http1")));
    let eps: K8sEndpoints = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "r-private", "resourceVersion": "1",
            "labels": {REVISION_LABEL: "r"}},
        "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "10.0.0.2"}],
             "ports": [{"name": "http", "port": 8012}, {"name": "https", "port": 8112}]},
            {"addresses": [{"ip": "10.0.0.3"}], "ports": [{"name": "http2", "port": 8013}]},
            {"addresses": [{"ip": "fd00::4"}], "ports": [{"name": "http", "port": 9012}]}
        ]
    }))
    .expect("valid endpoints");
    assert!(s.on_private_slice(Event::Apply(eps)));
    let e = &s.entries()[&key("r")];
    assert_eq!(e.endpoints.ready, ["10.0.0.1:8012", "[fd00::4]:9012"]);
    assert_eq!(e.endpoints.not_ready, ["10.0.0.2:8012"]);
}
