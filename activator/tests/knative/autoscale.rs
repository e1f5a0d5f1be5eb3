//! `test/e2e/autoscale_test.go` and `test/e2e/activator_test.go`: scaling through the
//! activator and the embedded KPA. Except TestActivatorOverload, these hold load for tens of
//! seconds, so they are `#[ignore]`d here and run by `scripts/knative-e2e.sh`, one at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Local, Svc, exclusive, request, shared, wait_until};

/// Upstream's `containerConcurrency` and `targetUtilization` for the autoscale tests
/// (test/e2e/autoscale.go): target 6 at 70 %.
const TARGET: &str = "6";
const UTILIZATION: &str = "70";

/// `clients` threads sending `GET path` until `stop`; (ok, errors).
fn load(
    port: u16,
    host: &str,
    path: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let handles = (0..clients)
        .map(|_| {
            let (host, path, stop) = (host.to_owned(), path.to_owned(), Arc::clone(&stop));
            let (ok, bad) = (Arc::clone(&ok), Arc::clone(&bad));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match request(port, "GET", &path, &host, &[], "") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    (ok, bad, handles)
}

fn autoscale_svc(name: &str) -> Svc {
    Svc::new(name, "autoscale")
        .ann("target", TARGET)
        .ann("target-utilization-percentage", UTILIZATION)
}

/// Upstream `AssertAutoscaleUpToNumPods` (quick): load sized for `target_pods` (pods × 6 ×
/// 0.7 concurrent requests of 100 ms... rounded up) until `target_pods` pods are ready, within
/// `within`; no request may fail.
fn scale_up_to(local: &Local, svc: &Svc, rev: &str, target_pods: i64, within: Duration) {
    let clients = usize::try_from(target_pods).unwrap_or(1) * 6 * 7 / 10 + 1;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad, handles) = load(
        local.port,
        &svc.host(),
        "/?sleep=100",
        clients,
        Arc::clone(&stop),
    );
    let deadline = Instant::now() + within;
    while local.ready_pods(rev) < target_pods && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Release);
    for h in handles {
        let _ = h.join();
    }
    let pods = local.ready_pods(rev);
    assert!(
        pods >= target_pods,
        "{pods} ready pods after {within:?}, want {target_pods}"
    );
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "failed requests ({} ok)",
        ok.load(Ordering::Relaxed)
    );
}

/// TestAutoscaleUpDownUp (test/e2e/autoscale_test.go), both aggregation algorithms: up to 2
/// pods under load (within 60 s), down to zero without load (upstream `assertScaleDown`), and up
/// to 2 again from zero. Upstream's windows (60 s stable) are used as Knative's defaults are,
/// except the stable window, set to Knative's minimum (6 s) as upstream's e2e config does.
#[test]
#[ignore = "long (≈ 1 min): scripts/knative-e2e.sh"]
fn test_autoscale_up_down_up() {
    let _m = exclusive();
    for algo in ["linear", "weightedExponential"] {
        let name = format!("updownup-{}", algo.to_ascii_lowercase());
        let svc = autoscale_svc(&name).ann("metric-aggregation-algorithm", algo);
        let rev = format!("{name}-00001");
        let local = Local::start(&name, &[svc.yaml()], &[]);
        local.wait_ready(&rev, 1, Duration::from_secs(30));
        scale_up_to(&local, &svc, &rev, 2, Duration::from_secs(60));
        wait_until(Duration::from_secs(60), "scale to zero", || {
            local.pod_count(&rev) == 0
        });
        scale_up_to(&local, &svc, &rev, 2, Duration::from_secs(60));
    }
}

/// TestFastScaleToZero (test/e2e/autoscale_test.go): with `target-burst-capacity: -1` and the
/// minimum window (6 s), an idle revision's ready endpoints empty within the scale-to-zero grace
/// period (here `--scale-to-zero-grace-period 1s`) + 15 s of the Service being ready.
#[test]
#[ignore = "long (≈ 20 s): scripts/knative-e2e.sh"]
fn test_fast_scale_to_zero() {
    let _m = exclusive();
    let svc = autoscale_svc("fastzero").ann("target-burst-capacity", "-1");
    let local = Local::start("fastzero", &[svc.yaml()], &[]);
    local.wait_ready("fastzero-00001", 1, Duration::from_secs(30));
    let t = Instant::now();
    wait_until(
        Duration::from_secs(1 + 15) + Duration::from_secs(6),
        "no ready pods",
        || local.ready_pods("fastzero-00001") == 0,
    );
    eprintln!("scaled to zero in {:?}", t.elapsed());
}

