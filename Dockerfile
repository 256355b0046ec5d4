# shoal's image, built from source: a Rust builder stage, then a small Debian runtime.
#
#   scripts/fetch-model.sh                      # the model is baked into the image
#   docker build -t shoal:latest .              # BuildKit or the legacy builder (DOCKER_BUILDKIT=0)
#
# Build arguments: RUST_IMAGE (the builder, default rust:1.95-bookworm) and BASE_IMAGE (the
# runtime, default debian:bookworm-slim): keep both on the same Debian release, the binary links
# against its glibc. The legacy builder builds every stage and a release build takes about 15
# minutes on 2 cores; with a binary built on the host, deploy/docker/Dockerfile.prebuilt makes the
# same runtime image without a builder (scripts/docker-images.sh does it where no registry can be
# reached). See docs/docker.md.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The workspace only (.dockerignore keeps target/, models/ and data out of this stage's copy).
COPY Cargo.toml Cargo.lock ./
COPY api api
COPY cluster cluster
COPY index index
COPY inference inference
COPY node node
COPY storage storage
COPY chaos chaos
COPY tests tests
RUN cargo build --release --locked --bin shoal \
    && strip --strip-debug target/release/shoal \
    && target/release/shoal --version

# The runtime: keep the same as deploy/docker/Dockerfile.prebuilt's.
FROM ${BASE_IMAGE}

# curl for the health check; a non-root user whose home is the data folder.
RUN set -eu; \
    if ! command -v curl >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 shoal; \
    useradd --no-log-init --uid 10001 --gid shoal --home-dir /var/lib/shoal --no-create-home \
        --shell /usr/sbin/nologin shoal; \
    install -d -o shoal -g shoal -m 0750 /var/lib/shoal

# The embedding model is baked in: the container fetches nothing at run time. Mount another
# model folder and point MODEL_PATH at it to use another one.
COPY models/all-MiniLM-L6-v2/ /opt/shoal/models/all-MiniLM-L6-v2/
COPY --from=builder /src/target/release/shoal /usr/local/bin/shoal

ENV SHOAL_SERVER__LISTEN=0.0.0.0:7400 \
    SHOAL_STORAGE__DATA_DIR=/var/lib/shoal \
    MODEL_PATH=/opt/shoal/models/all-MiniLM-L6-v2 \
    NO_COLOR=1

USER shoal:shoal
WORKDIR /var/lib/shoal
VOLUME ["/var/lib/shoal"]
EXPOSE 7400
# Healthy = ready: the model is warm, the shards are loaded, and in a cluster the node is a member
# that has caught up with its leader since it started (docs/operations.md).
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:7400/api/ready || exit 1
# shoal stops cleanly on SIGTERM (it first steps down as leader); give it time to flush.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/shoal", "serve"]
