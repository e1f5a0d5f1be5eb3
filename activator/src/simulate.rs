//! `activator simulate`: replay a trace against an autoscaler configuration (what-if simulator).
//!
//! Each trace line is one decider tick at `t` seconds. Raw observations
//! (`{"t", "ready_pods", "concurrency", "rps"}`) are recorded into the metric windows first;
//! pre-aggregated lines (`{"t", "ready_pods", "stable", "panic"}`) go straight to the decider.
//! One JSON line is printed per trace line: `{"t", "desired", "excess_burst_capacity", "panic"}`,
//! where `desired` is the decider's desired pod count (Knative's `DeciderStatus.desired_scale`,
//! -1 while unknown). See `docs/autoscaler.md`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub mod closed;

use autoscaler::collector::Collection;
use autoscaler::{Config, Decider, DeciderSpec, DeciderStatus, Observed, RevisionSettings};

/// Simulator arguments.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// A `config-autoscaler` ConfigMap (YAML with `data:`, or a plain key/value map).
    #[arg(long, value_name = "CONFIGMAP.yaml", conflicts_with = "spec")]
    pub config: Option<PathBuf>,
    /// A revision annotation `K=V`; `K` may omit the `autoscaling.knative.dev/` prefix. Repeatable.
    #[arg(long = "annotation", value_name = "K=V", conflicts_with = "spec")]
    pub annotations: Vec<String>,
    /// The revision's containerConcurrency (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "spec")]
    pub container_concurrency: i32,
    /// The decider's resolved spec as JSON (instead of --config/--annotation).
    #[arg(long, value_name = "SPEC.json")]
    pub spec: Option<PathBuf>,
    /// Ready pods when the decider is created (default: the first line's `ready_pods`).
    #[arg(long, value_name = "N")]
    pub initial_ready_pods: Option<i32>,
    /// Draw observed load, desired pods and panic periods as an SVG.
    #[arg(long, value_name = "OUT.svg")]
    pub plot: Option<PathBuf>,
    /// Closed loop: the trace is demand only (`{"t", "concurrency"}` or `{"t", "duration"}`
    /// lines), simulated pods follow the KPA's decisions (see docs/autoscaler.md).
    #[arg(long)]
    pub closed_loop: bool,
    /// Closed loop: a new pod is ready this long after it is asked for.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", requires = "closed_loop")]
    pub pod_start_delay: Duration,
    /// Closed loop: requests one pod serves at once (default: --container-concurrency; 0 =
    /// unlimited).
    #[arg(long, value_name = "N", requires = "closed_loop")]
    pub pod_capacity: Option<u32>,
    /// Closed loop: simulate until this many seconds (default: the trace's end + 1 s).
    #[arg(long, value_name = "SECONDS", requires = "closed_loop")]
    pub until: Option<f64>,
    /// The trace (JSON lines); `-` reads standard input.
    #[arg(value_name = "TRACE.jsonl")]
    pub trace: PathBuf,
}

/// Exit status for invalid input (config, annotation, spec or trace line).
const BAD_INPUT: u8 = 2;

/// Runs the simulator.
pub fn main(args: SimulateArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("activator simulate: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

fn bad(message: impl Into<String>) -> Failure {
    Failure {
        code: BAD_INPUT,
        message: message.into(),
    }
}

/// One parsed trace line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceLine {
    /// Seconds since the trace's epoch.
    pub t: f64,
    /// Ready pods.
    pub ready_pods: i32,
    /// The observation.
    pub kind: TraceKind,
}

/// Raw or pre-aggregated observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceKind {
    /// Revision-wide concurrency and RPS for the second at `t`, recorded into the windows.
    Raw {
        /// Concurrency.
        concurrency: f64,
        /// Requests per second.
        rps: f64,
    },
    /// Stable and panic window averages of the scaling metric, fed to the decider as is.
    Aggregated {
        /// Stable-window average.
        stable: f64,
        /// Panic-window average.
        panic: f64,
    },
}

/// One output line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct OutLine {
    t: serde_json::Number,
    desired: i32,
    excess_burst_capacity: i32,
    panic: bool,
}

