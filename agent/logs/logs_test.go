package logs_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent/logs"
	"github.com/stagely-dev/stagely/agent/protocol"
)

func TestMaskerHidesEverySecretValue(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		in      string
		want    string
	}{
		{"one secret", []string{"hunter2"}, "password=hunter2!", "password=***!"},
		{"every occurrence", []string{"abc"}, "abc-abc", "***-***"},
		{"a secret inside another is masked whole", []string{"key", "longkeyvalue"}, "x longkeyvalue key", "x *** ***"},
		{"a line of a multi-line secret", []string{"-----BEGIN KEY-----\nMIIBOgIBAAJBAK\n-----END KEY-----"}, "leaked MIIBOgIBAAJBAK here", "leaked *** here"},
		{"empty secrets mask nothing", []string{""}, "nothing to hide", "nothing to hide"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := logs.NewMasker(tt.secrets).Mask(tt.in); got != tt.want {
				t.Fatalf("Mask(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
	var nilMasker *logs.Masker
	if got := nilMasker.Mask("plain"); got != "plain" {
		t.Fatalf("nil masker changed %q", got)
	}
}

func collect(m *logs.Masker) (*logs.LineWriter, *[]string) {
	var lines []string
	return logs.NewLineWriter(m, func(l string) { lines = append(lines, l) }), &lines
}

func TestLineWriterMasksSecretsSplitAcrossWrites(t *testing.T) {
	const secret = "s3cr3t-value"
	out := "starting\r\napi key is " + secret + " ok\nbye " + secret
	for chunk := 1; chunk <= 7; chunk++ {
		t.Run(fmt.Sprint("chunks of ", chunk), func(t *testing.T) {
			w, lines := collect(logs.NewMasker([]string{secret}))
			for i := 0; i < len(out); i += chunk {
				w.Write([]byte(out[i:min(i+chunk, len(out))]))
			}
			w.Flush()
			want := []string{"starting", "api key is *** ok", "bye ***"}
			if strings.Join(*lines, "|") != strings.Join(want, "|") {
				t.Fatalf("lines = %q, want %q", *lines, want)
			}
		})
	}
}

func TestLineWriterCutsRunawayLinesWithoutSplittingASecret(t *testing.T) {
	const secret = "TOPSECRETTOPSECRET"
	// A line far longer than the limit, with the secret at every offset
	// around the cut points.
	var b strings.Builder
	for b.Len() < 3*logs.DefaultMaxLine {
		b.WriteString(strings.Repeat("x", b.Len()%31))
		b.WriteString(secret)
	}
	w, lines := collect(logs.NewMasker([]string{secret}))
	in := b.String()
	for i := 0; i < len(in); i += 1000 {
		w.Write([]byte(in[i:min(i+1000, len(in))]))
	}
	w.Flush()
	if len(*lines) < 2 {
		t.Fatalf("a %d-byte line was not cut", len(in))
	}
	joined := strings.Join(*lines, "")
	if strings.Contains(joined, "TOPSECRET") || strings.Contains(joined, "SECRETTOP") {
		t.Fatal("part of the secret survived a cut")
	}
	if strings.Count(joined, logs.Mask) != strings.Count(in, secret) {
		t.Fatalf("%d masks for %d secrets", strings.Count(joined, logs.Mask), strings.Count(in, secret))
	}
	for _, l := range *lines {
		if len(l) > logs.DefaultMaxLine+len(secret) {
			t.Fatalf("emitted a %d-byte line", len(l))
		}
	}
}

func line(i int) protocol.LogLine {
	return protocol.LogLine{Stream: protocol.StreamBuild, Text: fmt.Sprint(i)}
}

func TestBufferDropsOldestAndSaysHowMany(t *testing.T) {
	b := logs.NewBuffer(3)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= 10; i++ {
			b.Add(line(i)) // nobody reads: must not block
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Add blocked on a full buffer")
	}
	got, err := b.Take(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, l := range got {
		texts = append(texts, l.Text)
	}
	want := []string{"7 lines dropped", "8", "9", "10"}
	if strings.Join(texts, "|") != strings.Join(want, "|") {
		t.Fatalf("took %q, want %q", texts, want)
	}
	if got[0].Dropped != 7 || got[0].Stream != protocol.StreamAgent {
		t.Fatalf("marker = %+v", got[0])
	}
}

func TestBufferTakeWaitsForLinesAndEndsAfterClose(t *testing.T) {
	b := logs.NewBuffer(10)
	go func() {
		time.Sleep(20 * time.Millisecond)
		b.Add(line(1))
		b.Add(line(2))
		b.Close()
	}()
	var texts []string
	for {
		got, err := b.Take(context.Background(), 1)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range got {
			texts = append(texts, l.Text)
		}
	}
	if strings.Join(texts, ",") != "1,2" {
		t.Fatalf("took %q", texts)
	}
	b.Add(line(3)) // after Close: ignored, no panic
}

func TestBufferTakeHonoursItsContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := logs.NewBuffer(1).Take(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}
