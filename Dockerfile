# syntax=docker/dockerfile:1.7
# One build, two final images:
#   docker buildx build --platform linux/amd64,linux/arm64 --target queue-proxy -t REG/queue-proxy:TAG .
#   docker buildx build --platform linux/amd64,linux/arm64 --target activator   -t REG/activator:TAG .
#
# glibc on distroless/cc rather than musl: musl's malloc is slow under a multi-threaded proxy load
# and would need a replacement allocator crate; glibc's malloc is fast, and distroless/cc adds only
# libc/libgcc. Both images run as the numeric non-root user 65532 (Knative sets runAsNonRoot with
# no runAsUser, so the image must declare a numeric USER) and write nothing to the root filesystem.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Manifests first so the dependency layer is cached across source edits.
COPY Cargo.toml Cargo.lock ./
COPY shared ./shared
COPY queue-proxy ./queue-proxy
COPY activator ./activator
COPY examples ./examples
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p queue-proxy -p activator \
 && mkdir -p /out \
 && cp target/release/queue-proxy target/release/activator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS queue-proxy
# ko's layout, so anything that execs /ko-app/queue-proxy keeps working.
COPY --from=build /out/queue-proxy /ko-app/queue-proxy
USER 65532:65532
EXPOSE 8012 8013 8022 9090 9091
ENTRYPOINT ["/ko-app/queue-proxy"]

FROM gcr.io/distroless/cc-debian12:nonroot AS activator
COPY --from=build /out/activator /ko-app/activator
USER 65532:65532
EXPOSE 8008 8012 8013 9090
ENTRYPOINT ["/ko-app/activator"]

# Local images from binaries built on this machine, with no registry access (e.g. podman without
# network): FROM scratch, the binary, and the few glibc libraries it links (ld.so, libc, libm,
# libgcc_s), which the build context must already hold. `activator/tests/image.rs` prepares such
# a context from `ldd` and builds, runs and serves through both (docs/kubernetes.md, "Images"):
#   <context>/bin/{queue-proxy,activator}   the binaries
#   <context>/rootfs/                       lib64/ld-linux-*.so.2, lib/<triple>/lib{c,m,gcc_s}.so.*
#   podman build -f Dockerfile --target queue-proxy-local <context>
FROM scratch AS queue-proxy-local
COPY rootfs/ /
COPY bin/queue-proxy /ko-app/queue-proxy
USER 65532:65532
EXPOSE 8012 8013 8022 9090 9091
ENTRYPOINT ["/ko-app/queue-proxy"]

FROM scratch AS activator-local
COPY rootfs/ /
COPY bin/activator /ko-app/activator
USER 65532:65532
EXPOSE 8008 8012 8013 9090
ENTRYPOINT ["/ko-app/activator"]
