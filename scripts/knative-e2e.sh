#!/usr/bin/env bash
# Knative Serving's e2e tests ported to `activator local` (activator/tests/knative): the whole
# suite, including the long cases that `cargo test` skips (`#[ignore]`d: autoscaling, min-scale
# transition, readiness after start-up). The long ones run one at a time (they take the
# machine alone). Results are listed in docs/local.md, "Knative's e2e tests".
#
#   scripts/knative-e2e.sh            # debug build, everything
#   scripts/knative-e2e.sh autoscale  # only tests whose name contains "autoscale"
set -euo pipefail
cd "$(dirname "$0")/.."
filter="${1:-}"
# The apps the tests run as pods are binaries of the `examples` package, built next to the
# activator; the queue-proxy likewise.
cargo build -p queue-proxy -p examples
cargo test -p activator --test knative -- --include-ignored --test-threads 2 $filter
