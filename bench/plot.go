package main

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

var (
	colP99     = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	colMax     = color.RGBA{R: 158, G: 202, B: 225, A: 255}
	colFail    = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	colRestart = color.RGBA{R: 90, G: 90, B: 90, A: 255}
	colGone    = color.RGBA{R: 44, G: 160, B: 44, A: 255}
)

// writePlot draws one panel pair per method (rows) and load mode (columns):
// latency per 100 ms (p99 and max, log scale) and failed requests per
// 100 ms, with each restart trigger (grey) and old-instance exit (green) marked.
func writePlot(path string, rep *report, modes []string) error {
	var methods []string
	seen := map[string]bool{}
	byKey := map[string]*runResult{}
	for _, r := range rep.Runs {
		if r.Scenario != "load" {
			continue
		}
		byKey[r.Method+"/"+r.Mode] = r
		if !seen[r.Method] {
			seen[r.Method] = true
			methods = append(methods, r.Method)
		}
	}
	if len(methods) == 0 {
		return fmt.Errorf("no results to plot")
	}
	rows, cols := len(methods), 2*len(modes)
	plots := make([][]*plot.Plot, rows)
	for i, m := range methods {
		plots[i] = make([]*plot.Plot, cols)
		for j, mode := range modes {
			r := byKey[m+"/"+mode]
			plots[i][2*j] = latencyPlot(r, m, mode)
			plots[i][2*j+1] = failPlot(r, m, mode)
		}
	}
	w, h := vg.Length(cols)*3.2*vg.Inch, vg.Length(rows)*2.1*vg.Inch
	img := vgsvg.New(w, h)
	dc := draw.New(img)
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: 4 * vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align(plots, t, dc)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := img.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func title(r *runResult, m, mode, what string) string {
	name := m
	if r != nil {
		name = r.Title
	}
	return fmt.Sprintf("%s — %s\n%s", name, mode, what)
}

func latencyPlot(r *runResult, m, mode string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title(r, m, mode, "latency per 100 ms (ms, log)")
	p.Title.TextStyle.Font.Size = vg.Points(8)
	p.X.Label.Text = "s"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0.01, 10000
	p.X.Min = 0
	if r == nil || len(r.Timeline) == 0 {
		return p
	}
	p.X.Max = r.DurationSec
	var p99, mx plotter.XYs
	hi := 0.1
	for _, b := range r.Timeline {
		if b.OK == 0 {
			continue
		}
		p99 = append(p99, plotter.XY{X: b.T, Y: math.Max(b.P99ms, 0.01)})
		mx = append(mx, plotter.XY{X: b.T, Y: math.Max(b.MaxMs, 0.01)})
		hi = math.Max(hi, b.MaxMs)
	}
	p.Y.Max = math.Pow(10, math.Ceil(math.Log10(hi*1.5)))
	lo := 1e9
	for _, xy := range p99 {
		lo = math.Min(lo, xy.Y)
	}
	if lo < 1e9 {
		p.Y.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	}
	if len(mx) > 0 {
		l, _ := plotter.NewLine(mx)
		l.Color = colMax
		p.Add(l)
		p.Legend.Add("max", l)
	}
	if len(p99) > 0 {
		l, _ := plotter.NewLine(p99)
		l.Color = colP99
		p.Add(l)
		p.Legend.Add("p99", l)
	}
	markRestarts(p, r, p.Y.Min, p.Y.Max)
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(7)
	return p
}

func failPlot(r *runResult, m, mode string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title(r, m, mode, "failed requests per 100 ms")
	p.Title.TextStyle.Font.Size = vg.Points(8)
	p.X.Label.Text = "s"
	p.X.Min, p.Y.Min, p.Y.Max = 0, 0, 1
	if r == nil || len(r.Timeline) == 0 {
		return p
	}
	p.X.Max = r.DurationSec
	var xy plotter.XYs
	hi := 1.0
	for _, b := range r.Timeline {
		xy = append(xy, plotter.XY{X: b.T, Y: float64(b.Failed)})
		hi = math.Max(hi, float64(b.Failed))
	}
	p.Y.Max = hi * 1.1
	l, _ := plotter.NewLine(xy)
	l.Color = colFail
	p.Add(l)
	markRestarts(p, r, 0, p.Y.Max)
	return p
}

func markRestarts(p *plot.Plot, r *runResult, lo, hi float64) {
	for _, e := range r.Restarts {
		v, _ := plotter.NewLine(plotter.XYs{{X: e.AtSec, Y: lo}, {X: e.AtSec, Y: hi}})
		v.Color = colRestart
		v.Dashes = []vg.Length{vg.Points(3), vg.Points(2)}
		p.Add(v)
		if e.OldGoneMs >= 0 {
			x := e.AtSec + e.OldGoneMs/1000
			g, _ := plotter.NewLine(plotter.XYs{{X: x, Y: lo}, {X: x, Y: hi}})
			g.Color = colGone
			g.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
			p.Add(g)
		}
	}
}
