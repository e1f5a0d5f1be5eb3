//! Knative Serving's own e2e tests (knative/serving `test/conformance/api/v1`,
//! `test/conformance/runtime`, `test/e2e`), ported to run against `activator local`: each test
//! keeps its upstream name and file in its doc comment, and upstream's assertions and
//! tolerances. Only wall time is scaled (a 10 s revision timeout becomes 2 s, …), and each test
//! says where. The cases that take longer than CI's budget run from `scripts/knative-e2e.sh`;
//! docs/local.md lists every upstream case, ported or left out, and why.
//!
//! # Layout
//! - `harness`: `activator local` as a cluster (Service YAML builder, client, status).
//! - `runtime`: `test/conformance/runtime` (headers, protocols, env vars, args, probes).
//! - `api`: `test/conformance/api/v1` (routes, traffic, blue/green, single concurrency,
//!   revision timeouts).
//! - `autoscale`: `test/e2e/autoscale_test.go`, `activator_test.go`.
//! - `e2e`: `test/e2e` (hello world, rollbacks, namespaces, readiness, min-scale).
//! - `websocket`: `test/e2e/websocket_test.go`.
//! - `grpc`: `test/e2e/grpc_test.go` and the gRPC readiness probe.

mod api;
mod autoscale;
mod e2e;
mod grpc;
mod harness;
mod runtime;
mod websocket;
