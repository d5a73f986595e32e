# syntax=docker/dockerfile:1
# Builds the three Switchyard binaries into one small runtime image:
#   switchyard-proxy, switchyard-reconciler, switchyard-backfill (in /usr/local/bin).
# docker-compose.yml builds it as `switchyard:local`; `docker build -t switchyard .` works alone.

# --- builder ------------------------------------------------------------------------------------
# The tag matches rust-toolchain.toml (channel 1.95.0), so rustup needs no second toolchain.
FROM rust:1.95-bookworm AS builder
# libclang-dev: pg_query generates its bindings with bindgen, which loads libclang at build
# time (the same need .ci/setup covers). cmake is not needed: rdkafka-sys builds librdkafka with
# its own configure script; zlib comes with the rust image (buildpack-deps).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# .cargo/config.toml (copied above) renames pg_query's bundled xxhash so it links beside
# librdkafka's copy; building from the repository root keeps that file in force.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p switchyard-proxy -p switchyard-reconciler -p switchyard-backfill \
    && mkdir -p /out \
    && cp target/release/switchyard-proxy target/release/switchyard-reconciler \
          target/release/switchyard-backfill /out/

# --- runtime ------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# curl: the compose healthchecks ask the admin port (/healthz). ca-certificates: for a
# TLS-secured Kafka ([retry_log.kafka.client]). zlib1g is already part of the base image.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/switchyard switchyard \
    && mkdir -p /metrics && chown switchyard /metrics
COPY --from=builder /out/ /usr/local/bin/
USER switchyard
WORKDIR /var/lib/switchyard
# 6432: PostgreSQL clients; 9187: admin HTTP (/metrics, /healthz, /api/status).
EXPOSE 6432 9187
ENV SWITCHYARD_LOG=info
CMD ["switchyard-proxy", "--help"]
