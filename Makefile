# storepkg — run pods from Nix store paths.
#   make demo   show storepkg doing its job (installs what it needs)
#   make test   run every test, the kind e2e included (installs what it needs)
#   make test-arm64  the arm64 build's tests, under qemu on amd64
#   make release / make image  static linux/amd64 + linux/arm64 builds; the installer image index
#   make bench  benchmarks against the peers
#   make chaos  faults and load, measured (docs/reliability.md)
#   make soak   1,000 pod cycles under disk pressure: bench/results/soak.md

GO       ?= go
BIN      := bin
# A count, not a duration: with a duration Go 1.26's fuzz coordinator can
# report a spurious "context deadline exceeded" at the deadline
# (golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 300000x

.PHONY: all build release image test-arm64 test-arm64-unit test e2e unit fuzz vet demo bench bench-fetch bench-start bench-pods bench-sharing bench-view bench-peers chaos soak deps clean

all: build

build:
	$(GO) build -buildvcs=auto -o $(BIN)/ ./cmd/...

# Release builds: storepkg and the shim, static (CGO_ENABLED=0: the
# installer copies the shim onto hosts whose libc it cannot know), one
# directory per platform: $(BIN)/release/<os>-<arch>/.
PLATFORMS ?= linux/amd64 linux/arm64
release:
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; echo "release $$os/$$arch -> $(BIN)/release/$$os-$$arch/"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -buildvcs=auto -trimpath -ldflags=-s \
			-o $(BIN)/release/$$os-$$arch/ ./cmd/storepkg ./cmd/containerd-shim-storepkg-v1; \
	done

# The installer image as an OCI layout tarball holding one image index
# (an image per platform of the release builds), built in Go without
# Docker or a registry; the Dockerfile builds the same with buildx.
IMAGE ?= ghcr.io/storepkg/storepkg:dev
image: release
	cd integration && $(GO) run ./cmd/installer-image -bin $(CURDIR)/$(BIN)/release \
		-platforms $(subst $(eval) ,$(comma),$(strip $(PLATFORMS))) -ref $(IMAGE) -o $(CURDIR)/$(BIN)/storepkg-installer.tar
comma := ,

deps:
	hack/install-deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	cd integration && $(GO) vet ./...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	@cd integration && $(GO) mod tidy -diff || { echo "integration/go.mod/go.sum are not tidy: run go mod tidy in integration/"; exit 1; }