/// Parses one trace line (without its line number).
///
/// # Errors
/// What is wrong with it.
pub fn parse_line(line: &str) -> Result<(serde_json::Number, TraceLine), String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "t" | "ready_pods" | "concurrency" | "rps" | "stable" | "panic"
        ) {
            return Err(format!("unknown field {k:?}"));
        }
    }
    let num = |k: &str| -> Result<Option<f64>, String> {
        match obj.get(k) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(Some)
                .ok_or_else(|| format!("{k:?} must be a non-negative number")),
        }
    };
    let t_num = match obj.get("t") {
        Some(serde_json::Value::Number(n)) => n.clone(),
        Some(_) => return Err("\"t\" must be a number (seconds)".to_owned()),
        None => return Err("missing \"t\"".to_owned()),
    };
    let t = num("t")?.ok_or("missing \"t\"")?;
    if t > 1e10 {
        return Err("\"t\" is too large (at most 1e10 seconds)".to_owned());
    }
    let ready = match obj.get("ready_pods") {
        None => return Err("missing \"ready_pods\"".to_owned()),
        Some(x) => x
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n >= 0)
            .ok_or("\"ready_pods\" must be a non-negative integer")?,
    };
    let (c, r, s, p) = (
        num("concurrency")?,
        num("rps")?,
        num("stable")?,
        num("panic")?,
    );
    let kind = match (c.is_some() || r.is_some(), s.is_some() || p.is_some()) {
        (true, true) => {
            return Err(
                "mixes raw (concurrency/rps) and pre-aggregated (stable/panic) fields".to_owned(),
            );
        }
        (false, false) => {
            return Err(
                "needs \"concurrency\"/\"rps\" (raw) or \"stable\"/\"panic\" (pre-aggregated)"
                    .to_owned(),
            );
        }
        (true, false) => TraceKind::Raw {
            concurrency: c.unwrap_or(0.0),
            rps: r.unwrap_or(0.0),
        },
        (false, true) => {
            let (Some(stable), Some(panic)) = (s, p) else {
                return Err("pre-aggregated lines need both \"stable\" and \"panic\"".to_owned());
            };
            TraceKind::Aggregated { stable, panic }
        }
    };
    Ok((
        t_num,
        TraceLine {
            t,
            ready_pods: ready,
            kind,
        },
    ))
}

/// Reads a ConfigMap YAML (`data:` map, or a plain map) into string key/values.
///
/// # Errors
/// A message naming the file or the offending key.
pub fn read_configmap(text: &str) -> Result<BTreeMap<String, String>, String> {
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let map = match &v {
        serde_yaml_ng::Value::Mapping(m) => match m.get("data") {
            Some(serde_yaml_ng::Value::Mapping(d)) => d.clone(),
            Some(serde_yaml_ng::Value::Null) => serde_yaml_ng::Mapping::new(),
            Some(_) => return Err("`data` must be a mapping".to_owned()),
            None if m.contains_key("kind") || m.contains_key("apiVersion") => {
                serde_yaml_ng::Mapping::new()
            }
            None => m.clone(),
        },
        serde_yaml_ng::Value::Null => serde_yaml_ng::Mapping::new(),
        _ => return Err("expected a ConfigMap or a mapping of keys to values".to_owned()),
    };
    let mut out = BTreeMap::new();
    for (k, val) in map {
        let serde_yaml_ng::Value::String(k) = k else {
            return Err("keys must be strings".to_owned());
        };
        let s = match val {
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            _ => return Err(format!("{k}: value must be a string")),
        };
        out.insert(k, s);
    }
    Ok(out)
}

fn settings(args: &SimulateArgs) -> Result<RevisionSettings, Failure> {
    if let Some(path) = &args.spec {
        let text = read(path)?;
        let spec: DeciderSpec = serde_json::from_str(&text)
            .map_err(|e| bad(format!("{}: invalid spec: {e}", path.display())))?;
        spec.check()
            .map_err(|e| bad(format!("{}: invalid spec: {e}", path.display())))?;
        return Ok(RevisionSettings::from_decider_spec(
            &Config::default(),
            spec,
        ));
    }
    let config = match &args.config {
        None => Config::default(),
        Some(path) => {
            let text = read(path)?;
            let data =
                read_configmap(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            Config::from_map(&data).map_err(|e| bad(format!("{}: {e}", path.display())))?
        }
    };
    let mut annotations = BTreeMap::new();
    for kv in &args.annotations {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(format!("--annotation {kv:?}: expected K=V")))?;
        let k = if k.contains('/') {
            k.to_owned()
        } else {
            format!("{}{k}", autoscaler::annotation::GROUP)
        };
        annotations.insert(k, v.to_owned());
    }
    for k in autoscaler::annotation::unknown_keys(&annotations) {
        eprintln!("activator simulate: warning: unknown annotation {k} ignored");
    }
    if args.container_concurrency < 0 {
        return Err(bad("--container-concurrency must be >= 0"));
    }
    RevisionSettings::from_annotations(&config, &annotations, args.container_concurrency)
        .map_err(|e| bad(format!("invalid annotations:\n{e}")))
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure {
        code: 1,
        message: format!("{}: {e}", path.display()),
    })
}

