# Stagely's tasks. `make test` and `make demo` first run scripts/services.sh,
# which installs (once) and starts Postgres, Redis, the Docker engine, the
# compose plugin and Pebble.
GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
export PATH := $(PATH):$(GOBIN)
DATABASE_URL ?= postgres://stagely:stagely@127.0.0.1:5432/stagely?sslmode=disable

.PHONY: build test lint demo bench migrate services

# A static binary: cloud machines download the server's own binary as
# their agent (--agent-binary), whatever C library their image has.
build:
	CGO_ENABLED=0 $(GO) build -o bin/stagely ./cmd/stagely

services:
	bash scripts/services.sh

test: services
	@test -z "$$(gofmt -l .)" || { echo "not gofmt'd:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	staticcheck ./...
	$(GO) test -race -count=1 -timeout 20m ./...

lint:
	@test -z "$$(gofmt -l .)" || { echo "not gofmt'd:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	staticcheck ./...

demo: services build
	./bin/stagely demo

# bench starts the services, runs every package's benchmarks once (each
# measures its own baseline in the same run) and prints only their result
# lines, one JSON object a line with name, value, unit, baseline and ratio,
# on standard output; everything else goes to standard error. A failing
# benchmark, or none printing a result, fails make.
bench: SHELL := bash
bench: .SHELLFLAGS := -o pipefail -c
bench:
	@$(MAKE) --no-print-directory services >&2
	@$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./... 2>&1 | \
	awk '{ i = index($$0, "{\"name\":"); if (i == 0) { print > "/dev/stderr"; next } \
	       if (i > 1) print substr($$0, 1, i - 1) > "/dev/stderr"; print substr($$0, i); fflush(); n++ } \
	     END { if (n == 0) { print "make bench: no benchmark printed a result" > "/dev/stderr"; exit 1 } }'

migrate: services build
	./bin/stagely migrate --database-url '$(DATABASE_URL)'
