package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"
)

// FaultEnv is the environment variable tests set to inject faults into a
// real strata server's coordinator:
//
//	kill-at=STEP        SIGKILL the process at STEP: opened, captured,
//	                    snapshotted, backup (before the first volume's
//	                    backup request), acked (after the first accepted
//	                    ack), acked-all, committing, written (the default
//	                    target holds the manifest), copied
//	delay-ack=VOL:DUR   hold volume VOL's acknowledgement for DUR
//
// separated by commas. Production never sets it.
const FaultEnv = "STRATA_FAULT"

type faults struct {
	killAt   string
	delayVol string
	delayFor time.Duration
}

func parseFaults(spec string) (faults, error) {
	var f faults
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "kill-at":
			f.killAt = v
		case "delay-ack":
			vol, d, ok := strings.Cut(v, ":")
			dur, err := time.ParseDuration(d)
			if !ok || err != nil {
				return faults{}, fmt.Errorf("%s: delay-ack=%q: want VOLUME:DURATION", FaultEnv, v)
			}
			f.delayVol, f.delayFor = vol, dur
		default:
			return faults{}, fmt.Errorf("%s: unknown fault %q", FaultEnv, part)
		}
	}
	return f, nil
}

// hit kills the process if the fault spec names step.
func (f faults) hit(step string) {
	if f.killAt == step {
		slog.Error("fault injection: killing the process", "step", step)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// delay holds volume vol's acknowledgement if the spec says so.
func (f faults) delay(ctx context.Context, vol string) error {
	if f.delayVol != vol || f.delayFor <= 0 {
		return nil
	}
	t := time.NewTimer(f.delayFor)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
