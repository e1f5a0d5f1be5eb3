//! Black-box tests of `activator simulate` on the small traces in `tests/traces/`.
#![allow(clippy::unwrap_used)] // test helpers

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn traces() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/traces")
}

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_activator"))
        .current_dir(traces())
        .arg("simulate")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run activator simulate")
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn row(v: &Value) -> (f64, i64, i64, bool) {
    (
        v["t"].as_f64().unwrap(),
        v["desired"].as_i64().unwrap(),
        v["excess_burst_capacity"].as_i64().unwrap(),
        v["panic"].as_bool().unwrap(),
    )
}

#[test]
fn worked_example_panics_holds_and_exits() {
    let out = lines(&sim(&["worked_example.jsonl"]));
    assert_eq!(out.len(), 33, "one output line per input line");
    assert_eq!(
        out[0].as_object().unwrap().len(),
        4,
        "exactly t, desired, excess_burst_capacity, panic"
    );
    assert_eq!(row(&out[0]), (0.0, 7, -361, true));
    // Held at 7 while panicking (until 60 s after the last over-threshold tick, strictly).
    for v in &out[1..31] {
        let (t, d, _, p) = row(v);
        assert_eq!((d, p), (7, true), "t={t}");
    }
    // t=62: panic exits; stable 1 pod but at most halving: floor(7/2) = 3.
    assert_eq!(row(&out[31]), (62.0, 3, 7 * 100 - 211 - 70, false));
    assert_eq!(row(&out[32]), (64.0, 1, 3 * 100 - 211 - 70, false));
}

#[test]
fn raw_trace_goes_to_zero_after_a_stable_window() {
    let out = lines(&sim(&["raw_steady_then_idle.jsonl"]));
    assert_eq!(out.len(), 90);
    assert_eq!(row(&out[0]), (1000.0, 1, 100 - 211 - 70, false));
    let first_zero = out.iter().map(row).find(|r| r.1 == 0).expect("reaches 0");
    // Last load at 1019; the 60 s stable window holds it until 1078 inclusive.
    assert_eq!(first_zero.0, 1079.0);
}

#[test]
fn raw_burst_enters_panic() {
    let out = lines(&sim(&["raw_burst.jsonl"]));
    let (_, d, _, p) = row(&out[9]);
    assert_eq!((d, p), (1, false));
    let (_, d, _, p) = row(&out[10]);
    // Panic window (6 s) average jumps: ceil(avg/70)/1 ≥ 2.
    assert!(p, "panic on the burst");
    assert!(d >= 2, "{d}");
    // Never decreases while panicking.
    let ds: Vec<i64> = out[10..].iter().map(|v| row(v).1).collect();
    assert!(ds.windows(2).all(|w| w[1] >= w[0]), "{ds:?}");
}

#[test]
fn annotations_and_config_change_the_target() {
    // target 10 at 100% utilisation via annotations: 70 concurrency → 7 pods at most rate-limited.
    let out = lines(&sim(&[
        "--annotation",
        "target=10",
        "--annotation",
        "autoscaling.knative.dev/target-utilization-percentage=100",
        "--annotation",
        "target-burst-capacity=0",
        "raw_steady_then_idle.jsonl",
    ]));
    assert_eq!(row(&out[0]), (1000.0, 7, 0, true));
    // Same via the ConfigMap (6 s stable window). The trace keeps 1 ready pod, so the decider
    // panics throughout the load (7 pods / 1 ready ≥ 2) and holds 7 until the first tick strictly
    // after 6 s past the last over-threshold tick (1019): 1026.
    let out = lines(&sim(&[
        "--config",
        "config_fast.yaml",
        "raw_steady_then_idle.jsonl",
    ]));
    assert_eq!(row(&out[0]).1, 7);
    let first_zero = out.iter().map(row).find(|r| r.1 == 0).unwrap();
    assert_eq!(first_zero.0, 1026.0);
    // containerConcurrency caps the total: cc=5 → target 3.5 → ceil(70/3.5) = 20.
    let out = lines(&sim(&[
        "--container-concurrency",
        "5",
        "raw_steady_then_idle.jsonl",
    ]));
    assert_eq!(row(&out[0]).1, 20);
}

#[test]
fn spec_json_and_initial_ready_pods() {
    let out = lines(&sim(&[
        "--spec",
        "spec_target10.json",
        "worked_example.jsonl",
    ]));
    // ceil(450/10) = 45; TBC 0 → EBC 0.
    assert_eq!(row(&out[0]), (0.0, 45, 0, true));
    // Started with 5 ready pods: starts in panic and holds 5 despite no load.
    let out = lines(&sim(&[
        "--spec",
        "spec_target10.json",
        "--initial-ready-pods",
        "5",
        "raw_steady_then_idle.jsonl",
    ]));
    assert_eq!(row(&out[0]), (1000.0, 7, 0, true));
    let out = lines(&sim(&[
        "--initial-ready-pods",
        "5",
        "raw_steady_then_idle.jsonl",
    ]));
    assert_eq!(row(&out[0]).1, 5);
}

