# syntax=docker/dockerfile:1
# Multi-stage build of the `embedstream` binary. Build context: the repository root (see
# .dockerignore). Used by docker-compose.yml; on its own:
#   docker build -t embedstream .
#   docker run --rm -p 8080:8080 -e EMBEDSTREAM_KAFKA__BROKERS=... -e EMBEDSTREAM_STORE__URL=... embedstream run

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# rdkafka (default features: libz, tokio) compiles its bundled librdkafka with librdkafka's own
# ./configure + make, not CMake: it needs the GNU toolchain, GNU make, pthreads and zlib
# (rust-rdkafka README). python3 and perl are used by librdkafka's build scripts; pkg-config lets
# libz-sys find the system zlib. SSL, SASL, zstd and curl are not enabled, so no -dev packages
# for them. Most of this is already in the rust:*-bookworm image; listing it keeps the build
# honest if the base image slims down.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential make pkg-config python3 perl zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src

# The registry and target dir live in BuildKit cache mounts, so a source change does not rebuild
# every dependency (librdkafka alone takes minutes); the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin embedstream \
 && install -D -m 0755 target/release/embedstream /out/embedstream

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim

# librdkafka is linked statically; the binary needs only glibc, libgcc and zlib (all in
# bookworm-slim) plus CA certificates for any TLS endpoint configured later.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 embedstream \
 && useradd --system --uid 10001 --gid embedstream --create-home --home-dir /home/embedstream \
      --shell /usr/sbin/nologin embedstream

COPY --from=builder /out/embedstream /usr/local/bin/embedstream

# The default http.listen (127.0.0.1:8080) is unreachable from outside a container. Env vars
# outrank a --config file; `run --listen ADDR` still overrides this.
ENV EMBEDSTREAM_HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080

USER embedstream:embedstream
WORKDIR /home/embedstream
ENTRYPOINT ["embedstream"]
CMD ["--help"]
