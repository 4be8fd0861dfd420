# syntax=docker/dockerfile:1
# Ferry's container image: a static binary on distroless/static, run as a
# non-root user, data in the /data volume. See docs/operations.md.
#
#   docker build -t ferry --build-arg VERSION=$(git describe --tags --always) .
#   docker run -d --name ferry -p 1883:1883 -p 8083:8083 -p 8080:8080 \
#     -v ferry-data:/data -e FERRY_ADMIN_TOKEN=$(openssl rand -hex 32) ferry

# The builder runs on the build machine's platform and cross-compiles
# (CGO is off, so any GOOS/GOARCH works without a C toolchain).
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
# Modules first: this layer stays cached while only source changes.
COPY go.mod go.sum ./
COPY third_party/mochi/go.mod third_party/mochi/go.sum third_party/mochi/
RUN go mod download
COPY . .
ARG TARGETOS TARGETARCH
ARG VERSION=""
# Static (no libc), reproducible paths, version stamped at link time.
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X github.com/ferrymq/ferry/broker.version=${VERSION}" \
      -o /out/ferry ./cmd/ferry \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ferry /usr/local/bin/ferry
# The volume's mount point belongs to the user Ferry runs as, so a fresh
# named volume is writable.
COPY --from=build --chown=65532:65532 /out/data /data
# distroless's "nonroot" user; never root.
USER 65532:65532
# The MQTT listeners default to all interfaces already; the admin endpoint
# must leave loopback to be reached through a published port, which
# requires a token (-e FERRY_ADMIN_TOKEN=...). `ferry health` reads
# FERRY_ADMIN_ADDR too, so changing it moves the probe with it.
ENV FERRY_DATA_DIR=/data \
    FERRY_ADMIN_ADDR=0.0.0.0:8080
VOLUME ["/data"]
# 1883 MQTT, 8083 MQTT over WebSocket, 8080 admin (dashboard, API, metrics).
EXPOSE 1883 8083 8080
# The image has no shell or curl: the binary probes its own /readyz
# (FERRY_ADMIN_ADDR, on loopback; /readyz needs no token).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/ferry", "health", "--timeout", "4s"]
# SIGTERM drains for shutdown.timeout (default 5s): give `docker stop` -t 15.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ferry"]
