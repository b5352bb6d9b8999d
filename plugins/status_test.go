package plugins_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"testing"

	"github.com/strata-block/strata/plugins"
)

// errTarget fails every call with err.
type errTarget struct{ err error }

func (e errTarget) Info(context.Context) (plugins.Info, error) { return plugins.Info{}, e.err }
func (e errTarget) Put(context.Context, string, io.Reader, int64) error {
	return e.err
}
func (e errTarget) PutIfAbsent(context.Context, string, io.Reader, int64) error { return e.err }
func (e errTarget) Get(context.Context, string, int64, int64) (io.ReadCloser, int64, error) {
	return nil, 0, e.err
}
func (e errTarget) Has(context.Context, []string) ([]bool, error) { return nil, e.err }
func (e errTarget) List(context.Context, string, string) iter.Seq2[plugins.ObjectInfo, error] {
	return func(yield func(plugins.ObjectInfo, error) bool) { yield(plugins.ObjectInfo{}, e.err) }
}
func (e errTarget) Delete(context.Context, []string) error { return e.err }
func (e errTarget) Close() error                           { return nil }

// Every error class survives the gRPC boundary, for every call.
func TestErrorClassesAcrossGRPC(t *testing.T) {
	t.Parallel()
	tests := []struct {
		sentinel error
		class    plugins.Class
	}{
		{sentinel: plugins.ErrNotFound, class: plugins.ClassNotFound},
		{sentinel: plugins.ErrAlreadyExists, class: plugins.ClassAlreadyExists},
		{sentinel: plugins.ErrTransient, class: plugins.ClassTransient},
		{sentinel: plugins.ErrPermanent, class: plugins.ClassPermanent},
		{sentinel: plugins.ErrInvalidKey, class: plugins.ClassPermanent},
		{sentinel: plugins.ErrInvalidRange, class: plugins.ClassPermanent},
		{sentinel: plugins.ErrUnsupported, class: plugins.ClassPermanent},
		{sentinel: errors.New("unclassified"), class: plugins.ClassPermanent},
	}
	for _, tt := range tests {
		t.Run(tt.sentinel.Error(), func(t *testing.T) {
			t.Parallel()
			wrapped := fmt.Errorf("object %q: %w", "k", tt.sentinel)
			open := func(context.Context, string, plugins.Credentials) (plugins.Target, error) {
				return errTarget{err: wrapped}, nil
			}
			tg := plugins.NewInProcess(t, open, "x:")
			ctx := t.Context()
			_, infoErr := tg.Info(ctx)
			_, _, getErr := tg.Get(ctx, "k", 0, -1)
			_, hasErr := tg.Has(ctx, []string{"k"})
			var listErr error
			for _, err := range tg.List(ctx, "", "") {
				listErr = err
			}
			errs := map[string]error{
				"info": infoErr, "get": getErr, "has": hasErr, "list": listErr,
				"put":    tg.Put(ctx, "k", nil, 0),
				"putabs": tg.PutIfAbsent(ctx, "k", nil, 0),
				"delete": tg.Delete(ctx, []string{"k"}),
			}
			for op, err := range errs {
				if got := plugins.Classify(err); got != tt.class {
					t.Errorf("%s: %v classified %v, want %v", op, err, got, tt.class)
				}
				// An unclassified error arrives as ErrPermanent.
				want := tt.sentinel
				if tt.class == plugins.ClassPermanent && !errors.Is(want, plugins.ErrPermanent) {
					want = plugins.ErrPermanent
				}
				if !errors.Is(err, want) {
					t.Errorf("%s: %v does not wrap %v", op, err, want)
				}
			}
		})
	}
}

func TestConditionalCreateString(t *testing.T) {
	t.Parallel()
	for _, c := range []plugins.ConditionalCreate{plugins.ConditionalCreateUnknown, plugins.ConditionalCreateAtomic, plugins.ConditionalCreateCheckThenPut, plugins.ConditionalCreateNone} {
		got, err := plugins.ParseConditionalCreate(c.String())
		if err != nil || got != c {
			t.Errorf("ParseConditionalCreate(%q) = %v, %v", c.String(), got, err)
		}
	}
	if _, err := plugins.ParseConditionalCreate("maybe"); err == nil {
		t.Errorf("ParseConditionalCreate(maybe) succeeded")
	}
}
