package main

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

var modeColors = map[string]color.RGBA{
	modeNewConn:   {R: 31, G: 119, B: 180, A: 255},
	modeKeepAlive: {R: 255, G: 127, B: 14, A: 255},
	modePost:      {R: 148, G: 103, B: 189, A: 255},
}

// headlineRow is one restarting method of the headline figure.
type headlineRow struct {
	title      string
	perRestart map[string]float64 // failed requests per restart, by load mode (-1: no run)
	cutover    []float64          // trigger -> first answer from the new instance (load), ms, every load restart
	oldGone    []float64          // trigger -> old instance gone, ms
}

// headlineRows gathers the load runs of rep by restarting method, in run order.
func headlineRows(rep *report) []*headlineRow {
	var rows []*headlineRow
	byMethod := map[string]*headlineRow{}
	for _, r := range rep.Runs {
		if r.Scenario != "load" || r.Method == "bare" {
			continue
		}
		row := byMethod[r.Method]
		if row == nil {
			row = &headlineRow{title: r.Title, perRestart: map[string]float64{}}
			byMethod[r.Method] = row
			rows = append(rows, row)
		}
		row.perRestart[r.Mode] = -1
		if len(r.Restarts) > 0 && !(r.Error != "" && r.Requests == 0) {
			row.perRestart[r.Mode] = r.PerRestart
		}
		for _, e := range r.Restarts {
			if e.FirstNewByLoadMs >= 0 {
				row.cutover = append(row.cutover, e.FirstNewByLoadMs)
			}
			if e.OldGoneMs >= 0 {
				row.oldGone = append(row.oldGone, e.OldGoneMs)
			}
		}
	}
	return rows
}

