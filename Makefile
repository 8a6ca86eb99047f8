# Stagely's tasks. `make test` and `make demo` first run scripts/services.sh,
# which installs (once) and starts Postgres, Redis, the Docker engine, the
# compose plugin and Pebble.
GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
export PATH := $(PATH):$(GOBIN)
DATABASE_URL ?= postgres://stagely:stagely@127.0.0.1:5432/stagely?sslmode=disable

.PHONY: build test lint demo bench migrate services

build:
	$(GO) build -o bin/stagely ./cmd/stagely

services:
	bash scripts/services.sh

test: services
	$(GO) vet ./...
	staticcheck ./...
	$(GO) test -race -count=1 -timeout 20m ./...

lint:
	$(GO) vet ./...
	staticcheck ./...

demo: services build
	./bin/stagely demo

bench: services
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./... | $(GO) run ./cmd/benchreport

migrate: services build
	./bin/stagely migrate --database-url '$(DATABASE_URL)'
