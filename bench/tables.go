package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The README and docs carry tables generated from a results JSON, between
// marker comments that name the table and the JSON (relative to bench/):
//
//	<!-- bench:table summary results/full.json BEGIN -->
//	(generated)
//	<!-- bench:table summary END -->
//
// `go run . -tables FILE.md...` (from bench/) rewrites what lies between
// every such pair in each file, and nothing else.
const (
	markerPrefix = "<!-- bench:table "
	markerSuffix = " -->"
)

// tableWriters are the tables a marker can name.
var tableWriters = map[string]func(io.Writer, *report){
	"stamp":     writeStampLine,
	"summary":   writeSummaryTable,
	"newconn":   func(w io.Writer, rep *report) { writeLoadTable(w, rep, modeNewConn) },
	"keepalive": func(w io.Writer, rep *report) { writeLoadTable(w, rep, modeKeepAlive) },
	"post":      func(w io.Writer, rep *report) { writeLoadTable(w, rep, modePost) },
	"idle":      writeIdleTable,
	"cutover":   writeCutoverTable,
	"handover":  writeHandoverTable,
	"sleep":     writeSleepTable,
	"notes":     writeNotes,
}

func tableNames() string {
	var names []string
	for n := range tableWriters {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// regenerateTables rewrites the generated tables in each file; paths of
// results JSON are relative to benchDir. It reports the files it changed.
func regenerateTables(benchDir string, files []string) (changed []string, err error) {
	reports := map[string]*report{}
	load := func(rel string) (*report, error) {
		if r, ok := reports[rel]; ok {
			return r, nil
		}
		b, err := os.ReadFile(filepath.Join(benchDir, rel))
		if err != nil {
			return nil, fmt.Errorf("read results %s: %w", rel, err)
		}
		r := &report{}
		if err := json.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("parse results %s: %w", rel, err)
		}
		reports[rel] = r
		return r, nil
	}
	for _, f := range files {
		old, err := os.ReadFile(f)
		if err != nil {
			return changed, fmt.Errorf("read %s: %w", f, err)
		}
		out, err := fillTables(old, load)
		if err != nil {
			return changed, fmt.Errorf("%s: %w", f, err)
		}
		if bytes.Equal(out, old) {
			continue
		}
		if err := os.WriteFile(f, out, 0o644); err != nil {
			return changed, fmt.Errorf("write %s: %w", f, err)
		}
		changed = append(changed, f)
	}
	return changed, nil
}

// fillTables replaces the lines between each BEGIN marker and its END
// marker with the named table rendered from the named results.
func fillTables(md []byte, load func(rel string) (*report, error)) ([]byte, error) {
	lines := strings.SplitAfter(string(md), "\n")
	var out strings.Builder
	fence := "" // the fence of the code block we are in ("" outside one)
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		out.WriteString(line)
		if f, ok := fenceOf(line, fence); ok {
			fence = f
			continue
		}
		if fence != "" {
			continue // a marker shown in a code block is an example
		}
		name, src, ok := beginMarker(line)
		if !ok {
			continue
		}
		write, known := tableWriters[name]
		if !known {
			return nil, fmt.Errorf("line %d: unknown table %q (known: %s)", i+1, name, tableNames())
		}
		end := markerPrefix + name + " END" + markerSuffix
		j := i + 1
		for j < len(lines) && strings.TrimSpace(lines[j]) != end {
			if _, _, nested := beginMarker(lines[j]); nested {
				return nil, fmt.Errorf("line %d: table %q has no %q before the next BEGIN", i+1, name, end)
			}
			j++
		}
		if j == len(lines) {
			return nil, fmt.Errorf("line %d: table %q has no %q", i+1, name, end)
		}
		rep, err := load(src)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		var tb strings.Builder
		write(&tb, rep)
		out.WriteString(tb.String())
		out.WriteString(lines[j])
		i = j
	}
	return []byte(out.String()), nil
}

// fenceOf reports whether line opens or closes a fenced code block
// (CommonMark: three or more backticks or tildes, indented at most three
// spaces) and returns the fence we are in after it: the opening run when
// it opens one (open is ""), "" when it closes open (the same character,
// at least as long, nothing after it).
func fenceOf(line, open string) (string, bool) {
	l := strings.TrimRight(line, "\r\n")
	trimmed := strings.TrimLeft(l, " ")
	if len(l)-len(trimmed) > 3 || len(trimmed) < 3 || (trimmed[0] != '`' && trimmed[0] != '~') {
		return open, false
	}
	c := trimmed[0]
	n := 0
	for n < len(trimmed) && trimmed[n] == c {
		n++
	}
	if n < 3 {
		return open, false
	}
	if open == "" {
		if c == '`' && strings.Contains(trimmed[n:], "`") {
			return open, false // an inline code span, not a fence
		}
		return trimmed[:n], true
	}
	if c == open[0] && n >= len(open) && strings.TrimSpace(trimmed[n:]) == "" {
		return "", true
	}
	return open, false
}

