//! The activator's request log (activator.md §8.6): one line per request to stdout, rendered
//! from `config-observability`'s `logging.request-log-template` when
//! `logging.enable-request-log` is `"true"`. Written when the response ends (its body's end, or
//! the end of a `101` tunnel), so `.Response.Size` and `.Response.Latency` are final; the
//! latency of a request held outside hyper counts from its arrival.
//!
//! As in Knative: `.Revision.PodName`/`.PodIP` and `.TraceID` are empty in the activator, and
//! probes and 404s for unknown revisions are never logged (they are answered before this stage).

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use http::Request;
use hyper::body::Incoming;
use shared::http::body::Tally;
use shared::telemetry::reqlog::{Entry, Revision, Template};
use tokio::time::Instant;

use crate::throttler::RevisionThrottler;

/// Where rendered lines go instead of stdout (`activator local` prints them its own way),
/// with the time the request was held in the activator, if it was, and the pod's address.
pub type Sink = fn(&str, Option<u64>, Option<&str>);

/// The `ip:port` of the pod that answered, in the response's extensions while a request log is
/// on (`.Revision.PodIP` stays empty, as in Knative's activator).
#[derive(Debug, Clone)]
pub struct PodAddr(pub String);

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends every rendered line to `sink` (once per process; later calls are ignored).
pub fn set_sink(sink: Sink) {
    let _ = SINK.set(sink);
}

/// One request's log line, written when this is dropped at the end of the response.
#[derive(Debug)]
pub struct Line {
    template: Arc<Template>,
    revision: Revision,
    entry: Entry,
    start: Instant,
    held_ms: Option<u64>,
    pod: Option<String>,
}

impl Line {
    /// What is known when the request arrives.
    pub fn start(
        template: Arc<Template>,
        req: &Request<Incoming>,
        throttler: &RevisionThrottler,
        start: Instant,
    ) -> Self {
        let spec = throttler.spec();
        let key = &throttler.key;
        Self {
            entry: template.entry(req),
            template,
            revision: Revision {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                service: spec.service.clone(),
                configuration: spec.configuration.clone(),
                pod_name: String::new(),
                pod_ip: String::new(),
            },
            start,
            held_ms: None,
            pod: None,
        }
    }

    /// The address of the pod that answered.
    pub fn set_pod(&mut self, pod: Option<String>) {
        self.pod = pod;
    }

    /// How long the request was held (`X-Knative-Activator-Hold-Ms` of the response).
    pub fn set_held_ms(&mut self, ms: Option<u64>) {
        self.held_ms = ms;
    }

    /// The response's status code.
    pub fn set_code(&mut self, code: u16) {
        self.entry.code = code;
    }
}

impl Tally for Line {
    fn add(&mut self, bytes: u64) {
        self.entry.size += bytes;
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.entry.latency = self.start.elapsed().as_secs_f64();
        let line = self.template.render(&self.entry, &self.revision);
        if let Some(sink) = SINK.get() {
            sink(&line, self.held_ms, self.pod.as_deref());
            return;
        }
        // One write per line to stdout, as Knative's synchronised file writer.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}