/// TestActivationScale (test/e2e/autoscale_test.go): target 6 at 70 %, `activation-scale: 5`:
/// the revision starts, scales to zero, and one request from zero sets the desired scale to 5.
#[test]
#[ignore = "long (≈ 20 s): scripts/knative-e2e.sh"]
fn test_activation_scale() {
    let _m = exclusive();
    let svc = Svc::new("activation", "autoscale")
        .ann("target", TARGET)
        .ann("target-utilization-percentage", UTILIZATION)
        .ann("activation-scale", "5");
    let rev = "activation-00001";
    let local = Local::start("activation", &[svc.yaml()], &[]);
    local.wait_ready(rev, 1, Duration::from_secs(30));
    wait_until(Duration::from_secs(60), "scale to zero", || {
        local.pod_count(rev) == 0
    });
    let r = local.get(&svc.host(), "/", &[]);
    assert_eq!(r.status, 200);
    wait_until(Duration::from_secs(30), "desired scale 5", || {
        local.desired_pods(rev) == 5
    });
    local.wait_ready(rev, 5, Duration::from_secs(60));
}

/// TestActivatorOverload (test/e2e/activator_test.go): `containerConcurrency: 1`, `max-scale:
/// 10`, `target-burst-capacity: -1`, 100 concurrent requests of 300 ms each; every one answers
/// 200.
#[test]
fn test_activator_overload() {
    let _m = shared();
    let mut svc = Svc::new("overload", "timeout")
        .ann("max-scale", "10")
        .ann("target-burst-capacity", "-1");
    svc.container_concurrency = Some(1);
    let local = Local::start("overload", &[svc.yaml()], &[]);
    local.wait_ready("overload-00001", 1, Duration::from_secs(30));
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let (port, host) = (local.port, svc.host());
            std::thread::spawn(move || {
                request(port, "GET", "/?timeout=300", &host, &[], "").map(|r| r.status)
            })
        })
        .collect();
    let statuses: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let bad: Vec<_> = statuses.iter().filter(|s| !matches!(s, Ok(200))).collect();
    assert!(bad.is_empty(), "{bad:?}\n{}", local.log());
}

/// TestAutoscaleUpCountPods (test/e2e/autoscale_test.go), concurrency metric: load sized for
/// 2, then 3, then 4 pods (target 6 at 70 %); at each step the ready pods never exceed n + 1
/// while scaling and settle in [n, n + 1] (upstream's bounds), within 90 s each.
#[test]
#[ignore = "long (≈ 1 min): scripts/knative-e2e.sh"]
fn test_autoscale_up_count_pods() {
    let _m = exclusive();
    let svc = autoscale_svc("countpods");
    let rev = "countpods-00001";
    let local = Local::start("countpods", &[svc.yaml()], &[]);
    local.wait_ready(rev, 1, Duration::from_secs(30));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let mut clients = 0;
    for n in 2..=4_i64 {
        // Upstream's load: n pods × 6 × 0.7 concurrent requests.
        let want = usize::try_from(n).unwrap_or(1) * 6 * 7 / 10 + 1;
        let (_, bad, h) = load(
            local.port,
            &svc.host(),
            "/?sleep=100",
            want - clients,
            Arc::clone(&stop),
        );
        clients = want;
        handles.extend(h);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let pods = local.ready_pods(rev);
            assert!(pods <= n + 1, "{pods} ready pods while scaling to {n}");
            if pods >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pods} ready pods after 90 s, want {n}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        for _ in 0..6 {
            let pods = local.ready_pods(rev);
            assert!((n..=n + 1).contains(&pods), "{pods} ready pods at {n}");
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(bad.load(Ordering::Relaxed), 0, "failed requests at {n}");
    }
    stop.store(true, Ordering::Release);
    for h in handles {
        let _ = h.join();
    }
}
