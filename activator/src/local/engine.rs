//! The container engine (podman or docker) that runs containers given by `image` alone.
//!
//! Both engines take the same CLI for what local mode needs (`run -d`, `logs -f`, `stop -t`,
//! `rm -f`, `ps -a --filter label=…`, `inspect --format`), so one type drives either. Every
//! container is labelled with the pid of the `activator local` that started it: leftovers of a
//! run that was killed are found and removed at the next start, and a running instance never
//! touches another live instance's containers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Label on every container local mode starts; its value is the owning `activator local` pid.
pub const OWNER_LABEL: &str = "dev.knative.local/owner";

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// `podman` (tried first when none is chosen).
    Podman,
    /// `docker`.
    Docker,
}

impl EngineKind {
    fn program(self) -> &'static str {
        match self {
            EngineKind::Podman => "podman",
            EngineKind::Docker => "docker",
        }
    }
}

/// Why no engine can be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Nothing usable on `PATH`.
    #[error(
        "revision {revision} runs image {image:?} but {wanted} is not on PATH (install podman or docker, or give the container a `command`)"
    )]
    NotFound {
        /// The first revision that needs an engine.
        revision: String,
        /// Its image.
        image: String,
        /// What was looked for.
        wanted: String,
    },
}

/// A found engine and the options every call gets.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Podman or docker.
    pub kind: EngineKind,
    /// The executable.
    pub program: PathBuf,
    /// OCI runtime to ask for (`--runtime`), e.g. `runc` where the default `crun` cannot run.
    pub runtime: Option<String>,
    /// This process's pid, the value of [`OWNER_LABEL`].
    pub owner: u32,
}

impl Engine {
    /// `choice`, or podman then docker, found on `PATH`.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] naming the revision and image that needed it.
    pub fn find(
        choice: Option<EngineKind>,
        runtime: Option<String>,
        revision: &str,
        image: &str,
    ) -> Result<Self, EngineError> {
        let kinds = match choice {
            Some(k) => vec![k],
            None => vec![EngineKind::Podman, EngineKind::Docker],
        };
        for kind in &kinds {
            if let Some(program) = on_path(kind.program()) {
                return Ok(Engine {
                    kind: *kind,
                    program,
                    runtime,
                    owner: std::process::id(),
                });
            }
        }
        Err(EngineError::NotFound {
            revision: revision.to_owned(),
            image: image.to_owned(),
            wanted: kinds
                .iter()
                .map(|k| k.program())
                .collect::<Vec<_>>()
                .join(" or "),
        })
    }

