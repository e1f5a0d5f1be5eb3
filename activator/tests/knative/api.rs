//! `test/conformance/api/v1`: routes, traffic, concurrency and timeouts as a client sees them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::{Local, Svc, request, shared};

/// `n` requests from `threads` threads (upstream sends `ConcurrentRequests` = 200 at once);
/// the count of each body.
fn distribution(local: &Local, host: &str, n: usize, threads: usize) -> BTreeMap<String, usize> {
    let per = n / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (port, host) = (local.port, host.to_owned());
            std::thread::spawn(move || {
                (0..per)
                    .map(|_| {
                        let r = request(port, "GET", "/", &host, &[], "").expect("request");
                        format!("{} {}", r.status, r.body.trim_end())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut out = BTreeMap::new();
    for h in handles {
        for b in h.join().expect("client thread") {
            *out.entry(b).or_insert(0) += 1;
        }
    }
    out
}

/// TestBlueGreenRoute (test/conformance/api/v1/blue_green_test.go): two revisions split 50/50
/// with tags `blue` and `green`. Over `ConcurrentRequests` (200) requests the main host serves
/// each at least `MinSplitPercentage` (25 %), and each tag's host serves only its revision
/// (`MinDirectPercentage` 100 %).
#[test]
fn test_blue_green_route() {
    let _m = shared();
    let blue = Svc::new("bluegreen", "helloworld").env("TARGET", "blue");
    let green = Svc::new("bluegreen", "helloworld")
        .env("TARGET", "green")
        .traffic(&[
            "{revisionName: bluegreen-00001, percent: 50, tag: blue}",
            "{revisionName: bluegreen-00002, percent: 50, tag: green}",
        ]);
    let local = Local::start("bluegreen", &[blue.yaml(), green.yaml()], &[]);
    local.wait_ready("bluegreen-00001", 1, Duration::from_secs(30));
    local.wait_ready("bluegreen-00002", 1, Duration::from_secs(30));
    let d = distribution(&local, "bluegreen.default.example.com", 200, 4);
    let (b, g) = (d.get("200 Hello blue!"), d.get("200 Hello green!"));
    assert!(
        b.is_some_and(|n| *n >= 50) && g.is_some_and(|n| *n >= 50) && d.len() == 2,
        "{d:?}"
    );
    for (tag, want) in [("blue", "200 Hello blue!"), ("green", "200 Hello green!")] {
        let d = distribution(
            &local,
            &format!("{tag}-bluegreen.default.example.com"),
            200,
            4,
        );
        assert_eq!(d.get(want), Some(&200), "{tag}: {d:?}");
    }
}

/// TestSingleConcurrency (test/conformance/api/v1/single_threaded_test.go): with
/// `containerConcurrency: 1`, 5 clients sending for the duration never make the app see two
/// requests at once, and every answer is a 200. Wall time scaled: 20 s → 4 s (each request
/// holds the app 500 ms, so about 8 requests per pod still meet the limit).
#[test]
fn test_single_concurrency() {
    let _m = shared();
    let mut svc = Svc::new("single", "singlethreaded");
    svc.container_concurrency = Some(1);
    let local = Local::start("single", &[svc.yaml()], &[]);
    local.wait_ready("single-00001", 1, Duration::from_secs(30));
    let until = Instant::now() + Duration::from_secs(4);
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let port = local.port;
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                while Instant::now() < until {
                    match request(port, "GET", "/", "single.default.example.com", &[], "") {
                        Ok(r) if r.status == 200 && r.body == "One at a time" => {}
                        Ok(r) => bad.push(format!("{} {}", r.status, r.body)),
                        Err(e) => bad.push(e.to_string()),
                    }
                }
                bad
            })
        })
        .collect();
    for h in handles {
        let bad = h.join().expect("client");
        assert!(bad.is_empty(), "{bad:?}\n{}", local.log());
    }
}

