# lvsha: make build | test | lint | bench | soak | demo | deb | clean
SHELL := /bin/bash
GO ?= go
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Tests that need root, namespaces or the VM fail instead of skipping.
export LVSHA_STRICT := 1
# Namespace tests run this binary (built by the build target) instead of building their own.
export LVSHA_BIN := $(CURDIR)/bin/lvsha

.PHONY: all build test unit setup lint bench bench-failover bench-healthcheck bench-ipvs bench-sync bench-scaleout soak demo deb clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/lvsha ./cmd/lvsha

# Installs what the tests need on a fresh Debian machine (root): packages, the
# Go modules and the VM kernel (cached outside the repository).
setup:
	bash internal/testenv/setup.sh

# Every test: unit, namespace (root) and VM (real IPVS) tests. One package at
# a time (-p 1): the VM runs under TCG emulation and the namespace tests time
# VRRP, so two of them sharing 2 cores would test the machine, not lvsha.
test: setup build
	$(GO) test -count=1 -p 1 -timeout 20m ./...

# Only the tests that need neither root nor the VM.
unit:
	LVSHA_STRICT=0 $(GO) test -short ./...

lint:
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt: $$fmt"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: bench-failover bench-healthcheck bench-ipvs bench-sync bench-scaleout

bench-failover: setup build
	$(GO) run ./internal/scenarios/benchfailover -lvsha bin/lvsha

# 10,000 targets on the checker alone, then the lvsha daemon against
# keepalived's checker: here (keepalived with fakeipvs.so) and in the VM
# (real IPVS, emulated CPUs); then VRRP at 10 ms adverts on a master doing
# those checks (false failovers, beside keepalived).
bench-healthcheck: setup build
	$(GO) run ./internal/scenarios/benchhc
	$(GO) run ./internal/scenarios/benchhc -anchor -lvsha bin/lvsha
	$(GO) run ./internal/scenarios/benchhc -vm -lvsha bin/lvsha
	$(GO) run ./internal/scenarios/benchhc -vrrp-soak 2m -lvsha bin/lvsha

bench-ipvs: setup build
	$(GO) run ./internal/scenarios/benchipvs

# IPVS connection sync in the VM: 10,000 established connections, time to
# their entries on the backup and the share that survive a failover and a
# failback, lvsha beside keepalived 2.2.7's lvs_sync_daemon.
bench-sync: setup build
	$(GO) run ./internal/scenarios/benchsync -lvsha bin/lvsha

# Active-active directors over BGP in the VM (FRR as the ECMP router, three
# lvsha directors with real IPVS): new connections per second through one
# director and through three (the one-director run is the anchor), and the
# share of long-lived connections reset when one of three leaves (clean
# stop, SIGKILL, dead host) with sloppy_tcp on and off.
bench-scaleout: setup build
	$(GO) run ./internal/scenarios/benchscaleout -lvsha bin/lvsha

# Chaos soak: two real directors in namespaces under random faults for
# SOAK (e.g. make soak SOAK=30m), every invariant checked all along; exits
# non-zero on a violation. `make test` runs a 60-second one (TestSoak).
SOAK ?= 5m
soak: setup build
	$(GO) run ./internal/scenarios/soak -lvsha bin/lvsha -d $(SOAK)

demo: setup build
	$(GO) run ./internal/scenarios/demo -lvsha bin/lvsha

clean:
	rm -rf bin dist

# A tag v1.2.3 gives 1.2.3; an untagged commit 0.0.0~git<hash>.
DEB_VERSION := $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo $${v\#v} | tr - + || echo 0.0.0~git$$(git rev-parse --short HEAD 2>/dev/null || echo unknown))
NFPM := github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
deb: build
	mkdir -p dist/man
	gzip -9nc packaging/man/lvsha.8 > dist/man/lvsha.8.gz
	gzip -9nc packaging/man/lvsha.toml.5 > dist/man/lvsha.toml.5.gz
	LVSHA_VERSION=$(DEB_VERSION) $(GO) run $(NFPM) pkg --config packaging/nfpm.yaml --packager deb --target dist/
