//! `activator simulate --closed-loop`: the trace gives only demand; simulated pods follow the
//! KPA's decisions, start after a delay and serve a bounded number of requests each.
//!
//! The KPA is the same [`autoscaler::RevisionAutoscaler`] `activator local` runs, fed as local
//! mode feeds it: the activator fronts every request, so it reports all of them (held and
//! proxied) each second and on the first request while at zero (the poke); every ready pod's
//! scrape nets to zero (its requests all came through the activator). Time advances in 10 ms
//! steps; the autoscaler ticks every second and after a poke.
//!
//! Demand is either concurrency per second (`{"t": 3, "concurrency": 50}`: that many clients
//! in the system from `t` until the next line, like `hey -c 50`) or request arrivals
//! (`{"t": 3.25, "duration": 0.1}`: one request arriving at `t` needing `duration` seconds of a
//! pod). A request waits in the activator (held) while every ready pod is at capacity.

use std::collections::VecDeque;
use std::time::Duration;

use autoscaler::{RevisionAutoscaler, RevisionSettings, Stat};

/// Simulation step.
const STEP: Duration = Duration::from_millis(10);

/// What the trace asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Demand {
    /// `(t, concurrency)`: the level holds until the next line.
    Concurrency(Vec<(f64, f64)>),
    /// `(arrival t, service seconds)`.
    Requests(Vec<(f64, f64)>),
}

impl Demand {
    fn end(&self) -> f64 {
        match self {
            Demand::Concurrency(v) | Demand::Requests(v) => v.last().map_or(0.0, |(t, _)| *t),
        }
    }
}

/// Parses a demand trace (JSON lines); the error names the line.
///
/// # Errors
/// A line that is not `{"t", "concurrency"}` or `{"t", "duration"}`, times going back, or both
/// kinds mixed.
pub fn parse(text: &str) -> Result<Demand, String> {
    let mut conc = Vec::new();
    let mut reqs = Vec::new();
    let mut last_t = 0.0f64;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {n}: invalid JSON: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("line {n}: expected a JSON object"))?;
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "t" | "concurrency" | "duration"))
        {
            return Err(format!(
                "line {n}: unknown field {k:?} (closed loop: \"t\" with \"concurrency\" or \"duration\")"
            ));
        }
        let num = |k: &str| {
            obj.get(k).map(|x| {
                x.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f <= 1e7)
                    .ok_or_else(|| format!("line {n}: {k:?} must be a number in [0, 1e7]"))
            })
        };
        let t = num("t").ok_or_else(|| format!("line {n}: missing \"t\""))??;
        if t < last_t {
            return Err(format!("line {n}: \"t\" goes back ({t} < {last_t})"));
        }
        last_t = t;
        match (
            num("concurrency").transpose()?,
            num("duration").transpose()?,
        ) {
            (Some(c), None) => conc.push((t, c)),
            (None, Some(d)) => reqs.push((t, d)),
            _ => {
                return Err(format!(
                    "line {n}: needs exactly one of \"concurrency\" or \"duration\""
                ));
            }
        }
        if !conc.is_empty() && !reqs.is_empty() {
            return Err(format!(
                "line {n}: mixes concurrency lines and request lines"
            ));
        }
    }
    match (conc.is_empty(), reqs.is_empty()) {
        (false, _) => Ok(Demand::Concurrency(conc)),
        (true, false) => Ok(Demand::Requests(reqs)),
        (true, true) => Err("the trace has no demand".to_owned()),
    }
}

/// The simulated pods.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// A new pod is ready this long after the KPA asks for it.
    pub pod_start_delay: Duration,
    /// Requests one pod serves at once (0 = unlimited, Knative's `containerConcurrency: 0`).
    pub pod_capacity: u32,
    /// Ready pods at the start.
    pub initial_pods: i32,
    /// Simulate until this time (at least the trace's last line + 1 s).
    pub until: Option<f64>,
}