#[test]
fn bad_inputs_exit_2_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["bad_line3.jsonl"], "line 3"),
        (
            &["--config", "config_bad.yaml", "worked_example.jsonl"],
            "max-scale-down-rate",
        ),
        (
            &["--annotation", "window=1s", "worked_example.jsonl"],
            "autoscaling.knative.dev/window",
        ),
        (
            &[
                "--annotation",
                "min-scale=x",
                "--annotation",
                "max-scale=-1",
                "worked_example.jsonl",
            ],
            "autoscaling.knative.dev/max-scale",
        ),
        (&["--annotation", "nokv", "worked_example.jsonl"], "nokv"),
        (
            &["--spec", "config_fast.yaml", "worked_example.jsonl"],
            "spec",
        ),
    ];
    for (args, needle) in cases {
        let out = sim(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // The lines before the bad one were printed.
    assert_eq!(
        String::from_utf8_lossy(&sim(&["bad_line3.jsonl"]).stdout)
            .lines()
            .count(),
        2
    );
}

#[test]
fn plot_writes_an_svg() {
    let dir = std::env::temp_dir().join(format!("simulate-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("out.svg");
    let out = sim(&["--plot", svg.to_str().unwrap(), "raw_burst.jsonl"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(100)]);
    assert!(text.contains("desired pods"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rps_metric_and_weighted_algorithm() {
    // RPS: total 200 × 0.7 → target 140; 100 rps → 1 pod.
    let out = lines(&sim(&[
        "--annotation",
        "metric=rps",
        "raw_steady_then_idle.jsonl",
    ]));
    assert_eq!(row(&out[0]).1, 1);
    let out = lines(&sim(&[
        "--annotation",
        "metric=rps",
        "--annotation",
        "target=10",
        "raw_steady_then_idle.jsonl",
    ]));
    // target 10 × 0.7 = 7 → ceil(100/7) = 15.
    assert_eq!(row(&out[0]).1, 15);
    // Weighted-exponential under-reports a young window (m·v): 0.2 × 70 = 14 → 1 pod, and decays
    // instead of dropping to 0 at exactly one window.
    let out = lines(&sim(&[
        "--annotation",
        "class=kpa.autoscaling.knative.dev",
        "--annotation",
        "metric-aggregation-algorithm=weighted-exponential",
        "raw_steady_then_idle.jsonl",
    ]));
    assert_eq!(row(&out[0]).1, 1);
    assert!(out.iter().map(row).any(|r| r.1 == 0));
}

#[test]
fn reads_stdin_and_skips_blank_lines() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_activator"))
        .args(["simulate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"t\": 1.5, \"ready_pods\": 1, \"stable\": 0, \"panic\": 0}\n\n{\"t\": 3, \"ready_pods\": 1, \"stable\": 71, \"panic\": 0}\n")
        .unwrap();
    let out = lines(&child.wait_with_output().unwrap());
    assert_eq!(out.len(), 2);
    assert_eq!(row(&out[0]), (1.5, 0, 100 - 211, false));
    assert_eq!(row(&out[1]), (3.0, 2, 100 - 211, false));
}

/// Knative's own scaling tests build this spec (no stable window, TotalValue, burst capacity).
#[test]
fn spec_with_a_zero_stable_window_is_accepted() {
    let out = lines(&sim(&[
        "--spec",
        "spec_knative_scaling_test.json",
        "raw_steady_then_idle.jsonl",
    ]));
    assert!(!out.is_empty());
    assert!(out.iter().all(|v| v["desired"].as_i64().is_some()));
}

#[test]
fn closed_loop_pods_follow_the_kpa_and_start_after_the_delay() {
    let run = |delay: &str| {
        let out = sim(&[
            "--closed-loop",
            "--annotation",
            "target=10",
            "--annotation",
            "window=6s",
            "--annotation",
            "target-utilization-percentage=100",
            "--pod-start-delay",
            delay,
            "--until",
            "40",
            "closed_50_clients.jsonl",
        ]);
        lines(&out)
    };
    let out = run("500ms");
    let ticks = &out[..out.len() - 1];
    let at = |t: f64| {
        ticks
            .iter()
            .find(|v| v["t"].as_f64().unwrap() >= t)
            .unwrap()
    };
    // 50 clients, target 10 at 100 %: five pods while the demand lasts, none after.
    assert_eq!(at(15.0)["ready"], 5, "{}", at(15.0));
    assert_eq!(at(15.0)["demand"], 50.0);
    assert_eq!(at(15.0)["held"], 0.0);
    assert_eq!(at(39.0)["pods"], 0, "{}", at(39.0));
    // Pods asked for at one tick are ready only after the start delay.
    let slow = run("3s");
    let first_five = |v: &[Value]| {
        v.iter()
            .find(|x| x["ready"] == 5)
            .map(|x| x["t"].as_f64().unwrap())
            .unwrap()
    };
    assert!(first_five(&slow) >= first_five(&out) + 2.0);
    let summary = &out[out.len() - 1]["summary"];
    assert_eq!(summary["max_ready"], 5);
    assert!(summary["panic_transitions"].as_array().unwrap().len() >= 2);
}

#[test]
fn closed_loop_request_trace_reports_waits_and_plots() {
    let svg = std::env::temp_dir().join(format!("closed-{}.svg", std::process::id()));
    let out = lines(&sim(&[
        "--closed-loop",
        "--annotation",
        "target=2",
        "--pod-capacity",
        "2",
        "--pod-start-delay",
        "2s",
        "--plot",
        svg.to_str().unwrap(),
        "closed_requests.jsonl",
    ]));
    let summary = &out[out.len() - 1]["summary"];
    assert_eq!(summary["requests"], 600, "{summary}");
    // Requests arriving before the second pod is ready wait for it (2 s start).
    assert!(summary["held_requests"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        summary["wait_ms_max"].as_f64().unwrap() > 1000.0,
        "{summary}"
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.contains("held in the activator") && plot.contains("ready pods"));
    let _ = std::fs::remove_file(&svg);
}
