# tslink. The README's two commands: `make demo` and `make test`.
GO ?= go
PLUGIN ?= tslink:latest
STATE_DIR ?= /var/lib/docker-plugins/tailscale
# Root tests (netns, TUN, dockerd) skip when they cannot run; .ci/run sets
# TSLINK_REQUIRE_ROOT_TESTS=1 so that a skip becomes a failure.
TEST_FLAGS ?= -count=1 -timeout 40m
# Unit and netns packages run under the race detector; the engine packages
# (their own dockerd, the plugin as a separate binary) run without it: -race
# would only slow the test process, not the plugin under test.
ENGINE_PKGS = ./test/e2e ./test/bench
RACE_PKGS = $(shell $(GO) list ./... | grep -v -e /test/e2e -e /test/bench)
STATICCHECK = honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: patched-deps test-tools release demo demo-clean soak bench all build bin/tslink bin/tslink-devcontrol rootfs plugin test vet staticcheck fmt clean

all: build

# go.mod replaces wireguard-go and tailscale.com with the modules as served
# plus a small patch each (docs/wireguard-go-patch.md,
# docs/testcontrol-patch.md): every go command of this module needs them.
patched-deps:
	@bash scripts/patch-modules.sh

# The laptop's and the anchor's tailscaled come from the tools module
# (test/tools), built by the tests themselves from inside their network
# namespaces, where the module proxy cannot be reached: fetch and compile it
# here first, so the tests' build finds everything in the caches.
test-tools:
	cd test/tools && $(GO) build tailscale.com/cmd/tailscaled tailscale.com/cmd/tailscale

build: bin/tslink bin/tslink-devcontrol

bin/tslink: patched-deps
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./cmd/tslink

bin/tslink-devcontrol: patched-deps
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./cmd/tslink-devcontrol

# The managed plugin's bundle (config.json + rootfs/), assembled from the
# static binary without pulling any image.
rootfs: bin/tslink
	rm -rf plugin/rootfs
	mkdir -p plugin/rootfs/data plugin/rootfs/tmp plugin/rootfs/etc/ssl/certs plugin/rootfs/run/docker/plugins plugin/rootfs/dev plugin/rootfs/proc plugin/rootfs/sys
	cp bin/tslink plugin/rootfs/tslink
	[ ! -f /etc/ssl/certs/ca-certificates.crt ] || cp /etc/ssl/certs/ca-certificates.crt plugin/rootfs/etc/ssl/certs/
	cp config.json plugin/config.json

# Build and (re)install the managed plugin into the running dockerd.
plugin: rootfs
	mkdir -p -m 0700 $(STATE_DIR)
	-docker plugin disable -f $(PLUGIN) >/dev/null 2>&1
	-docker plugin rm -f $(PLUGIN) >/dev/null 2>&1
	docker plugin create $(PLUGIN) plugin
	docker plugin enable $(PLUGIN)

# The main job on the embedded default: a local tailnet, the plugin, two
# containers on it. KEEP=1 leaves it running; `make demo-clean` removes it.
demo:
	bash scripts/demo.sh

demo-clean:
	bash scripts/demo.sh clean

vet: patched-deps
	$(GO) vet ./...

# The module proxy serves staticcheck; nothing to install beforehand.
staticcheck: patched-deps
	$(GO) run $(STATICCHECK) ./...

# Every test layer: unit (no root) and netns integration (root) under the
# race detector, engine end-to-end (root, own dockerd), small fuzz run.
test: vet staticcheck test-tools
	$(GO) test $(TEST_FLAGS) -race -p 1 $(RACE_PKGS)
	$(GO) test $(TEST_FLAGS) -p 1 $(ENGINE_PKGS)
	$(GO) test -run '^$$' -fuzz FuzzParseContainer -fuzztime 10s ./pkg/tsopts

# Full-size soak: 300 create/start/stop/remove cycles on one network, then
# leak checks on the plugin (goroutines, fds, RSS within 10%); and 10 rounds
# of 30 starts, half timing out, while control holds first map responses.
# `make test` runs small counts.
soak: patched-deps test-tools
	TSLINK_SOAK_CYCLES=$${TSLINK_SOAK_CYCLES:-300} TSLINK_STORM_ROUNDS=$${TSLINK_STORM_ROUNDS:-10} $(GO) test -count=1 -timeout 60m -run 'TestSoak$$|TestTimeoutStormWhileControlHoldsMaps$$' -v ./test/e2e

# Side-by-side benchmarks (start time, memory, throughput, history of 300
# create/remove cycles, scale) of tslink, a tailscaled per container and a
# plain bridge, in one run, with issue 13's targets and verdicts: writes
# docs/benchmarks.md and docs/bench/. `make test` runs a smoke size.
bench: patched-deps test-tools
	TSLINK_BENCH=full $(GO) test -count=1 -timeout 120m -run '^TestBench$$' -v ./test/bench

# Release: the plugin for amd64 and arm64, pushed as
# $(REGISTRY)/tslink:$(VERSION)-<arch> (scripts/release.sh).
ARCHES ?= amd64 arm64
DIST ?= dist
release: patched-deps
	REGISTRY='$(REGISTRY)' VERSION='$(VERSION)' ARCHES='$(ARCHES)' DIST='$(DIST)' GO='$(GO)' bash scripts/release.sh

fmt:
	gofmt -l -w $$(git ls-files '*.go')

clean:
	rm -rf bin plugin/rootfs plugin/config.json