/// One second of the simulation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tick {
    /// End of the second.
    pub t: f64,
    /// Requests in the system (held + in pods), averaged over the second.
    pub demand: f64,
    /// The KPA's desired pods after this second's tick.
    pub desired: i32,
    /// Ready pods at the end of the second.
    pub ready: i32,
    /// Pods asked for (ready and starting).
    pub pods: i32,
    /// Requests held in the activator, averaged over the second.
    pub held: f64,
    /// Panic mode.
    pub panic: bool,
    /// Requests that started service this second (request traces).
    pub started: u64,
    /// Their mean wait in the activator, ms.
    pub wait_ms_mean: f64,
    /// Their longest wait, ms.
    pub wait_ms_max: f64,
}

/// Totals over the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Requests served (request traces).
    pub requests: u64,
    /// Of which waited at all.
    pub held_requests: u64,
    /// Longest wait, ms.
    pub wait_ms_max: f64,
    /// Mean wait over all requests, ms.
    pub wait_ms_mean: f64,
    /// Most pods ready at once.
    pub max_ready: i32,
    /// Seconds at which panic mode started and ended.
    pub panic_transitions: Vec<(f64, bool)>,
}

/// Runs the closed loop.
pub fn run(settings: RevisionSettings, demand: &Demand, p: Params) -> (Vec<Tick>, Summary) {
    let start = Duration::ZERO;
    let mut kpa = RevisionAutoscaler::new(settings, start, p.initial_pods);
    // Ready-at times of the pods asked for (ready when ≤ now).
    let mut pods: Vec<Duration> = vec![start; usize::try_from(p.initial_pods).unwrap_or(0)];
    let end = Duration::from_secs_f64(p.until.unwrap_or(0.0).max(demand.end() + 1.0));
    let mut now = start;
    let mut next_tick = start + Duration::from_secs(1);
    // Request mode state.
    let arrivals: Vec<(f64, f64)> = match demand {
        Demand::Requests(r) => r.clone(),
        Demand::Concurrency(_) => Vec::new(),
    };
    let mut next_arrival = 0usize;
    let mut queue: VecDeque<(Duration, Duration)> = VecDeque::new();
    let mut serving: Vec<Duration> = Vec::new();
    // Per-second accumulators.
    let (mut sum_in, mut sum_held, mut steps, mut arrived_s) = (0.0, 0.0, 0u32, 0u64);
    let (mut started_s, mut wait_sum_s, mut wait_max_s) = (0u64, 0.0f64, 0.0f64);
    let mut summary = Summary {
        requests: 0,
        held_requests: 0,
        wait_ms_max: 0.0,
        wait_ms_mean: 0.0,
        max_ready: 0,
        panic_transitions: Vec::new(),
    };
    let mut wait_total = 0.0;
    let mut was_panic = false;
    let mut poked_since_zero = false;
    let mut ticks = Vec::new();
    // As local mode's loop: the first tick at once, before any demand (a new revision gets its
    // initial scale).
    let mut desired = kpa.tick(start, p.initial_pods, true).desired_pods;
    pods.resize(
        usize::try_from(desired).unwrap_or(0).max(pods.len()),
        start + p.pod_start_delay,
    );
    while now < end {
        now += STEP;
        let ready = i32::try_from(pods.iter().filter(|r| **r <= now).count()).unwrap_or(0);
        let cap = match (ready, p.pod_capacity) {
            (0, _) => 0usize,
            (_, 0) => usize::MAX,
            (r, c) => usize::try_from(r).unwrap_or(0) * c as usize,
        };
        let (in_system, held) = match demand {
            Demand::Concurrency(levels) => {
                let t = now.as_secs_f64();
                let level = levels
                    .iter()
                    .take_while(|(lt, _)| *lt <= t)
                    .last()
                    .map_or(0.0, |(_, c)| *c);
                let served = level.min(cap as f64);
                (level, level - served)
            }
            Demand::Requests(_) => {
                serving.retain(|e| *e > now);
                while next_arrival < arrivals.len()
                    && Duration::from_secs_f64(arrivals[next_arrival].0) <= now
                {
                    let (t, d) = arrivals[next_arrival];
                    queue.push_back((Duration::from_secs_f64(t), Duration::from_secs_f64(d)));
                    next_arrival += 1;
                    arrived_s += 1;
                }
                while serving.len() < cap
                    && let Some((at, d)) = queue.pop_front()
                {
                    let wait = now.saturating_sub(at).as_secs_f64() * 1e3;
                    // A request that found a free pod on arrival waited only for the step.
                    let wait = if wait <= STEP.as_secs_f64() * 1e3 {
                        0.0
                    } else {
                        wait
                    };
                    started_s += 1;
                    wait_sum_s += wait;
                    wait_max_s = wait_max_s.max(wait);
                    summary.requests += 1;
                    summary.held_requests += u64::from(wait > 0.0);
                    wait_total += wait;
                    serving.push(now + d);
                }
                let held = queue.len() as f64;
                (held + serving.len() as f64, held)
            }
        };
        sum_in += in_system;
        sum_held += held;
        steps += 1;
        // The activator's poke: the first demand while no pod is ready decides at once.
        let mut tick_now = now >= next_tick;
        if pods.is_empty() && in_system > 0.0 && !poked_since_zero {
            poked_since_zero = true;
            let stat = activator_stat(in_system, 0.0);
            tick_now |= kpa.record_activator(now, &stat);
        }
        if !pods.is_empty() {
            poked_since_zero = false;
        }
        if !tick_now {
            continue;
        }
        let second = now >= next_tick;
        if second {
            next_tick += Duration::from_secs(1);
            let avg = sum_in / f64::from(steps.max(1));
            kpa.record_activator(now, &activator_stat(avg, arrived_s as f64));
            // Every ready pod's scrape nets to zero: all its requests were proxied.
            let per = if ready > 0 {
                avg / f64::from(ready)
            } else {
                0.0
            };
            let stats: Vec<Stat> = (0..ready)
                .map(|i| Stat {
                    pod_name: format!("pod-{i}"),
                    average_concurrent_requests: per,
                    average_proxied_concurrent_requests: per,
                    ..Stat::default()
                })
                .collect();
            kpa.record_scrape(now, &stats, ready);
        }
        let snap = kpa.tick(now, ready, true);
        desired = snap.desired_pods;
        let want = usize::try_from(desired).unwrap_or(0);
        while pods.len() < want {
            pods.push(now + p.pod_start_delay);
        }
        while pods.len() > want {
            // Not-ready (newest) pods go first, as in local mode.
            let idx = pods
                .iter()
                .rposition(|r| *r > now)
                .unwrap_or(pods.len() - 1);
            pods.remove(idx);
        }
        if snap.panic != was_panic {
            summary
                .panic_transitions
                .push((now.as_secs_f64(), snap.panic));
            was_panic = snap.panic;
        }
        if !second {
            continue;
        }
        let ready = i32::try_from(pods.iter().filter(|r| **r <= now).count()).unwrap_or(0);
        summary.max_ready = summary.max_ready.max(ready);
        let n = f64::from(steps.max(1));
        ticks.push(Tick {
            t: (now.as_secs_f64() * 100.0).round() / 100.0,
            demand: round2(sum_in / n),
            desired,
            ready,
            pods: i32::try_from(pods.len()).unwrap_or(i32::MAX),
            held: round2(sum_held / n),
            panic: snap.panic,
            started: started_s,
            wait_ms_mean: round2(if started_s > 0 {
                wait_sum_s / started_s as f64
            } else {
                0.0
            }),
            wait_ms_max: round2(wait_max_s),
        });
        (sum_in, sum_held, steps, arrived_s) = (0.0, 0.0, 0, 0);
        (started_s, wait_sum_s, wait_max_s) = (0, 0.0, 0.0);
    }
    summary.wait_ms_max = ticks.iter().map(|t| t.wait_ms_max).fold(0.0, f64::max);
    summary.wait_ms_mean = round2(if summary.requests > 0 {
        wait_total / summary.requests as f64
    } else {
        0.0
    });
    let _ = desired;
    (ticks, summary)
}

