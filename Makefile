# tslink: `make demo` runs the main job; `make test` runs every test layer.
GO ?= go
PLUGIN ?= tslink:latest
# Root tests (netns, TUN, dockerd) skip when not root; .ci/run sets
# TSLINK_REQUIRE_ROOT_TESTS=1 so that a skip becomes a failure.
TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: all build test test-unit test-root fmt vet

all: build

build:
	$(GO) build ./...

vet:
	$(GO) vet ./...

# Every test layer: unit (no root), netns integration (root), engine e2e (root).
test: vet
	$(GO) test $(TEST_FLAGS) -p 1 ./...

fmt:
	gofmt -l -w $$(git ls-files '*.go')
