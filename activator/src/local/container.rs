//! A pod's app as a container: `run -d` through the engine, `logs -f` for its output (and its
//! exit: the stream ends when the container stops), `stop -t <grace>` then `rm -f` to end it.
//!
//! Started in a task so the revision loop never waits for the engine: the pod is not ready
//! until its queue-proxy passes the app's probe anyway.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, OWNER_LABEL, pull_policy};

/// What one container runs.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// `kn-local-<revision>-<n>`.
    pub name: String,
    /// The pod's name, for the output prefix.
    pub pod: String,
    /// The image.
    pub image: String,
    /// `imagePullPolicy`.
    pub pull: Option<String>,
    /// `args` (replace the image's CMD).
    pub args: Vec<String>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// Env inside the container (`PORT`, `K_*`, the container's `env`).
    pub env: Vec<(String, String)>,
    /// Host port on 127.0.0.1 published to `container_port`.
    pub host_port: u16,
    /// The `containerPort`.
    pub container_port: u16,
    /// SIGTERM → SIGKILL grace on stop (the revision's timeout, Knative's
    /// `terminationGracePeriodSeconds`).
    pub grace: Duration,
}

/// A running (or starting) container.
#[derive(Debug)]
pub struct ContainerApp {
    /// The container's name.
    pub name: String,
    exited: Arc<AtomicBool>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ContainerApp {
    /// Starts the container in the background; `engine_after` is set to spawn → the engine
    /// reporting the container started.
    pub fn start(
        engine: Arc<Engine>,
        spec: ContainerSpec,
        spawned: Instant,
        engine_after: Arc<OnceLock<Duration>>,
    ) -> Self {
        let exited = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let name = spec.name.clone();
        let task = tokio::spawn(run(
            engine,
            spec,
            spawned,
            engine_after,
            Arc::clone(&exited),
            stop.clone(),
        ));
        ContainerApp {
            name,
            exited,
            stop,
            task,
        }
    }

    /// Whether the container failed to start or has stopped.
    pub fn exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    /// Stops (SIGTERM, the grace, then SIGKILL, by the engine) and removes the container.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// `run -d` arguments (without the engine's global options).
pub fn run_args(engine: &Engine, s: &ContainerSpec) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        s.name.clone(),
        "--label".into(),
        format!("{OWNER_LABEL}={}", engine.owner),
        "--pull".into(),
        pull_policy(s.pull.as_deref()).into(),
        "-p".into(),
        format!("127.0.0.1:{}:{}", s.host_port, s.container_port),
    ];
    a.extend(engine.run_options());
    for (k, v) in &s.env {
        a.push("-e".into());
        a.push(format!("{k}={v}"));
    }
    if let Some(w) = &s.working_dir {
        a.push("--workdir".into());
        a.push(w.clone());
    }
    a.push(s.image.clone());
    a.extend(s.args.iter().cloned());
    a
}

async fn run(
    engine: Arc<Engine>,
    spec: ContainerSpec,
    spawned: Instant,
    engine_after: Arc<OnceLock<Duration>>,
    exited: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let args = run_args(&engine, &spec);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // Bounded generously: a pull over a slow network can take minutes.
    let started = engine.output(&refs, Duration::from_secs(600)).await;
    if let Err(e) = started {
        let present = engine
            .output(
                &["image", "inspect", "--format", "{{.Id}}", &spec.image],
                Duration::from_secs(30),
            )
            .await
            .is_ok();
        if present {
            tracing::error!(pod = %spec.pod, image = %spec.image, error = %e, "container did not start");
        } else {
            tracing::error!(pod = %spec.pod, image = %spec.image, pull = pull_policy(spec.pull.as_deref()), error = %e,
                "image is not in the engine's store and could not be pulled (build it, e.g. `podman build -t IMAGE .`)");
        }
        exited.store(true, Ordering::Release);
        // A failed `run` may still have created the container.
        engine.remove(std::slice::from_ref(&spec.name)).await;
        return;
    }
    let _ = engine_after.set(spawned.elapsed());
    let mut logs = engine.command();
    logs.args(["logs", "-f", &spec.name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match logs.spawn() {
        Ok(mut child) => {
            super::pod::pipe_lines(spec.pod.clone(), &mut child);
            tokio::select! {
                _ = child.wait() => exited.store(true, Ordering::Release),
                () = stop.cancelled() => {}
            }
        }
        Err(e) => {
            tracing::warn!(pod = %spec.pod, error = %e, "cannot follow the container's output");
            stop.cancelled().await;
        }
    }
    let t = spec.grace.as_secs().to_string();
    if let Err(e) = engine
        .output(
            &["stop", "-t", &t, &spec.name],
            spec.grace + Duration::from_secs(30),
        )
        .await
    {
        tracing::warn!(pod = %spec.pod, error = %e, "container stop");
    }
    engine.remove(std::slice::from_ref(&spec.name)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::engine::EngineKind;

    #[test]
    fn run_publishes_on_loopback_labels_and_passes_env_workdir_and_args() {
        let engine = Engine {
            kind: EngineKind::Podman,
            program: "podman".into(),
            runtime: None,
            owner: 42,
        };
        let spec = ContainerSpec {
            name: "kn-local-hello-00001-1".into(),
            pod: "hello-00001-deployment-1".into(),
            image: "dev.local/hello:local".into(),
            pull: Some("Never".into()),
            args: vec!["-v".into()],
            working_dir: Some("/srv".into()),
            env: vec![("PORT".into(), "8080".into())],
            host_port: 40001,
            container_port: 8080,
            grace: Duration::from_secs(300),
        };
        let args = run_args(&engine, &spec).join(" ");
        assert!(
            args.starts_with(
                "run -d --name kn-local-hello-00001-1 --label dev.knative.local/owner=42 \
                 --pull never -p 127.0.0.1:40001:8080 --ulimit nofile="
            ),
            "{args}"
        );
        assert!(
            args.ends_with("-e PORT=8080 --workdir /srv dev.local/hello:local -v"),
            "{args}"
        );
    }
}