/// A point of the plot.
struct PlotPoint {
    t: f64,
    load: f64,
    stable: f64,
    desired: i32,
    ready: i32,
    panic: bool,
}

fn run_closed(args: &SimulateArgs, s: RevisionSettings) -> Result<(), Failure> {
    let text = if args.trace.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| bad(format!("stdin: {e}")))?
    } else {
        read(&args.trace)?
    };
    let demand = closed::parse(&text).map_err(|e| bad(format!("{}: {e}", args.trace.display())))?;
    let p = closed::Params {
        pod_start_delay: args.pod_start_delay,
        pod_capacity: args
            .pod_capacity
            .unwrap_or(u32::try_from(args.container_concurrency).unwrap_or(0)),
        initial_pods: args.initial_ready_pods.unwrap_or(0),
        until: args.until,
    };
    let (ticks, summary) = closed::run(s.clone(), &demand, p);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let write_err = |e: std::io::Error| Failure {
        code: 1,
        message: format!("stdout: {e}"),
    };
    for t in &ticks {
        serde_json::to_writer(&mut out, t).map_err(|e| write_err(e.into()))?;
        out.write_all(b"\n").map_err(write_err)?;
    }
    serde_json::to_writer(&mut out, &serde_json::json!({ "summary": summary }))
        .map_err(|e| write_err(e.into()))?;
    out.write_all(b"\n").map_err(write_err)?;
    out.flush().map_err(write_err)?;
    if let Some(path) = &args.plot {
        let points: Vec<PlotPoint> = ticks
            .iter()
            .map(|t| PlotPoint {
                t: t.t,
                load: t.demand,
                stable: t.held,
                desired: t.desired.max(0),
                ready: t.ready,
                panic: t.panic,
            })
            .collect();
        plot(
            path,
            &points,
            &s,
            ("demand (in system)", "held in the activator"),
        )
        .map_err(|e| Failure {
            code: 1,
            message: format!("{}: {e}", path.display()),
        })?;
    }
    Ok(())
}

fn run(args: &SimulateArgs) -> Result<(), Failure> {
    let s = settings(args)?;
    if args.closed_loop {
        return run_closed(args, s);
    }
    let reader: Box<dyn BufRead> = if args.trace.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.trace).map_err(|e| Failure {
            code: 1,
            message: format!("{}: {e}", args.trace.display()),
        })?;
        Box::new(std::io::BufReader::new(f))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut sim: Option<(Decider, Collection)> = None;
    let mut status = DeciderStatus::new(&s.decider);
    let mut points = Vec::new();
    let trace = args.trace.display();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(format!("{trace}:{n}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let (t_num, tl) = parse_line(&line).map_err(|e| bad(format!("{trace}: line {n}: {e}")))?;
        let now = Duration::from_secs_f64(tl.t);
        let (decider, coll) = sim.get_or_insert_with(|| {
            let ready0 = args.initial_ready_pods.unwrap_or(tl.ready_pods);
            (
                Decider::new(s.decider.clone(), now, ready0),
                Collection::new(
                    s.algorithm,
                    s.decider.stable_window,
                    s.panic_window,
                    s.scrapes(),
                ),
            )
        });
        let observed = match tl.kind {
            TraceKind::Raw { concurrency, rps } => {
                coll.record_raw(now, concurrency, rps);
                let r = if s.decider.is_rps() {
                    coll.stable_and_panic_rps(now)
                } else {
                    coll.stable_and_panic_concurrency(now)
                };
                r.ok().map(|(stable, panic)| Observed { stable, panic })
            }
            TraceKind::Aggregated { stable, panic } => Some(Observed { stable, panic }),
        };
        let r = decider.scale(now, Some(tl.ready_pods), observed);
        status.apply(r);
        let o = OutLine {
            t: t_num,
            desired: status.desired_scale,
            excess_burst_capacity: status.excess_burst_capacity,
            panic: decider.in_panic(),
        };
        let write_err = |e: std::io::Error| Failure {
            code: 1,
            message: format!("stdout: {e}"),
        };
        serde_json::to_writer(&mut out, &o).map_err(|e| write_err(e.into()))?;
        out.write_all(b"\n").map_err(write_err)?;
        if args.plot.is_some() {
            let load = match tl.kind {
                TraceKind::Raw { concurrency, rps } => {
                    if s.decider.is_rps() {
                        rps
                    } else {
                        concurrency
                    }
                }
                TraceKind::Aggregated { panic, .. } => panic,
            };
            points.push(PlotPoint {
                t: tl.t,
                load,
                stable: observed.map_or(0.0, |o| o.stable),
                desired: status.desired_scale.max(0),
                ready: tl.ready_pods,
                panic: o.panic,
            });
        }
    }
    out.flush().map_err(|e| Failure {
        code: 1,
        message: format!("stdout: {e}"),
    })?;
    if let Some(path) = &args.plot {
        plot(path, &points, &s, ("observed load", "stable average")).map_err(|e| Failure {
            code: 1,
            message: format!("{}: {e}", path.display()),
        })?;
    }
    Ok(())
}