// writeHeadline draws the figure that leads the results: on the left,
// failed requests per restart for each method (rows) and load mode (bars);
// on the right, on one log-scale axis in ms, the mean (filled) and max
// (hollow) of the cutover seen by the load (first answer from the new
// instance) and of the time until the old instance was gone.
func writeHeadline(path string, rep *report) error {
	rows := headlineRows(rep)
	if len(rows) == 0 {
		return fmt.Errorf("no restarting method in the results")
	}
	modes := reportModes(rep)
	n := len(rows)
	names := make([]string, n)
	for i, r := range rows {
		names[n-1-i] = r.title // first method at the top
	}

	fail := plot.New()
	fail.Title.Text = "failed requests per restart, by load mode"
	fail.X.Label.Text = "failed requests per restart (mean)"
	fail.X.Min = 0
	fail.NominalY(names...)
	barW := vg.Points(min(14, 42/float64(max(len(modes), 1))))
	hi := 1.0
	for k, mode := range modes {
		vals := make(plotter.Values, n)
		var lx plotter.XYs
		var ls []string
		for i, r := range rows {
			v := r.perRestart[mode]
			y := n - 1 - i
			label := fmt.Sprintf("%.1f", v)
			switch {
			case v < 0:
				v, label = 0, "n/a"
			case v == 0:
				label = "0"
			}
			vals[y] = v
			hi = math.Max(hi, v)
			lx = append(lx, plotter.XY{X: v, Y: float64(y)})
			ls = append(ls, label)
		}
		b, err := plotter.NewBarChart(vals, barW)
		if err != nil {
			return fmt.Errorf("bar chart for %s: %w", mode, err)
		}
		b.Horizontal = true
		b.Color = modeColors[mode]
		b.LineStyle.Width = 0
		b.Offset = barW * vg.Length(float64(len(modes)-1)/2-float64(k))
		fail.Add(b)
		fail.Legend.Add(modeTitles[mode], b)
		// Value labels at the end of each bar, so that a zero shows.
		labels, err := plotter.NewLabels(plotter.XYLabels{XYs: lx, Labels: ls})
		if err == nil {
			for i := range labels.TextStyle {
				labels.TextStyle[i].Font.Size = vg.Points(7)
				labels.TextStyle[i].YAlign = draw.YCenter
			}
			labels.Offset = vg.Point{X: vg.Points(2), Y: b.Offset}
			fail.Add(labels)
		}
	}
	fail.X.Max = hi * 1.25
	fail.Legend.Top = true
	fail.Legend.TextStyle.Font.Size = vg.Points(8)

	times := plot.New()
	times.Title.Text = "restart times, ms (log): filled mean, hollow max"
	times.X.Label.Text = "ms after the trigger"
	times.X.Scale = plot.LogScale{}
	times.X.Tick.Marker = plot.LogTicks{Prec: -1}
	times.NominalY(names...)
	lo, top := math.Inf(1), 1.0
	series := []struct {
		label string
		get   func(*headlineRow) []float64
		col   color.RGBA
		shape draw.GlyphDrawer
		dy    float64
	}{
		{"cutover: first answer from the new instance (load)", func(r *headlineRow) []float64 { return r.cutover }, colP99, draw.CircleGlyph{}, 0.15},
		{"old instance gone", func(r *headlineRow) []float64 { return r.oldGone }, colGone, draw.PyramidGlyph{}, -0.15},
	}
	for _, s := range series {
		var mean, mx plotter.XYs
		for i, r := range rows {
			vs := s.get(r)
			if len(vs) == 0 {
				continue
			}
			y := float64(n-1-i) + s.dy
			var sum float64
			for _, v := range vs {
				sum += v
			}
			m := math.Max(sum/float64(len(vs)), 1) // the log axis starts at 1 ms
			x := math.Max(slices.Max(vs), 1)
			mean = append(mean, plotter.XY{X: m, Y: y})
			mx = append(mx, plotter.XY{X: x, Y: y})
			lo, top = math.Min(lo, m), math.Max(top, x)
		}
		if len(mean) == 0 {
			continue
		}
		sm, err := plotter.NewScatter(mean)
		if err != nil {
			return fmt.Errorf("scatter %s: %w", s.label, err)
		}
		sm.GlyphStyle = draw.GlyphStyle{Color: s.col, Radius: vg.Points(3.5), Shape: s.shape}
		sx, err := plotter.NewScatter(mx)
		if err != nil {
			return fmt.Errorf("scatter %s: %w", s.label, err)
		}
		hollow := draw.GlyphDrawer(draw.RingGlyph{})
		if _, ok := s.shape.(draw.PyramidGlyph); ok {
			hollow = draw.TriangleGlyph{} // gonum's pyramid is the filled triangle
		}
		sx.GlyphStyle = draw.GlyphStyle{Color: s.col, Radius: vg.Points(3.5), Shape: hollow}
		times.Add(sm, sx)
		times.Legend.Add(s.label, sm)
	}
	if math.IsInf(lo, 1) {
		lo = 1
	}
	times.X.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	times.X.Max = math.Pow(10, math.Ceil(math.Log10(top*1.2)))
	// Room above the first method for the legends.
	times.Y.Min, times.Y.Max = -0.6, float64(n)+0.5
	fail.Y.Min, fail.Y.Max = -0.6, float64(n)+0.5
	times.Legend.Top = true
	times.Legend.TextStyle.Font.Size = vg.Points(8)
	times.Add(plotter.NewGrid())

	for _, p := range []*plot.Plot{fail, times} {
		p.Title.TextStyle.Font.Size = vg.Points(10)
	}
	w, h := 13*vg.Inch, vg.Length(2+0.75*float64(n))*vg.Inch
	// .png for a look at it (vgimg); SVG otherwise.
	var img interface {
		vg.CanvasSizer
		WriteTo(io.Writer) (int64, error)
	}
	if strings.HasSuffix(path, ".png") {
		img = vgimg.PngCanvas{Canvas: vgimg.New(w, h)}
	} else {
		img = vgsvg.New(w, h)
	}
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: 8 * vg.Millimeter, PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter,
		PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	plots := [][]*plot.Plot{{fail, times}}
	canvases := plot.Align(plots, tiles, dc)
	fail.Draw(canvases[0][0])
	times.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := img.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
