# syntax=docker/dockerfile:1.7
#
# strangler — the reverse proxy.
#
#   docker build -t strangler:dev --build-arg STRANGLER_COMMIT="$(git rev-parse --short=12 HEAD)" .
#
# Build context is the repository root (the Cargo workspace). The root
# .dockerignore keeps target/, .git, virtualenvs and demo data out of it.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The commit strangler_build_info{commit} reports (build.rs reads it; the
# context has no .git, so it is "unknown" unless given):
#   docker build --build-arg STRANGLER_COMMIT="$(git rev-parse --short=12 HEAD)" .
ARG STRANGLER_COMMIT=unknown
# The whole workspace is copied: Cargo.lock pins every dependency and
# --locked refuses to build if it is out of date. BuildKit cache mounts keep
# the registry and target/ between builds, so only changed crates recompile.
# The binary is the profile-guided build `make bench` measures (scripts/pgo.sh:
# an instrumented build runs the benchmark's traffic on loopback, then the
# optimised build, which BOLT reorders from a second training run); its
# training load needs these tools, and llvm-19 and bolt-19 its profile tools. Not pinned to exact
# versions: they come from the image's Debian release (bookworm), whose
# security updates replace exact versions; they never reach the final image.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       python3 llvm-19 bolt-19 wrk nghttp2-client openssl curl \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    --mount=type=cache,target=/src/bench/upstream/target,sharing=locked \
    scripts/pgo.sh \
    && install -D -m 0755 target/pgo/strangler /out/strangler

# distroless/cc: glibc + libgcc + CA certificates, no shell, no package
# manager. The :nonroot tag runs as uid/gid 65532.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="strangler" \
      org.opencontainers.image.description="Hot-reloading prefix-routing reverse proxy for strangler-fig migrations" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/strangler /usr/local/bin/strangler
USER 65532:65532
# 8080 = proxy listener, 9901 = admin (/healthz /readyz /metrics /config ...)
EXPOSE 8080 9901
# The config directory is meant to be a mounted ConfigMap (a DIRECTORY mount,
# never subPath, or hot reload stops working). Extra flags such as
# --drain-timeout 30s or --threads N are appended by the pod's `args`.
ENTRYPOINT ["/usr/local/bin/strangler", "serve", "--config", "/etc/strangler/routes.yaml", "--log-format", "json"]