    /// A command for the engine with the global options (podman takes `--runtime` before the
    /// subcommand; docker takes it on `run`).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        if let (EngineKind::Podman, Some(r)) = (self.kind, &self.runtime) {
            c.args(["--runtime", r]);
        }
        c.stdin(Stdio::null()).kill_on_drop(true);
        c
    }

    /// Options of `run` that depend on the engine and the host.
    ///
    /// The container gets this process's open-files and process-count limits, as a local
    /// process app would. Besides, podman's defaults (nofile 1048576, a large nproc) are above
    /// what some hosts let a container raise to, and `run` then fails with "error setting
    /// rlimit type 7 (or 6): operation not permitted"; the host's own limits fit.
    pub fn run_options(&self) -> Vec<String> {
        let mut o = Vec::new();
        if let (EngineKind::Docker, Some(r)) = (self.kind, &self.runtime) {
            o.extend(["--runtime".to_owned(), r.clone()]);
        }
        use rustix::process::{Resource, getrlimit};
        // A process count above `pid_max` means nothing, and podman's own helpers run capped
        // there: asking for more fails the same way ("rlimit type 6").
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        for (name, res, cap) in [
            ("nofile", Resource::Nofile, None),
            ("nproc", Resource::Nproc, pid_max),
        ] {
            let l = getrlimit(res);
            let v = |x: Option<u64>| match (x, cap) {
                (Some(n), Some(c)) => n.min(c).to_string(),
                (Some(n), None) | (None, Some(n)) => n.to_string(),
                (None, None) => "-1".to_owned(),
            };
            o.extend([
                "--ulimit".to_owned(),
                format!("{name}={}:{}", v(l.current), v(l.maximum)),
            ]);
        }
        o
    }

    /// Runs `args`, bounded; stdout on success, the engine's message on failure.
    pub async fn output(&self, args: &[&str], within: Duration) -> Result<String, String> {
        let mut c = self.command();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        match tokio::time::timeout(within, c.output()).await {
            Err(_) => Err(format!(
                "{} {} did not finish within {within:?}",
                self.program.display(),
                args.join(" ")
            )),
            Ok(Err(e)) => Err(format!("{}: {e}", self.program.display())),
            Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(Ok(o)) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        }
    }

    /// Names of the containers carrying [`OWNER_LABEL`], with their owner pid.
    async fn labelled(&self) -> Result<Vec<(String, u32)>, String> {
        let filter = format!("label={OWNER_LABEL}");
        let names = self
            .output(
                &["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
                Duration::from_secs(30),
            )
            .await?;
        let names: Vec<&str> = names.split_whitespace().collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let format = format!("{{{{.Name}}}} {{{{index .Config.Labels \"{OWNER_LABEL}\"}}}}");
        let mut args = vec!["inspect", "--format", format.as_str()];
        args.extend(names.iter().copied());
        let out = self.output(&args, Duration::from_secs(30)).await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (name, owner) = l.trim().split_once(' ')?;
                // docker prints `/name`.
                Some((name.trim_start_matches('/').to_owned(), owner.parse().ok()?))
            })
            .collect())
    }

    /// Removes containers left by an `activator local` that is gone (killed before it could
    /// clean up). Failures are logged: the engine may be unusable, which the pods will report.
    pub async fn remove_leftovers(&self) {
        match self.labelled().await {
            Ok(found) => {
                let stale: Vec<String> = found
                    .into_iter()
                    .filter(|(_, owner)| *owner == self.owner || !is_local_activator(*owner))
                    .map(|(n, _)| n)
                    .collect();
                if !stale.is_empty() {
                    tracing::info!(containers = %stale.join(","), "removing containers left by an earlier run");
                    self.remove(&stale).await;
                }
            }
            Err(e) => {
                tracing::warn!(engine = %self.program.display(), error = %e, "cannot list containers; is the engine working?");
            }
        }
    }

    /// Removes every container this process started (the last step of a stop).
    pub async fn remove_own(&self) {
        if let Ok(found) = self.labelled().await {
            let own: Vec<String> = found
                .into_iter()
                .filter(|(_, owner)| *owner == self.owner)
                .map(|(n, _)| n)
                .collect();
            if !own.is_empty() {
                self.remove(&own).await;
            }
        }
    }

    /// `rm -f` the containers (no error when one is already gone).
    pub async fn remove(&self, names: &[String]) {
        let mut args = vec!["rm", "-f"];
        args.extend(names.iter().map(String::as_str));
        if let Err(e) = self.output(&args, Duration::from_secs(60)).await {
            tracing::warn!(containers = %names.join(","), error = %e, "cannot remove containers");
        }
    }
}

/// `/proc/<pid>` exists and is an `activator` (a reused pid of another program is not an owner).
fn is_local_activator(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "activator")
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Knative's `imagePullPolicy` as the engine's `--pull`. Unset means `missing`, not
/// Kubernetes' `Always` for `:latest`: locally built images (`dev.local/…`) have no registry
/// to pull from, and the engine's own store is what a developer means to run.
pub fn pull_policy(policy: Option<&str>) -> &'static str {
    match policy {
        Some("Always") => "always",
        Some("Never") => "never",
        _ => "missing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies_map_to_the_engines_flags() {
        assert_eq!(pull_policy(None), "missing");
        assert_eq!(pull_policy(Some("IfNotPresent")), "missing");
        assert_eq!(pull_policy(Some("Always")), "always");
        assert_eq!(pull_policy(Some("Never")), "never");
    }

    #[test]
    fn run_options_carry_the_runtime_for_docker_and_the_hosts_limits() {
        let e = Engine {
            kind: EngineKind::Podman,
            program: PathBuf::from("/nonexistent/podman"),
            runtime: Some("runc".into()),
            owner: 1,
        };
        let o = e.run_options();
        assert!(!o.contains(&"--runtime".to_owned()), "{o:?}");
        assert!(o.iter().any(|a| a.starts_with("nofile=")), "{o:?}");
        let d = Engine {
            kind: EngineKind::Docker,
            ..e
        };
        assert_eq!(d.run_options()[..2], ["--runtime", "runc"]);
    }

    #[test]
    fn a_pid_that_is_not_a_running_activator_owns_nothing() {
        assert!(!is_local_activator(u32::MAX));
        // This test binary is running, but it is not an `activator`.
        assert!(!is_local_activator(std::process::id()));
    }
}