/// TestRevisionTimeout (test/conformance/api/v1/revision_timeout_test.go), the three cases, on
/// the `timeout` app. Wall time scaled by 1/5: `timeoutSeconds` 10 → 2; an initial sleep of
/// 2 s → 400 ms answers 200; 12 s → 2.4 s answers 504; a first byte at once and 15 s → 3 s of
/// body answers 200 (upstream checks only the status: as Knative's timeout handler does, the
/// body is then cut at the timeout with `activator request timeout` appended).
#[test]
fn test_revision_timeout() {
    let _m = shared();
    let mut svc = Svc::new("timeout", "timeout");
    svc.timeout_seconds = Some(2);
    let local = Local::start("timeout", &[svc.yaml()], &[]);
    local.wait_ready("timeout-00001", 1, Duration::from_secs(30));
    for (name, initial, sleep, want) in [
        ("does not exceed timeout seconds", 400, 0, 200),
        ("exceeds timeout seconds", 2400, 0, 504),
        ("writes first byte before timeout", 0, 3000, 200),
    ] {
        let path = format!("/?initialTimeout={initial}&timeout={sleep}");
        let r = local.get(&svc.host(), &path, &[]);
        assert_eq!(r.status, want, "{name}: {r:?}");
        if sleep == 0 && want == 200 {
            assert_eq!(r.body, "Slept for 0 milliseconds", "{name}");
        }
    }
}

/// TestRouteCreation (test/conformance/api/v1/route_test.go), the data-plane part: a route to
/// the latest revision serves the first revision, and after an update the second, each also
/// under its own tag; a named-revision target keeps serving the revision it names.
#[test]
fn test_route_creation() {
    let _m = shared();
    let v1 = Svc::new("route", "helloworld").env("TARGET", "one");
    let v2 = Svc::new("route", "helloworld")
        .env("TARGET", "two")
        .traffic(&[
            "{latestRevision: true, percent: 100}",
            "{revisionName: route-00001, tag: first}",
            "{revisionName: route-00002, tag: second}",
        ]);
    let local = Local::start("route", &[v1.yaml(), v2.yaml()], &[]);
    local.wait_ready("route-00002", 1, Duration::from_secs(30));
    let main = local.get("route.default.example.com", "/", &[]);
    assert_eq!((main.status, main.body.as_str()), (200, "Hello two!\n"));
    for (tag, want) in [("first", "Hello one!\n"), ("second", "Hello two!\n")] {
        let r = local.get(&format!("{tag}-route.default.example.com"), "/", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, want), "{tag}");
    }
}

/// What a host answers over `n` requests: the set of bodies.
fn bodies(local: &Local, host: &str, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| {
            let r = local.get(host, "/", &[]);
            assert_eq!(r.status, 200, "{host}: {r:?}");
            r.body
        })
        .collect()
}

/// TestServiceWithTrafficSplit (test/conformance/api/v1/service_test.go). Each upstream update
/// is one more document; each step is a run of `activator local` over the documents so far.
/// The `latest` tag is an entry with only a tag (issue 16 item 1). Steps: (1) `current` = rev 1
/// at 100 %, `latest` tag; (2) a second revision: `latest` serves it, the main host still rev 1;
/// (3) 50/50 between `current` (rev 1) and `candidate` (rev 2); (4) a third revision: `latest`
/// serves it, the split unchanged; (5) `candidate` becomes the latest revision at 50 %.
#[test]
fn test_service_with_traffic_split() {
    let _m = shared();
    let svc = |target: &str, traffic: &[&str]| {
        Svc::new("split", "helloworld")
            .env("TARGET", target)
            .traffic(traffic)
    };
    let (one, two, three) = ("Hello one!\n", "Hello two!\n", "Hello three!\n");
    let t1 = [
        "{tag: current, revisionName: split-00001, percent: 100}",
        "{tag: latest}",
    ];
    let t3 = [
        "{tag: current, revisionName: split-00001, percent: 50}",
        "{tag: candidate, revisionName: split-00002, percent: 50}",
        "{tag: latest}",
    ];
    let t5 = [
        "{tag: current, revisionName: split-00001, percent: 50}",
        "{tag: candidate, percent: 50}",
        "{tag: latest}",
    ];
    // (documents, bodies of the main host, (tag, body) of each tag host)
    type Step<'a> = (Vec<Svc>, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let steps: Vec<Step<'_>> = vec![
        (
            vec![svc("one", &t1)],
            vec![one],
            vec![("latest", one), ("current", one)],
        ),
        (
            vec![svc("one", &t1), svc("two", &t1)],
            vec![one],
            vec![("latest", two), ("current", one)],
        ),
        (
            vec![svc("one", &t1), svc("two", &t3)],
            vec![one, two],
            vec![("candidate", two), ("latest", two), ("current", one)],
        ),
        (
            vec![svc("one", &t1), svc("two", &t3), svc("three", &t3)],
            vec![one, two],
            vec![("latest", three), ("candidate", two), ("current", one)],
        ),
        (
            vec![svc("one", &t1), svc("two", &t3), svc("three", &t5)],
            vec![one, three],
            vec![("latest", three), ("candidate", three), ("current", one)],
        ),
    ];
    for (i, (docs, main, tags)) in steps.into_iter().enumerate() {
        let yaml: Vec<String> = docs.iter().map(Svc::yaml).collect();
        let local = Local::start(&format!("split-{i}"), &yaml, &[]);
        let latest = format!("split-{:05}", docs.len());
        local.wait_ready(&latest, 1, Duration::from_secs(30));
        for r in 1..docs.len() {
            local.wait_ready(&format!("split-{r:05}"), 1, Duration::from_secs(30));
        }
        // As upstream's `CheckEndpointState`, wait (briefly) for the routes to settle on the
        // revisions that just became ready, then check.
        let want: std::collections::BTreeSet<String> =
            main.iter().map(|s| (*s).to_owned()).collect();
        let mut hosts = vec![("split.default.example.com".to_owned(), want, 20)];
        for (tag, body) in tags {
            hosts.push((
                format!("{tag}-split.default.example.com"),
                [body.to_owned()].into(),
                5,
            ));
        }
        for (host, want, n) in hosts {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while bodies(&local, &host, n) != want && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(bodies(&local, &host, n), want, "step {}: {host}", i + 1);
        }
    }
}

