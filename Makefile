# lvsha: make build | test | lint | bench | demo | deb | clean
SHELL := /bin/bash
GO ?= go
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Tests that need root, namespaces or the VM fail instead of skipping.
export LVSHA_STRICT := 1

.PHONY: all build test unit setup lint bench bench-failover bench-healthcheck bench-ipvs demo deb clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/lvsha ./cmd/lvsha

# Installs what the tests need on a fresh Debian machine (root): packages, the
# Go modules and the VM kernel (cached outside the repository).
setup:
	bash internal/scripts/setup.sh

# Every test: unit, namespace (root) and VM (real IPVS) tests.
test: setup build
	$(GO) test -count=1 -timeout 20m ./...

# Only the tests that need neither root nor the VM.
unit:
	LVSHA_STRICT=0 $(GO) test -short ./...

lint:
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt: $$fmt"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: bench-failover bench-healthcheck bench-ipvs

bench-failover: setup build
	$(GO) run ./internal/benchfailover

bench-healthcheck: build
	$(GO) run ./internal/benchhc

bench-ipvs: setup build
	$(GO) run ./internal/benchipvs

demo: setup build
	$(GO) run ./internal/demo

clean:
	rm -rf bin dist
