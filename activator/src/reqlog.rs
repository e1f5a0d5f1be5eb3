//! The activator's request log (activator.md §8.6): one line per request to stdout, rendered
//! from `config-observability`'s `logging.request-log-template` when
//! `logging.enable-request-log` is `"true"`. Written when the response ends (its body's end, or
//! the end of a `101` tunnel), so `.Response.Size` and `.Response.Latency` are final; the
//! latency of a request held outside hyper counts from its arrival.
//!
//! As in Knative: `.Revision.PodName`/`.PodIP` and `.TraceID` are empty in the activator, and
//! probes and 404s for unknown revisions are never logged (they are answered before this stage).

use std::io::Write as _;
use std::sync::Arc;

use http::Request;
use http::header::{HOST, REFERER, USER_AGENT};
use http_body::Body as _;
use hyper::body::Incoming;
use shared::http::body::Tally;
use shared::http::headers;
use shared::http::server::ConnInfo;
use shared::telemetry::reqlog::{Entry, Revision, Template};
use tokio::time::Instant;

use crate::throttler::RevisionThrottler;

/// One request's log line, written when this is dropped at the end of the response.
#[derive(Debug)]
pub struct Line {
    template: Arc<Template>,
    revision: Revision,
    entry: Entry,
    start: Instant,
}

impl Line {
    /// What is known when the request arrives.
    pub fn start(
        template: Arc<Template>,
        req: &Request<Incoming>,
        throttler: &RevisionThrottler,
        start: Instant,
    ) -> Self {
        let h = req.headers();
        let str_of = |n| headers::first(h, n).unwrap_or("").to_owned();
        let spec = throttler.spec();
        let key = &throttler.key;
        Self {
            template,
            revision: Revision {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                service: spec.service.clone(),
                configuration: spec.configuration.clone(),
                pod_name: String::new(),
                pod_ip: String::new(),
            },
            entry: Entry {
                method: req.method().as_str().to_owned(),
                request_uri: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
                proto: match req.version() {
                    http::Version::HTTP_2 => "HTTP/2.0",
                    http::Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                host: req
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .unwrap_or_else(|| str_of(&HOST)),
                remote_addr: req
                    .extensions()
                    .get::<ConnInfo>()
                    .map(|c| c.remote.to_string())
                    .unwrap_or_default(),
                content_length: req
                    .body()
                    .size_hint()
                    .exact()
                    .and_then(|n| i64::try_from(n).ok())
                    .unwrap_or(-1),
                user_agent: str_of(&USER_AGENT),
                referer: str_of(&REFERER),
                ..Entry::default()
            },
            start,
        }
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
        // One write per line to stdout, as Knative's synchronised file writer.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}