// beginMarker parses "<!-- bench:table NAME FILE BEGIN -->".
func beginMarker(line string) (name, src string, ok bool) {
	l := strings.TrimSpace(line)
	if !strings.HasPrefix(l, markerPrefix) || !strings.HasSuffix(l, markerSuffix) {
		return "", "", false
	}
	f := strings.Fields(strings.TrimSuffix(strings.TrimPrefix(l, markerPrefix), markerSuffix))
	if len(f) != 3 || f[2] != "BEGIN" {
		return "", "", false
	}
	return f[0], f[1], true
}

// writeSummaryTable is the comparison for the README: one row per
// restarting method, failures per restart in each load mode, silent
// retries, and restart times over every restart of the load runs.
func writeSummaryTable(w io.Writer, rep *report) {
	modes := reportModes(rep)
	var methods []string
	byKey := map[string]*runResult{}
	for _, r := range rep.Runs {
		if r.Scenario != "load" || r.Method == "bare" {
			continue
		}
		if !slices.Contains(methods, r.Method) {
			methods = append(methods, r.Method)
		}
		byKey[r.Method+"/"+r.Mode] = r
	}
	var head, rule strings.Builder
	head.WriteString("| method |")
	rule.WriteString("|---|")
	for i, m := range modes {
		if i == 0 {
			fmt.Fprintf(&head, " failed per restart: %s |", modeTitles[m])
		} else {
			fmt.Fprintf(&head, " %s |", modeTitles[m])
		}
		rule.WriteString("---:|")
	}
	fmt.Fprintf(&head, " silent retries per restart (%s) | restart, ms (mean; max): trigger → first answer from the new instance (load) / old instance gone | supervisor process |", modeShortList(modes))
	rule.WriteString("---|---|---|")
	fmt.Fprintln(w, head.String())
	fmt.Fprintln(w, rule.String())
	for _, m := range methods {
		var title string
		var first, retries []string
		var firstMs, goneMs []float64
		var supCell string
		for _, mode := range modes {
			r := byKey[m+"/"+mode]
			if r == nil {
				first = append(first, "")
				retries = append(retries, "")
				continue
			}
			title = r.Title
			first = append(first, failedPerRestartCell(r))
			if len(r.Restarts) > 0 {
				retries = append(retries, fmt.Sprintf("%.1f", float64(r.Retries)/float64(len(r.Restarts))))
			} else {
				retries = append(retries, "-")
			}
			for _, e := range r.Restarts {
				firstMs = append(firstMs, e.FirstNewByLoadMs)
				goneMs = append(goneMs, e.OldGoneMs)
			}
			if s := r.Supervisor; s != nil && supCell == "" {
				supCell = fmt.Sprintf("resident, peak RSS %.1f MiB", s.MaxRSSMB)
				if s.Kind == "per restart" {
					supCell = fmt.Sprintf("one-shot per restart, peak RSS %.1f MiB", s.MaxRSSMB)
				}
			}
		}
		if supCell == "" {
			supCell = "none"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s / %s | %s |\n", title, strings.Join(first, " | "), strings.Join(retries, " / "),
			meanMax(firstMs), meanMax(goneMs), supCell)
	}
}

func modeShortList(modes []string) string {
	short := map[string]string{modeNewConn: "new conn.", modeKeepAlive: "keep-alive GET", modePost: "POST"}
	var out []string
	for _, m := range modes {
		out = append(out, short[m])
	}
	return strings.Join(out, " / ")
}

// failedPerRestartCell is a run's failures per restart, bold when zero,
// with its error or its restarts without load when it had any.
func failedPerRestartCell(r *runResult) string {
	if r.Error != "" && r.Requests == 0 {
		return "error: " + r.Error
	}
	if len(r.Restarts) == 0 {
		return "-"
	}
	cell := fmt.Sprintf("%.1f", r.PerRestart)
	if r.Failed == 0 {
		cell = "**0**"
	}
	if n := countWithoutLoad(r); n > 0 {
		cell += fmt.Sprintf(" (%d of %d restarts without load)", n, len(r.Restarts))
	}
	if r.Error != "" {
		cell += " (error: " + r.Error + ")"
	}
	return cell
}
