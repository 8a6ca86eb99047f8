package certs

import (
	"slices"

	"github.com/rs/zerolog"
	"go.uber.org/zap/zapcore"
)

// zerologCore writes certmagic's zap log entries to Stagely's zerolog
// logger, so that the proxy has one log format.
type zerologCore struct {
	log    zerolog.Logger
	fields []zapcore.Field
}

func zerologLevel(l zapcore.Level) zerolog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return zerolog.DebugLevel
	case l == zapcore.InfoLevel:
		return zerolog.InfoLevel
	case l == zapcore.WarnLevel:
		return zerolog.WarnLevel
	default:
		return zerolog.ErrorLevel
	}
}

func (c zerologCore) Enabled(l zapcore.Level) bool {
	zl := zerologLevel(l)
	return zl >= c.log.GetLevel() && zl >= zerolog.GlobalLevel()
}

func (c zerologCore) With(fields []zapcore.Field) zapcore.Core {
	return zerologCore{log: c.log, fields: append(slices.Clip(c.fields), fields...)}
}

func (c zerologCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c zerologCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	ev := c.log.WithLevel(zerologLevel(e.Level))
	if ev == nil { // disabled logger
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	ev.Str("logger", e.LoggerName).Fields(enc.Fields).Msg(e.Message)
	return nil
}

func (c zerologCore) Sync() error { return nil }
