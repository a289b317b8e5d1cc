# The storepkg installer image: `storepkg node install` (init container of
# the node DaemonSet), then `storepkg agent`. `make image` builds the same
# layout without Docker (integration/cmd/installer-image).
#
#   docker build -t ghcr.io/storepkg/storepkg:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/storepkg/storepkg:dev .
#
# The build stage runs on the builder's platform and cross-compiles.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS=linux TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags=-s -o /out/ ./cmd/storepkg ./cmd/containerd-shim-storepkg-v1

FROM scratch
COPY --from=build /out/storepkg /out/containerd-shim-storepkg-v1 /usr/local/bin/
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT ["/usr/local/bin/storepkg"]
