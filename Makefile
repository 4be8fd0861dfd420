# Ferry's two commands: `go run ./cmd/ferry` runs it, `make test` tests it.
# `make test` does its own set-up on a fresh Debian machine with Go: it
# installs (as root, with apt-get) and starts on private ports the real
# services the integration tests need, runs the checks and every test with
# the race detector, and stops the services again, also when tests fail.

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GO ?= go
# The engine is our fork of mochi, its own module (see FORK.md); every check
# and test runs in both modules.
ENGINE := third_party/mochi
# The benchmark's baseline builds on upstream mochi, not the fork.
BASELINE := bench/mochi-baseline

.PHONY: test check fmt vet staticcheck gotest bench build

test:
	@scripts/test.sh

# check runs the static checks only (what `make test` runs before the tests).
check: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	cd $(ENGINE) && $(GO) vet ./...
	cd $(BASELINE) && $(GO) vet ./...

staticcheck:
	$(GO) run $(STATICCHECK) ./...
	cd $(ENGINE) && $(GO) run $(STATICCHECK) ./...

# gotest assumes the services are already up (scripts/test.sh starts them).
gotest:
	@status=0; \
	for m in . $(ENGINE) $(BASELINE); do \
		echo "-- $$m"; (cd $$m && $(GO) test -race -timeout 12m ./...) || status=1; \
	done; \
	echo "-- $(ENGINE): allocation tests, without the race detector (it changes allocations)"; \
	(cd $(ENGINE) && $(GO) test -timeout 2m -run Allocates ./...) || status=1; \
	exit $$status

# -buildvcs=auto records the git commit (ferry version) even where GOFLAGS
# turns that off; outside a git checkout the build goes on without it.
build:
	$(GO) build -buildvcs=auto -o bin/ferry ./cmd/ferry

bench:
	@bench/run.sh

# bench-cluster runs a three-node cluster beside a single node
# (bench/cluster.sh; knobs at its top).
.PHONY: bench-cluster
bench-cluster:
	@bench/cluster.sh
