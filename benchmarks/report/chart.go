package main

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

type bar struct {
	Label    string
	Value    float64
	Lo, Hi   float64 // per-round range
	Peer     bool
	HasRange bool
}

// chartBars: one bar per measured (figure, comparison) of the section,
// plain ratios excluded.
func chartBars(smp *Samples, s *section) []bar {
	var bars []bar
	for _, c := range s.Compare {
		if c.Plain {
			continue
		}
		for _, f := range s.Figures {
			r := s.ratio(smp, c, f.Key)
			if !r.OK {
				continue
			}
			bars = append(bars, bar{
				Label: f.Label + " · " + c.Label,
				Value: r.Value,
				Lo:    r.PerRound.Min, Hi: r.PerRound.Max,
				HasRange: r.PerRound.N > 1,
				Peer:     c.Peer,
			})
		}
	}
	return bars
}

var (
	colAhead  = color.RGBA{R: 0x2e, G: 0x8b, B: 0x57, A: 0xff}
	colBehind = color.RGBA{R: 0xc0, G: 0x39, B: 0x2b, A: 0xff}
	colOther  = color.RGBA{R: 0x70, G: 0x80, B: 0x90, A: 0xff}
)

// Chart writes a horizontal bar chart of the section's advantages to file
// (PNG): green where Strata is ahead of a peer, red where it is behind,
// grey for comparisons that are not against a peer (depth cost, fraction
// of the raw limit), whiskers for the per-round range, a line at 1.
func Chart(smp *Samples, s *section, file string) error {
	bars := chartBars(smp, s)
	if len(bars) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = s.Title + ": advantage of Strata (above 1 = Strata ahead)"
	p.X.Label.Text = "ratio (median of A / median of B, oriented so that above 1 favours Strata)"
	p.Title.Padding = vg.Points(10)
	// The line at 1 first, so that the bars are drawn over it.
	one, err := plotter.NewLine(plotter.XYs{{X: 1, Y: -0.5}, {X: 1, Y: float64(len(bars)) - 0.5}})
	if err != nil {
		return err
	}
	one.LineStyle.Width = vg.Points(1.5)
	one.LineStyle.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(plotter.NewGrid(), one)
	labels := make([]string, len(bars))
	// The axis follows the bars; a whisker reaching past 1.6× the longest
	// bar (one disturbed round) is cut there and its label says how far.
	axisMax := 1.5
	for _, b := range bars {
		axisMax = max(axisMax, b.Value*1.6)
	}
	xmax := 1.0
	for i, b := range bars {
		// Top to bottom in declaration order.
		idx := len(bars) - 1 - i
		// Leading spaces: the axis is sized by the measured label width,
		// which comes out a character short of the drawn text.
		labels[idx] = "    " + b.Label
		v, err := plotter.NewBarChart(plotter.Values{b.Value}, vg.Points(14))
		if err != nil {
			return err
		}
		v.Horizontal = true
		v.XMin = float64(idx)
		v.LineStyle.Width = 0
		switch {
		case !b.Peer:
			v.Color = colOther
		case b.Value < levelLo:
			v.Color = colBehind
		default:
			v.Color = colAhead
		}
		p.Add(v)
		hi := b.Value
		text := fmt.Sprintf(" %.2f×", b.Value)
		if b.HasRange {
			whisker := min(b.Hi, axisMax)
			if whisker < b.Hi {
				text += fmt.Sprintf(" (a round at %.2f×)", b.Hi)
			}
			hi = math.Max(hi, whisker)
			eb := &plotter.XErrorBars{
				XYs:       plotter.XYs{{X: b.Value, Y: float64(idx)}},
				XErrors:   plotter.XErrors{{Low: b.Value - b.Lo, High: whisker - b.Value}},
				LineStyle: draw.LineStyle{Color: color.Black, Width: vg.Points(1)},
				CapWidth:  vg.Points(6),
			}
			p.Add(eb)
		}
		xmax = math.Max(xmax, hi)
		lbl, err := plotter.NewLabels(plotter.XYLabels{
			XYs:    []plotter.XY{{X: hi, Y: float64(idx)}},
			Labels: []string{text},
		})
		if err != nil {
			return err
		}
		lbl.TextStyle[0].YAlign = draw.YCenter
		p.Add(lbl)
	}
	p.NominalY(labels...)
	p.X.Min = 0
	p.X.Max = xmax * 1.25
	h := vg.Length(len(bars))*vg.Points(22) + vg.Inch*1.2
	return p.Save(10*vg.Inch, h, file)
}
