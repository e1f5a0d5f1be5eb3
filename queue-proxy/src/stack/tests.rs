use super::*;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use shared::breaker::BreakerParams;
use tower_test::mock;

fn ok_resp(body: &'static str) -> Resp {
    Response::new(boxed(Full::new(Bytes::from_static(body.as_bytes()))))
}

/// tower-test's mock must be polled ready before each call; our layers assume always-ready
/// services, so the tests put this adapter in between.
#[derive(Clone)]
struct Ready(mock::Mock<Request<()>, Resp>);

impl Service<Request<()>> for Ready {
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFut<Resp, BoxError>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<()>) -> Self::Future {
        let mut m = self.0.clone();
        Box::pin(async move {
            tower::ServiceExt::ready(&mut m).await?;
            m.call(req).await
        })
    }
}

fn pair() -> (Ready, mock::Handle<Request<()>, Resp>) {
    let (m, h) = mock::pair::<Request<()>, Resp>();
    (Ready(m), h)
}

fn req() -> Request<()> {
    Request::get("/").body(()).unwrap()
}

#[tokio::test]
async fn breaker_admits_cc_queues_ten_cc_and_rejects_beyond() {
    let (inner, mut handle) = pair();
    let breaker = Breaker::new(BreakerParams::for_container_concurrency(1));
    let mut svc = BreakerLayer::new(inner, Some(breaker.clone()), None);
    let mut pending = Vec::new();
    for _ in 0..11 {
        pending.push(tokio::spawn(svc.call(req())));
    }
    // The 12th is rejected at once, without waiting.
    let err = svc.call(req()).await.unwrap_err();
    assert!(shared::error::is_caused_by::<QueueFull>(err.as_ref()));
    assert_eq!(rescue(&err).status(), StatusCode::SERVICE_UNAVAILABLE);
    // Exactly one reached the app.
    let (_, send) = handle.next_request().await.unwrap();
    tokio::task::yield_now().await;
    assert!(
        futures_util::FutureExt::now_or_never(handle.next_request()).is_none(),
        "a second request reached the app while CC=1 was taken"
    );
    send.send_response(ok_resp("first"));
    let first = pending.remove(0).await.unwrap().unwrap();
    // Headers are back but the body is not done: the permit is still held.
    tokio::task::yield_now().await;
    assert!(futures_util::FutureExt::now_or_never(handle.next_request()).is_none());
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "first");
    // Body ended: the next queued request goes through.
    let (_, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap()
        .unwrap();
    send.send_response(ok_resp("second"));
    drop(pending);
}

#[tokio::test]
async fn client_going_away_frees_a_queued_slot_and_an_admitted_one_once_the_app_answers() {
    let (inner, mut handle) = pair();
    let breaker = Breaker::new(BreakerParams {
        queue_depth: 1,
        max_concurrency: 1,
        initial_capacity: 1,
    });
    let mut svc = BreakerLayer::new(inner, Some(breaker.clone()), None);
    let running = tokio::spawn(svc.call(req()));
    let (_, _send) = handle.next_request().await.unwrap();
    let queued = svc.call(req());
    assert_eq!(breaker.in_flight(), 2);
    drop(queued);
    assert_eq!(
        breaker.in_flight(),
        1,
        "a dropped waiter gives its slot back"
    );
    running.abort();
    let _ = running.await;
    // The app still works on the abandoned request: CC holds at the app until it answers.
    tokio::task::yield_now().await;
    assert_eq!(
        breaker.in_flight(),
        1,
        "an abandoned request keeps its slot while the app works"
    );
    _send.send_response(ok_resp("late"));
    for _ in 0..100 {
        if breaker.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        breaker.in_flight(),
        0,
        "the slot is released once the app answered and the body was read"
    );
}

#[tokio::test]
async fn kubelet_probes_bypass_the_breaker() {
    let (inner, mut handle) = pair();
    let breaker = Breaker::new(BreakerParams {
        queue_depth: 1,
        max_concurrency: 1,
        initial_capacity: 1,
    });
    let mut svc = BreakerLayer::new(inner, Some(breaker), None);
    let _busy = (tokio::spawn(svc.call(req())), tokio::spawn(svc.call(req())));
    let _ = handle.next_request().await.unwrap();
    let probe = Request::get("/")
        .header("k-kubelet-probe", "queue")
        .body(())
        .unwrap();
    let p = tokio::spawn(svc.call(probe));
    let (r, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap()
        .unwrap();
    assert!(r.headers().contains_key("k-kubelet-probe"));
    send.send_response(ok_resp("probe"));
    assert_eq!(p.await.unwrap().unwrap().status(), StatusCode::OK);
}

fn timeouts(total: u64, start: Option<u64>, idle: Option<u64>) -> Timeouts {
    Timeouts {
        total: Duration::from_secs(total),
        response_start: start.map(Duration::from_secs),
        idle: idle.map(Duration::from_secs),
    }
}

#[tokio::test(start_paused = true)]
async fn total_timeout_before_headers_is_504_and_counts_queue_time() {
    let (inner, _handle) = pair();
    let mut svc = Timeout::new(inner, timeouts(2, None, None));
    let t = Instant::now();
    let err = svc.call(req()).await.unwrap_err();
    assert_eq!(Instant::now() - t, Duration::from_secs(2));
    let resp = rescue(&err);
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "request timeout");
}

