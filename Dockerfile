# The storepkg installer image: `storepkg node install` (init container of
# the node DaemonSet), then `storepkg agent`. `make image` builds the same
# layout without Docker (integration/cmd/installer-image).
#
#   docker build -t ghcr.io/storepkg/storepkg:dev .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/ ./cmd/storepkg ./cmd/containerd-shim-storepkg-v1

FROM scratch
COPY --from=build /out/storepkg /out/containerd-shim-storepkg-v1 /usr/local/bin/
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT ["/usr/local/bin/storepkg"]