fn activator_stat(concurrency: f64, requests: f64) -> Stat {
    Stat {
        pod_name: "activator".to_owned(),
        average_concurrent_requests: concurrency,
        request_count: requests,
        ..Stat::default()
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use autoscaler::Config;
    use std::collections::BTreeMap;

    fn settings(target: &str, window: &str) -> RevisionSettings {
        let ann: BTreeMap<String, String> = [
            ("autoscaling.knative.dev/target", target),
            ("autoscaling.knative.dev/window", window),
            // As the seeds' Knative (and examples/autoscale.yaml): 50 clients / 10 = 5 pods.
            (
                "autoscaling.knative.dev/target-utilization-percentage",
                "100",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cfg = Config {
            scale_to_zero_grace_period: Duration::from_secs(1),
            ..Config::default()
        };
        RevisionSettings::from_annotations(&cfg, &ann, 0).expect("settings")
    }

    fn params(delay_ms: u64, capacity: u32) -> Params {
        Params {
            pod_start_delay: Duration::from_millis(delay_ms),
            pod_capacity: capacity,
            initial_pods: 0,
            until: Some(40.0),
        }
    }

    #[test]
    fn fifty_clients_at_target_10_follow_to_five_pods_and_back_to_zero() {
        let d = Demand::Concurrency(vec![(0.0, 50.0), (20.0, 0.0)]);
        let (ticks, summary) = run(settings("10", "6s"), &d, params(500, 0));
        let at = |t: f64| ticks.iter().find(|k| k.t >= t).expect("tick");
        assert_eq!(at(15.0).ready, 5, "{:?}", at(15.0));
        assert_eq!(at(39.0).pods, 0, "{:?}", at(39.0));
        // From zero the first pod is asked for at the first demand (the poke), so it is ready
        // after the start delay: nothing is held after that.
        assert!(at(1.0).held < 50.0, "{:?}", at(1.0));
        assert_eq!(summary.max_ready, 5);
    }

    #[test]
    fn a_longer_pod_start_holds_requests_longer() {
        let reqs: Vec<(f64, f64)> = (0..2000).map(|i| (f64::from(i) * 0.005, 0.1)).collect();
        let d = Demand::Requests(reqs);
        let (_, fast) = run(settings("10", "6s"), &d, params(100, 10));
        let (_, slow) = run(settings("10", "6s"), &d, params(2000, 10));
        assert!(fast.held_requests > 0 && slow.held_requests > fast.held_requests);
        assert!(slow.wait_ms_max >= 1900.0, "{slow:?}");
        assert!(fast.wait_ms_max < slow.wait_ms_max, "{fast:?} {slow:?}");
    }

    #[test]
    fn lower_target_means_more_pods() {
        let d = Demand::Concurrency(vec![(0.0, 50.0), (20.0, 50.0)]);
        let (t10, _) = run(settings("10", "6s"), &d, params(500, 0));
        let (t5, _) = run(settings("5", "6s"), &d, params(500, 0));
        assert_eq!(t10.last().map(|t| t.ready), Some(5));
        assert_eq!(t5.last().map(|t| t.ready), Some(10));
    }

    #[test]
    fn traces_parse_and_bad_ones_name_their_line() {
        assert_eq!(
            parse("{\"t\": 0, \"concurrency\": 5}\n{\"t\": 2, \"concurrency\": 0}\n"),
            Ok(Demand::Concurrency(vec![(0.0, 5.0), (2.0, 0.0)]))
        );
        assert_eq!(
            parse("{\"t\": 0.5, \"duration\": 0.1}\n"),
            Ok(Demand::Requests(vec![(0.5, 0.1)]))
        );
        for (bad, want) in [
            ("{\"t\": 0}", "line 1: needs exactly one"),
            (
                "{\"t\": 1, \"concurrency\": 1}\n{\"t\": 0, \"concurrency\": 1}",
                "line 2: \"t\" goes back",
            ),
            (
                "{\"t\": 0, \"concurrency\": 1}\n{\"t\": 1, \"duration\": 1}",
                "line 2: mixes",
            ),
            ("{\"t\": 0, \"ready_pods\": 1}", "line 1: unknown field"),
            ("", "no demand"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