#[tokio::test(start_paused = true)]
async fn response_start_timeout_fires_first() {
    let (inner, _handle) = pair();
    let mut svc = Timeout::new(inner, timeouts(10, Some(1), None));
    let t = Instant::now();
    assert!(svc.call(req()).await.is_err());
    assert_eq!(Instant::now() - t, Duration::from_secs(1));
}

/// A body that yields one chunk per entry, after the given delay.
fn slow_body(chunks: Vec<(u64, &'static str)>) -> QpBody {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
    tokio::spawn(async move {
        for (delay, c) in chunks {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if tx
                .send_data(Bytes::from_static(c.as_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    body.boxed_unsync()
}

async fn run_body(t: Timeouts, chunks: Vec<(u64, &'static str)>) -> (StatusCode, Bytes) {
    let (inner, mut handle) = pair();
    let mut svc = Timeout::new(inner, t);
    let call = tokio::spawn(svc.call(req()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(slow_body(chunks)));
    let resp = call.await.unwrap().unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(start_paused = true)]
async fn total_timeout_after_headers_appends_request_timeout() {
    let (s, b) = run_body(
        timeouts(2, None, None),
        vec![(500, "partial "), (500, "response"), (5000, "never")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, "partial responserequest timeout");
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_tracks_gaps_between_writes() {
    let (_, b) = run_body(
        timeouts(100, None, Some(1)),
        vec![(500, "foo"), (500, "bar"), (500, "baz"), (500, "test")],
    )
    .await;
    assert_eq!(b, "foobarbaztest", "writes under I keep the request alive");
    let (_, b) = run_body(
        timeouts(100, None, Some(1)),
        vec![(500, "foo"), (2000, "late")],
    )
    .await;
    assert_eq!(b, "foorequest timeout");
}

#[test]
fn forwarded_shim_table() {
    #[allow(clippy::type_complexity)]
    let cases: &[(&[(&str, &str)], Option<&str>)] = &[
        (
            &[
                ("x-forwarded-for", "127.0.0.1, ::1"),
                ("x-forwarded-host", "h"),
                ("x-forwarded-proto", "p"),
            ],
            Some("for=127.0.0.1;host=h;proto=p, for=\"[::1]\""),
        ),
        (
            &[
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-host", "h"),
                ("x-forwarded-proto", "p"),
            ],
            Some("for=127.0.0.1;host=h;proto=p"),
        ),
        (
            &[("x-forwarded-for", "127.0.0.1, ::1")],
            Some("for=127.0.0.1, for=\"[::1]\""),
        ),
        (
            &[
                ("x-forwarded-for", "127.0.0.1, ::1"),
                ("x-forwarded-proto", "p"),
            ],
            Some("for=127.0.0.1;proto=p, for=\"[::1]\""),
        ),
        (
            &[
                ("x-forwarded-for", "127.0.0.1, ::1"),
                ("x-forwarded-host", "h"),
            ],
            Some("for=127.0.0.1;host=h, for=\"[::1]\""),
        ),
        (&[("x-forwarded-host", "h")], Some("host=h")),
        (&[("x-forwarded-proto", "p")], Some("proto=p")),
        (
            &[("x-forwarded-host", "h"), ("x-forwarded-proto", "p")],
            Some("host=h;proto=p"),
        ),
        (&[("x-forwarded-for", ",,")], Some("for=, for=, for=")),
        (
            &[("forwarded", "for=x"), ("x-forwarded-for", "1.1.1.1")],
            None,
        ),
        (&[], None),
    ];
    for (hs, want) in cases {
        let mut h = http::HeaderMap::new();
        for (k, v) in *hs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        assert_eq!(forwarded_value(&h).as_deref(), *want, "{hs:?}");
    }
}

/// Counts concurrent calls and answers after a delay.
#[derive(Clone)]
struct Counting {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Service<Request<u64>> for Counting {
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFut<Resp, BoxError>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<u64>) -> Self::Future {
        let (now, max) = (self.now.clone(), self.max.clone());
        Box::pin(async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(*req.body())).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok(ok_resp("ok"))
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn breaker_layer_never_admits_more_than_cc(cc in 1usize..4, delays in proptest::collection::vec(0u64..20, 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let max = rt.block_on(async move {
            let inner = Counting { now: Arc::default(), max: Arc::default() };
            let max = inner.max.clone();
            let breaker = Breaker::new(BreakerParams::for_container_concurrency(cc));
            let svc = BreakerLayer::new(inner, Some(breaker), None);
            let mut tasks = Vec::new();
            for d in delays {
                let mut svc = svc.clone();
                tasks.push(tokio::spawn(async move {
                    if let Ok(r) = svc.call(Request::new(d)).await {
                        let _ = r.into_body().collect().await;
                    }
                }));
                tokio::time::sleep(Duration::from_millis(d / 4)).await;
            }
            for t in tasks { let _ = t.await; }
            max.load(Ordering::SeqCst)
        });
        prop_assert!(max <= cc, "max {} > cc {}", max, cc);
        prop_assert!(max >= 1);
    }
}
