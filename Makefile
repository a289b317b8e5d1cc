# storepkg — run pods from Nix store paths.
#   make demo   show storepkg doing its job (installs what it needs)
#   make test   run every test (installs what it needs)
#   make bench  benchmarks against the peers

GO       ?= go
BIN      := bin
FUZZTIME ?= 10s

.PHONY: all build image test unit fuzz vet demo bench bench-fetch bench-start deps clean

all: build

build:
	$(GO) build -buildvcs=auto -o $(BIN)/ ./cmd/...

# The installer image (storepkg + the shim, static) as an image tarball,
# built in Go without Docker or a registry; the Dockerfile builds the same.
IMAGE ?= ghcr.io/storepkg/storepkg:dev
image:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -trimpath -ldflags=-s -o $(BIN)/static/ ./cmd/storepkg ./cmd/containerd-shim-storepkg-v1
	$(GO) run ./hack/tools/installer-image -bin $(BIN)/static -ref $(IMAGE) -o $(BIN)/storepkg-installer.tar

deps:
	hack/install-deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

test: deps vet build
	$(GO) test -count=1 ./...
	$(MAKE) fuzz

# Each fuzz target runs briefly: enough to catch regressions on the seeds
# and a few million mutations, not a fuzzing campaign.
fuzz:
	$(GO) test ./pkg/nar -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/narinfo -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/nixbase32 -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime $(FUZZTIME)

bench: bench-fetch bench-start

bench-fetch: deps build
	hack/bench-fetch.sh

bench-start: deps build
	hack/bench-start.sh

clean:
	rm -rf $(BIN)

demo: deps build
	hack/demo.sh
