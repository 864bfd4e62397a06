# syntax=docker/dockerfile:1
# webprom-edge container image: built in a Rust image, run in a distroless one as a non-root
# user. The paths are those of dist/config.toml and the systemd unit:
#
#   /etc/webprom-edge         config.toml and tls/ (cert.pem, key.pem); mount read-only.
#   /var/lib/webprom-edge     state: pseudonym keys (keys/, 0700), GeoIP database (geo/).
#   /var/log/webprom-edge     the access log's day files.
#
#   docker build -t webprom-edge .
#   docker run -d --name webprom-edge -p 443:443 \
#     -v /etc/webprom-edge:/etc/webprom-edge:ro \
#     -v webprom-edge-state:/var/lib/webprom-edge \
#     -v webprom-edge-logs:/var/log/webprom-edge \
#     webprom-edge
#
# The image runs as uid/gid 65532 (distroless "nonroot"): a mounted tls/key.pem must be readable
# by that uid or gid. Port 443 is bound without root: Docker (20.10 and later) lets any user of
# a container bind ports below 1024 (net.ipv4.ip_unprivileged_port_start=0).

# Build: the C toolchain (gcc, libc6-dev) that ring and mimalloc compile with is in the image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin webprom-edge \
    && install -D -m 0755 target/release/webprom-edge /out/usr/local/bin/webprom-edge
# The directories, with the modes the systemd unit gives them; a new named volume starts with
# the image's ownership and mode.
RUN install -d -m 0755 /out/etc/webprom-edge \
    && install -m 0644 dist/config.toml /out/etc/webprom-edge/config.toml \
    && install -d -m 0700 /out/var/lib/webprom-edge /out/var/lib/webprom-edge/keys \
    && install -d -m 0700 /out/var/lib/webprom-edge/geo \
    && install -m 0644 config/geo/country.mmdb /out/var/lib/webprom-edge/geo/country.mmdb \
    && install -d -m 0750 /out/var/log/webprom-edge

# Run: glibc and libgcc only, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/webprom-edge /usr/local/bin/webprom-edge
COPY --from=build /out/etc/webprom-edge /etc/webprom-edge
COPY --from=build --chown=65532:65532 /out/var/lib/webprom-edge /var/lib/webprom-edge
COPY --from=build --chown=65532:65532 /out/var/log/webprom-edge /var/log/webprom-edge
USER 65532:65532
# TLS (HTTP/2 and HTTP/1.1). The admin listener (/metrics) is on the container's loopback in
# dist/config.toml; to scrape it from outside, mount a config with a private admin.listen.
EXPOSE 443
VOLUME ["/etc/webprom-edge", "/var/lib/webprom-edge", "/var/log/webprom-edge"]
# SIGTERM drains in-flight requests for server.shutdown_grace (10s): stop with
# `docker stop --time 15` or more. SIGHUP (`docker kill --signal HUP`) reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/webprom-edge"]
CMD ["run", "--config", "/etc/webprom-edge/config.toml"]