/// TestServiceBYOName (test/conformance/api/v1/service_test.go): a Service whose template names
/// its revision (`<svc>-byoname`) serves under that revision; changing the image (here: the
/// template) under the same name is refused.
#[test]
fn test_service_byo_name() {
    let _m = shared();
    let mut v1 = Svc::new("byoname", "helloworld").env("TARGET", "one");
    v1.revision = Some("byoname-byoname".into());
    {
        let local = Local::start("byoname", &[v1.yaml()], &[]);
        local.wait_ready("byoname-byoname", 1, Duration::from_secs(30));
        let r = local.get(&v1.host(), "/", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "Hello one!\n"));
    }
    let mut v2 = v1.clone();
    v2.command = vec!["runtime".into()];
    let err = crate::harness::start_fails("byoname-update", &[v1.yaml(), v2.yaml()]);
    assert!(
        err.contains("\"byoname-byoname\" is declared twice with different templates"),
        "{err}"
    );
}

/// TestServiceCreateAndUpdate (test/conformance/api/v1/service_test.go), the data plane: the
/// Service serves revision 1's text, then, updated (a second document), revision 2's; a prober
/// running the whole time (upstream's `RunRouteProber`, asserted with `AssertProberDefault`)
/// sees no failure while the route moves. Label and annotation updates (metadata only) are
/// left out: no new revision, nothing on the request path.
#[test]
fn test_service_create_and_update() {
    let _m = shared();
    let v1 = Svc::new("createupdate", "helloworld").env("TARGET", "one");
    let v2 = Svc::new("createupdate", "helloworld").env("TARGET", "two");
    let local = Local::start("createupdate", &[v1.yaml(), v2.yaml()], &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (port, host, stop) = (local.port, v1.host(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let r = request(port, "GET", "/", &host, &[], "");
                seen.push(r.map(|r| (r.status, r.body)).map_err(|e| e.to_string()));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    local.wait_ready("createupdate-00002", 1, Duration::from_secs(30));
    crate::harness::wait_until(Duration::from_secs(10), "revision 2's text", || {
        local.get(&v1.host(), "/", &[]).body == "Hello two!\n"
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let seen = prober.join().expect("prober");
    let bad: Vec<_> = seen
        .iter()
        .filter(|r| !matches!(r, Ok((200, b)) if b == "Hello one!\n" || b == "Hello two!\n"))
        .collect();
    assert!(bad.is_empty(), "prober saw {bad:?} of {}", seen.len());
}
