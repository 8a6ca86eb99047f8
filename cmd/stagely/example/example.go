// Package example is the example repository the demo and the end-to-end
// tests open pull requests on: a small two-service compose app whose
// images are built FROM scratch around one static Go binary, so nothing
// is pulled from a registry.
package example

import (
	"context"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

//go:embed app/main.go
var src embed.FS

// Config is the repository's .stagely.yml.
const Config = `version: 1
previews:
  - name: web
    service: web
    port: 8080
health:
  path: /healthz
  timeout: 2m
`

// Compose is the repository's compose.yaml. It publishes a port, as
// developers' files do; Stagely's override removes it.
const Compose = `services:
  web:
    build: ./web
    command: ["-role=web", "-listen=:8080", "-backend=http://backend:9000/"]
    ports:
      - "8080:8080"
    depends_on: [backend]
  backend:
    build: ./backend
    command: ["-role=backend", "-listen=:9000"]
`

const dockerfile = "FROM scratch\nCOPY app /app\n%sENTRYPOINT [\"/app\"]\n"

// Build compiles the app (static, for FROM scratch) with the go command.
func Build(ctx context.Context, dir string) ([]byte, error) {
	main, err := src.ReadFile("app/main.go")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), main, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module exampleapp\n\ngo 1.22\n"), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", "app", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the example app: %v\n%s", err, out)
	}
	return os.ReadFile(filepath.Join(dir, "app"))
}

// Files is the repository's tree with the backend answering message.
func Files(binary []byte, message string) map[string]string {
	return map[string]string{
		".stagely.yml":        Config,
		"compose.yaml":        Compose,
		"web/Dockerfile":      fmt.Sprintf(dockerfile, ""),
		"web/app":             string(binary),
		"backend/Dockerfile":  fmt.Sprintf(dockerfile, "COPY message.txt /message.txt\n"),
		"backend/app":         string(binary),
		"backend/message.txt": message + "\n",
	}
}