/// `labels`: the two load series (observed and stable; in the closed loop, demand and held).
fn plot(
    path: &Path,
    points: &[PlotPoint],
    s: &RevisionSettings,
    labels: (&str, &str),
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (t0, t1) = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (a.t, b.t.max(a.t + 1.0)),
        _ => (0.0, 1.0),
    };
    let load_max = points
        .iter()
        .map(|p| p.load.max(p.stable))
        .fold(1.0f64, f64::max)
        * 1.1;
    let pods_max = points
        .iter()
        .map(|p| p.desired.max(p.ready))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let metric = if s.decider.is_rps() {
        "requests/s"
    } else {
        "concurrency"
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "activator simulate: target {} {metric}/pod",
                s.decider.target_value
            ),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .right_y_label_area_size(55)
        .build_cartesian_2d(t0..t1, 0.0..load_max)?
        .set_secondary_coord(t0..t1, 0.0..pods_max);
    chart
        .configure_mesh()
        .x_desc("t (s)")
        .y_desc(format!("observed {metric}"))
        .draw()?;
    chart.configure_secondary_axes().y_desc("pods").draw()?;

    // Panic periods as shaded bands.
    let band = RGBColor(255, 200, 200).mix(0.5).filled();
    let mut start: Option<f64> = None;
    let mut prev_t = t0;
    for p in points {
        match (start, p.panic) {
            (None, true) => start = Some(p.t),
            (Some(s0), false) => {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(s0, 0.0), (p.t, load_max)],
                    band,
                )))?;
                start = None;
            }
            _ => {}
        }
        prev_t = p.t;
    }
    if let Some(s0) = start {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(s0, 0.0), (prev_t, load_max)],
            band,
        )))?;
    }
    chart
        .draw_series(LineSeries::new(points.iter().map(|p| (p.t, p.load)), &BLUE))?
        .label(labels.0)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.t, p.stable)),
            &GREEN,
        ))?
        .label(labels.1)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_secondary_series(LineSeries::new(steps(points, |p| p.desired), &RED))?
        .label("desired pods")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_secondary_series(LineSeries::new(steps(points, |p| p.ready), &BLACK))?
        .label("ready pods")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A step function through the points: each value holds until the next tick.
fn steps(points: &[PlotPoint], f: impl Fn(&PlotPoint) -> i32) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push((p.t, f64::from(f(&points[i - 1]))));
        }
        out.push((p.t, f64::from(f(p))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let (_, l) = parse_line(r#"{"t": 1, "ready_pods": 2, "concurrency": 3}"#).unwrap();
        assert_eq!(
            l.kind,
            TraceKind::Raw {
                concurrency: 3.0,
                rps: 0.0
            }
        );
        let (_, l) = parse_line(r#"{"t": 1.5, "ready_pods": 0, "stable": 3, "panic": 4}"#).unwrap();
        assert_eq!(
            l.kind,
            TraceKind::Aggregated {
                stable: 3.0,
                panic: 4.0
            }
        );
        for bad in [
            "nope",
            "[]",
            r#"{"ready_pods": 1, "concurrency": 1}"#,
            r#"{"t": 1, "concurrency": 1}"#,
            r#"{"t": -1, "ready_pods": 1, "concurrency": 1}"#,
            r#"{"t": 1, "ready_pods": 1.5, "concurrency": 1}"#,
            r#"{"t": 1, "ready_pods": 1}"#,
            r#"{"t": 1e11, "ready_pods": 1, "concurrency": 1}"#,
            r#"{"t": 1, "ready_pods": 1, "stable": 1}"#,
            r#"{"t": 1, "ready_pods": 1, "stable": 1, "panic": 1, "rps": 1}"#,
            r#"{"t": 1, "ready_pods": 1, "concurrency": 1, "extra": 1}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configmaps() {
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  stable-window: \"30s\"\n  max-scale-up-rate: 10\n";
        let m = read_configmap(cm).unwrap();
        assert_eq!(m["stable-window"], "30s");
        assert_eq!(m["max-scale-up-rate"], "10");
        assert_eq!(
            read_configmap("enable-scale-to-zero: false\n").unwrap()["enable-scale-to-zero"],
            "false"
        );
        assert!(read_configmap("- a\n").is_err());
    }
}
