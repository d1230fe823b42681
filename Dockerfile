# Build:  docker build -t engine .
# Run:    docker run --rm engine            (runs pipelines/babynames.toml)
#         docker compose up                 (with MariaDB, see compose.yaml)

FROM rust:1-slim-bookworm AS builder
WORKDIR /build

# 1. Dependencies only, so this slow layer is rebuilt only when a manifest or
#    Cargo.lock changes: copy the manifests, stub every target they declare
#    (keep this list in step with the workspace members and targets), build.
COPY Cargo.toml Cargo.lock ./
COPY engine/Cargo.toml engine/
COPY operators/Cargo.toml operators/
COPY checkpoints/Cargo.toml checkpoints/
COPY simulators/Cargo.toml simulators/
COPY secrets/Cargo.toml secrets/
COPY alerts/Cargo.toml alerts/
COPY history/Cargo.toml history/
COPY server/Cargo.toml server/
RUN mkdir -p engine/src operators/src checkpoints/src simulators/src secrets/src alerts/src history/src server/src tests benches \
 && echo 'fn main() {}' > engine/src/main.rs \
 && echo 'fn main() {}' > benches/throughput.rs \
 && echo 'fn main() {}' > benches/sql_load.rs \
 && echo 'fn main() {}' > benches/hubspot_sync.rs \
 && echo 'fn main() {}' > benches/checkpoint.rs \
 && echo 'fn main() {}' > benches/kaggle.rs \
 && touch engine/src/lib.rs operators/src/lib.rs checkpoints/src/lib.rs simulators/src/lib.rs secrets/src/lib.rs alerts/src/lib.rs history/src/lib.rs server/src/lib.rs tests/e2e.rs \
 && cargo build --release --locked -p engine

# 2. Our code. COPY keeps the files' original mtimes, which can be older than
#    the stub build above; touch them so cargo rebuilds our crates for sure.
COPY engine/ engine/
COPY operators/ operators/
COPY checkpoints/ checkpoints/
COPY simulators/ simulators/
COPY secrets/ secrets/
COPY alerts/ alerts/
COPY history/ history/
COPY server/ server/
COPY tests/ tests/
COPY benches/ benches/
RUN find engine operators checkpoints simulators secrets alerts history server -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p engine

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home engine \
 && mkdir /app && chown engine:engine /app
COPY --from=builder /build/target/release/engine /usr/local/bin/engine
WORKDIR /app
# Pipelines and their sample data stay root-owned (read-only); the engine may
# write its outputs and checkpoints under /app.
COPY pipelines/ pipelines/
# Example exec secret backends (Vault, Azure Key Vault, Google Secret
# Manager); they need jq and the vault's own CLI in a derived image.
COPY scripts/secrets/ scripts/secrets/
USER engine
EXPOSE 9464
ENTRYPOINT ["engine"]
CMD ["run", "pipelines/babynames.toml"]
