# hexwatch container image: build with the Rust toolchain, run on a small
# Debian base as an unprivileged user.
#
#   docker build -t hexwatch --build-arg HEXWATCH_GIT_REVISION=$(git rev-parse --short=12 HEAD) .
#   docker run -d --name hexwatch -p 8080:8080 -e HEXWATCH_SECRET=... \
#       -v hexwatch-data:/var/lib/hexwatch hexwatch
#
# Config and rules are in /etc/hexwatch (deploy/config.toml and rules/); mount
# your own over them (-v ./config.toml:/etc/hexwatch/config.toml:ro).

FROM rust:1-bookworm AS build
WORKDIR /src
ARG HEXWATCH_GIT_REVISION=unknown
ENV HEXWATCH_GIT_REVISION=${HEXWATCH_GIT_REVISION}
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates ./crates
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
RUN cargo build --release --locked --bin hexwatch

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/hexwatch --shell /usr/sbin/nologin hexwatch \
    && install -d -o hexwatch -g hexwatch -m 0700 /var/lib/hexwatch
COPY --from=build /src/target/release/hexwatch /usr/local/bin/hexwatch
COPY rules /etc/hexwatch/rules
COPY deploy/config.toml /etc/hexwatch/config.toml
USER hexwatch
WORKDIR /var/lib/hexwatch
VOLUME ["/var/lib/hexwatch"]
EXPOSE 8080
# /healthz over plain HTTP with bash alone (the image carries no curl). With
# server.tls_cert set, point the health check of your orchestrator at HTTPS instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/hexwatch"]
CMD ["serve", "--config", "/etc/hexwatch/config.toml"]
