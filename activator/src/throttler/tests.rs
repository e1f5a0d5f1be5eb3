//! Knative's throttler table cases (activator.md §10, `net/throttler_test.go`).

use super::*;

#[test]
fn pick_indices_tables() {
    assert_eq!(pick_indices(10, 0, 3), (0, 3, 1));
    assert_eq!(pick_indices(10, 1, 3), (3, 6, 1));
    assert_eq!(pick_indices(10, 2, 3), (6, 9, 1));
    assert_eq!(pick_indices(2, 2, 3), (0, 1, 0));
    for i in 0..5 {
        assert_eq!(pick_indices(150, i, 5), (i * 30, i * 30 + 30, 0));
    }
}

#[test]
fn assign_slice_tables() {
    let empty: Vec<u8> = vec![];
    assert!(assign_slice(&empty, 0, 3).is_empty());
    let three = vec!["a", "b", "c"];
    assert_eq!(assign_slice(&three, 0, 1), three);
    assert_eq!(assign_slice(&three, -1, 3), three);
    assert_eq!(assign_slice(&three, 1, 3), vec!["b"]);
    assert_eq!(
        assign_slice(&["x"], 5, 9),
        vec!["x"],
        "a single tracker is always assigned"
    );
    // 6 pods, 4 activators, index 0: {ip0, ip4}.
    let six = vec![0, 1, 2, 3, 4, 5];
    assert_eq!(assign_slice(&six, 0, 4), vec![0, 4]);
    assert_eq!(assign_slice(&six, 1, 4), vec![1, 5]);
    assert_eq!(assign_slice(&six, 2, 4), vec![2]);
    assert_eq!(assign_slice(&six, 3, 4), vec![3]);
    // More activators than pods: round robin over pods.
    assert_eq!(assign_slice(&["p0", "p1"], 2, 3), vec!["p0"]);
}

#[test]
fn capacity_tables() {
    // Cluster-IP style: cc × backends.
    assert_eq!(calculate_capacity(10, 0, 1, 0), 10);
    assert_eq!(calculate_capacity(10, 0, 10, 0), 100);
    assert_eq!(calculate_capacity(10, 0, 100, 0), 1000);
    // Divided by activators, minimum 1.
    assert_eq!(calculate_capacity(10, 0, 10, 5), 20);
    assert_eq!(calculate_capacity(10, 0, 10, 200), 1);
    assert_eq!(calculate_capacity(10, 0, 6, 4), 15);
    assert_eq!(calculate_capacity(10, 0, 0, 1), 0);
    // cc = 0: closed or open only.
    assert_eq!(calculate_capacity(0, 0, 0, 1), 0);
    assert_eq!(calculate_capacity(0, 3, 3, 1), MAX_CAPACITY);
    // With trackers.
    assert_eq!(calculate_capacity(10, 1, 1, 0), 10);
    assert_eq!(calculate_capacity(10, 2, 2, 1), 20);
    // Clamped.
    assert_eq!(calculate_capacity(u32::MAX, 0, 10, 1), MAX_CAPACITY);
}

#[test]
fn infer_index_tables() {
    let ips = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(infer_index(&ips(&[]), "10.0.0.1"), -1);
    assert_eq!(infer_index(&ips(&["10.0.0.2"]), "10.0.0.1"), -1);
    assert_eq!(
        infer_index(&ips(&["10.0.0.3", "10.0.0.1", "10.0.0.2"]), "10.0.0.1"),
        0
    );
    assert_eq!(
        infer_index(&ips(&["10.0.0.3", "10.0.0.1", "10.0.0.2"]), "10.0.0.2"),
        1
    );
    assert_eq!(
        infer_index(&ips(&["10.0.0.3", "10.0.0.1", "10.0.0.2"]), "10.0.0.3"),
        2
    );
    // Lexicographic, not numeric (Knative quirk §12.5).
    assert_eq!(infer_index(&ips(&["10.0.0.10", "10.0.0.9"]), "10.0.0.9"), 1);
}

fn throttler(cc: u32, limit: usize) -> Arc<RevisionThrottler> {
    RevisionThrottler::new(
        RevisionKey::new("ns", "r"),
        RevisionSpec {
            container_concurrency: cc,
            ..RevisionSpec::default()
        },
        QueueLimits::new(limit, usize::MAX),
        ClientOptions::default(),
        RevisionGauges::default(),
    )
}

fn dests(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("127.0.0.{}:80", i + 1)).collect()
}