# No test or script may change a tracked file or leave an untracked one in
# the checkout: the tree is compared before and after.
test: deps vet build
	@hack/tree-state.sh save
	$(GO) test -count=1 ./...
	$(MAKE) test-arm64-unit
	cd integration && $(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz
	$(MAKE) e2e
	@hack/tree-state.sh check

# The arm64 build's tests on this amd64 machine, under qemu's user-mode
# emulator (qemu-aarch64-static, from hack/install-deps.sh): the package
# tests below with GOARCH=arm64 (real Nix, root and mounts as natively:
# the arm64 test binary execs the host's amd64 nix-store), then
# TestArm64Fetch, an arm64 `storepkg fetch` filling a store from a cache
# real Nix signed, which real Nix verifies. `make test` runs the first
# here and TestArm64Fetch with the other integration tests.
#
# Left out, as the emulator cannot run them (docs/install.md): tests that
# exec an arm64 binary themselves, their own test binary as a helper or a
# storepkg CLI built for GOARCH (ARM64_SKIP, all of pkg/fetchexec): only
# a binfmt_misc registration would run those, which a container cannot
# make; TestArm64Fetch runs the arm64 CLI under qemu instead. And
# pkg/gcowner: qemu answers a process's own /proc/<pid>/stat itself, with
# the start time of the thread that reads it, so a Go process that notes
# its start time on one thread and checks it on another looks gone to
# pkg/procid (an emulator artefact: the kernel gives the process's).
ARM64_PKGS ?= ./pkg/nixbase32 ./pkg/storepath ./pkg/nar ./pkg/narinfo ./pkg/fetch ./pkg/store/... \
	./pkg/shim ./pkg/mount ./pkg/fetchapi ./pkg/procid ./pkg/fetchslot
ARM64_SKIP := ^(TestTwoProcessesFetchOnce|TestSIGKILLMidDownload|TestCLIOverHTTP|TestGCRaceWithFetches|TestSlotFreedBySIGKILL)$$
test-arm64-unit:
	@command -v qemu-aarch64-static >/dev/null || { echo "qemu-aarch64-static is missing: run make deps (hack/install-deps.sh)"; exit 1; }
	GOARCH=arm64 $(GO) test -count=1 -exec qemu-aarch64-static -skip '$(ARM64_SKIP)' $(ARM64_PKGS)

test-arm64: deps test-arm64-unit
	cd integration && $(GO) test -count=1 -run '^TestArm64Fetch$$' -v .

# The acceptance test on a real kind cluster (1 control plane + 1 worker):
# install through the DaemonSet, run the examples, uninstall. Offline here:
# the node image is built locally (hack/kind/). KEEP=1 leaves the cluster up.
e2e: deps
	hack/e2e-kind.sh

# The chaos suite (integration/chaos_*_test.go, TestChaos): kills, a
# reboot, a full disk, flaky caches and 50 pods at once on real
# containerd, runc, crictl and Nix, each scenario ending with the same
# checks. Prints the table (scenario, held, time to recover, what was
# left); the whole log stays in $(CHAOS_LOG). `make test` runs it too.
CHAOS_LOG ?= $(or $(TMPDIR),/tmp)/storepkg-chaos.log
chaos: deps
	@rm -f $(CHAOS_LOG).table; \
	cd integration && STOREPKG_CHAOS_TABLE=$(CHAOS_LOG).table $(GO) test -count=1 -timeout 20m -run '^TestChaos$$' -v . >$(CHAOS_LOG) 2>&1; rc=$$?; \
	if [ -f $(CHAOS_LOG).table ]; then cat $(CHAOS_LOG).table; else tail -n 40 $(CHAOS_LOG); fi; \
	echo "log: $(CHAOS_LOG)"; exit $$rc

# The soak (integration/soak_test.go, TestSoak; not in `make test`):
# SOAK_CYCLES pod create/delete cycles over four closures with the real
# agent collecting a store kept over its high threshold, sampled every
# 10 cycles; fails on any failed start, a figure that is not flat or
# what the chaos end check finds. Writes bench/results/soak.md,
# soak-<date>.csv and soak-<date>.png (commit them); SOAK_MAX (a Go
# duration) stops starting cycles after that long. Log: $(SOAK_LOG).
SOAK_CYCLES ?= 1000
SOAK_MAX    ?=
SOAK_LOG    ?= $(or $(TMPDIR),/tmp)/storepkg-soak.log
soak: deps
	cd integration && STOREPKG_SOAK_CYCLES=$(SOAK_CYCLES) STOREPKG_SOAK_MAX=$(SOAK_MAX) STOREPKG_SOAK_OUT=$(CURDIR)/bench/results \
		$(GO) test -count=1 -timeout 3h -run '^TestSoak$$' -v . >$(SOAK_LOG) 2>&1; rc=$$?; \
	grep -E '^\s+soak_test.go:|^(--- |ok|FAIL)' $(SOAK_LOG) | tail -n 40; \
	echo "results: bench/results/soak.md; log: $(SOAK_LOG)"; exit $$rc

# Each fuzz target runs briefly: enough to catch regressions on the seeds
# and 300,000 mutations each, not a fuzzing campaign.
fuzz:
	$(GO) test ./pkg/nar -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/narinfo -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/nixbase32 -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime $(FUZZTIME)

# Every benchmark with its peer in one run: bench/results/latest.md. The
# single-benchmark targets print their table and keep it under
# /var/tmp/storepkg-bench/results (latest.md is written by a full run only).
bench: deps build
	hack/bench.sh

bench-fetch: deps build
	BENCHMARKS=fetch hack/bench.sh

bench-start: deps build
	BENCHMARKS=start hack/bench.sh

bench-pods: deps build
	BENCHMARKS=pods hack/bench.sh

bench-sharing: deps build
	BENCHMARKS=sharing hack/bench.sh

bench-view: deps build
	BENCHMARKS=view hack/bench.sh

# N node agents and one rate-limited upstream on loopback (hack/bench-peers.sh;
# NODES, RATE): upstream bytes and rollout time, with peers and without.
bench-peers: deps build
	BENCHMARKS=peers hack/bench.sh

clean:
	rm -rf $(BIN)

# demo.sh installs only what it needs (hack/install-deps.sh demo) and builds.
demo:
	hack/demo.sh

# A kind cluster (one control plane, one worker) built offline on this
# machine: hack/kind/. kind-up leaves an existing cluster as it is and
# prints its kubeconfig path; kind-down also stops the script-started dockerd.
KIND_CLUSTER ?= storepkg
.PHONY: kind-up kind-down
kind-up:
	@hack/kind/cluster.sh kubeconfig $(KIND_CLUSTER) 2>/dev/null || hack/kind/cluster.sh create $(KIND_CLUSTER)

kind-down:
	hack/kind/cluster.sh delete $(KIND_CLUSTER)
	hack/kind/docker.sh stop
