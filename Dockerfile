# The engine as a container image: `engine` on PATH, the bundled pipelines,
# sample data and migrations under /app, everything it writes (SQLite
# database, outputs, checkpoints, staging, `engine serve` state) in the
# /app/data volume.
#
#   docker build -t engine .
#   docker run --rm engine                    # the default pipeline, pipelines/babynames.toml
#   docker compose up --build                 # the daily Kaggle job under `engine serve`, see compose.yaml
#
# Without a Docker engine, scripts/check-image builds this file with buildah
# from base images made of Debian packages and runs it.
#
# Base images are pinned: the Rust tag must be at least the workspace's
# rust-version (Cargo.toml), which tests/deploy.rs checks.

FROM rust:1.95.0-slim-bookworm AS chef
WORKDIR /build
# No debug info and a stripped binary: 39 MB instead of 217 MB.
ENV CARGO_PROFILE_RELEASE_DEBUG=none \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never

# 1. The workspace's skeleton, derived from `cargo metadata` (no crate is
#    named here): manifests, Cargo.lock and a stub for every target. This
#    stage reruns on any change, but its output changes only with a manifest.
FROM chef AS planner
COPY . .
RUN sh deploy/docker/skeleton.sh /skeleton

# 2. The dependencies alone, from the skeleton: this slow layer is rebuilt
#    only when a manifest or Cargo.lock changes.
FROM chef AS builder
COPY --from=planner /skeleton/ ./
RUN cargo build --release --locked -p engine

# 3. Our code. COPY keeps the files' mtimes, which can be older than the
#    stub build above: touch every source so cargo rebuilds our crates.
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -type f -exec touch {} + \
 && cargo build --release --locked -p engine \
 && install -m 0755 target/release/engine /usr/local/bin/engine \
 && engine --version

FROM debian:12.11-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="engine" \
      org.opencontainers.image.description="Dataflow streaming ETL engine: pipelines described in TOML, run once, on a schedule (engine serve) or as a Kubernetes CronJob" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="README.md#deploy" \
      org.opencontainers.image.base.name="docker.io/library/debian:12.11-slim"

# CA certificates for HTTPS (HubSpot, Kaggle, S3, TLS to MySQL); tzdata for
# schedules and HubSpot's daily reset in a named time zone.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 engine \
 && useradd --system --uid 10001 --gid engine --home-dir /app --no-create-home --shell /usr/sbin/nologin engine \
 && mkdir -p /app/data/checkpoints \
 && chown -R engine:engine /app/data
COPY --from=builder /usr/local/bin/engine /usr/local/bin/engine
WORKDIR /app
# Pipelines, sample data and migrations stay root-owned (read-only); the
# pipelines write under data/ (relative to /app), which is the volume. A
# pipeline without a checkpoint `dir` keeps them beside its file, in
# pipelines/checkpoints/<name>: that is the volume too.
COPY pipelines/ pipelines/
RUN ln -s /app/data/checkpoints pipelines/checkpoints
# Example exec secret backends (Vault, Azure Key Vault, Google Secret
# Manager); they need jq and the vault's own CLI in a derived image.
COPY scripts/secrets/ scripts/secrets/
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
VOLUME ["/app/data"]
# /metrics, /health/live, /health/ready of `engine run --metrics-addr`
# (`engine serve` answers on its --listen address, 8080 in compose.yaml).
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["engine", "health", "http://127.0.0.1:9464/health/ready"]
ENTRYPOINT ["engine"]
CMD ["run", "pipelines/babynames.toml", "--metrics-addr", "0.0.0.0:9464"]