#[tokio::test]
async fn capacity_follows_pods_and_activators() {
    let t = throttler(10, 100);
    assert_eq!(t.capacity(), 0);
    t.update_dests(&dests(6), None, 0);
    assert_eq!(t.capacity(), 60);
    let acts: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}")).collect();
    t.update_activators(&acts, "10.0.0.1");
    assert_eq!(t.capacity(), 20, "6 pods / 4 activators: index 0 gets 2");
    assert_eq!(t.assigned_dests(), vec!["127.0.0.1:80", "127.0.0.5:80"]);
    t.update_activators(&acts, "10.0.0.3");
    assert_eq!(t.capacity(), 10);
    // Not listed: the previous index is kept.
    t.update_activators(&acts[..1], "10.0.0.9");
    assert_eq!(t.activator_index(), (2, 4));
    t.update_dests(&[], None, 0);
    assert_eq!(t.capacity(), 0);
    // Cluster IP: cc × ready / activators.
    t.update_dests(&[], Some("127.0.0.99:80"), 6);
    assert_eq!(t.capacity(), 15);
    assert_eq!(t.assigned_dests(), vec!["127.0.0.99:80"]);
    // The cluster IP is limited by the revision capacity only, not by one pod's CC.
    let mut leases = Vec::new();
    for _ in 0..15 {
        let l = tokio::time::timeout(Duration::from_secs(5), t.acquire(0))
            .await
            .unwrap()
            .unwrap();
        leases.push(l);
    }
    assert!(leases.iter().all(|l| l.cluster_ip));
    assert!(
        tokio::time::timeout(Duration::from_millis(20), t.acquire(0))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn cc_zero_is_open_or_closed() {
    let t = throttler(0, 100);
    assert_eq!(t.capacity(), 0);
    t.update_dests(&dests(3), None, 0);
    assert_eq!(t.capacity(), MAX_CAPACITY);
    assert_eq!(t.assigned_dests().len(), 3);
}

#[tokio::test]
async fn held_requests_flow_when_a_pod_appears() {
    let t = throttler(1, 100);
    let waiter = tokio::spawn({
        let t = Arc::clone(&t);
        async move {
            t.acquire(10)
                .await
                .map(|l| (l.tracker().dest.clone(), l.waited))
        }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while t.waiting() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    t.update_dests(&dests(1), None, 0);
    let (dest, waited) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(dest, "127.0.0.1:80");
    assert!(waited);
    assert_eq!(t.waiting(), 0);
}

#[tokio::test]
async fn cc_enforced_per_pod_and_first_available_packs() {
    let t = throttler(2, 100);
    t.update_dests(&dests(2), None, 0);
    let a = t.acquire(0).await.unwrap();
    let b = t.acquire(0).await.unwrap();
    let c = t.acquire(0).await.unwrap();
    assert_eq!(a.tracker().dest, "127.0.0.1:80");
    assert_eq!(b.tracker().dest, "127.0.0.1:80");
    assert_eq!(c.tracker().dest, "127.0.0.2:80");
    let _d = t.acquire(0).await.unwrap();
    let fifth = tokio::time::timeout(Duration::from_millis(30), t.acquire(0)).await;
    assert!(fifth.is_err(), "capacity 4 = cc 2 × 2 pods");
    drop(a);
    let e = tokio::time::timeout(Duration::from_secs(5), t.acquire(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.tracker().dest, "127.0.0.1:80");
}

#[tokio::test]
async fn queue_bound_by_count_and_bytes() {
    let t = throttler(1, 2);
    let _w1 = tokio::spawn({
        let t = Arc::clone(&t);
        async move { t.acquire(0).await.map(drop) }
    });
    let _w2 = tokio::spawn({
        let t = Arc::clone(&t);
        async move { t.acquire(0).await.map(drop) }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while t.waiting() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert!(
        t.acquire(0).await.is_err(),
        "third waiter over the count bound"
    );
    assert_eq!(t.waiting(), 2, "the rejected request left no trace");

    let limits = QueueLimits::new(100, 100);
    let t = RevisionThrottler::new(
        RevisionKey::new("ns", "b"),
        RevisionSpec::default(),
        Arc::clone(&limits),
        ClientOptions::default(),
        RevisionGauges::default(),
    );
    assert!(t.acquire(101).await.is_err(), "over the byte bound");
    let held = tokio::spawn({
        let t = Arc::clone(&t);
        async move { t.acquire(60).await.map(drop) }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while limits.held_bytes() < 60 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert!(t.acquire(60).await.is_err());
    // A client that goes away frees its bytes at once.
    held.abort();
    let _ = held.await;
    assert_eq!(limits.held_bytes(), 0);
    assert_eq!(t.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn requeued_request_wakes_on_a_release_not_on_the_timer() {
    let t = throttler(1, 10);
    let start = tokio::time::Instant::now();
    // A release after the failed pick (the `seen` value): no wait at all.
    let seen = t.released.load(Ordering::SeqCst);
    t.wake_requeued();
    t.requeue(seen).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Waiting: the next release wakes it (paused clock: the 50 ms guard would show).
    let seen = t.released.load(Ordering::SeqCst);
    let waiter = tokio::spawn({
        let t = Arc::clone(&t);
        async move { t.requeue(seen).await }
    });
    while t.requeued.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    t.wake_requeued();
    waiter.await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(t.requeued.load(Ordering::SeqCst), 0);
    // Nobody woke it: the guard timer ends the wait.
    t.requeue(t.released.load(Ordering::SeqCst)).await;
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}
