//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/changeover-dev/changeover/internal/control"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

// cmdClient implements reload, status and stop.
func cmdClient(ctx context.Context, op string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(op, "[--name NAME | --control PATH]", stderr)
	name := fs.String("name", "", "name of the supervisor (its control socket is NAME.sock in the default directory)")
	sock := fs.String("control", "", "control socket path")
	asJSON := false
	if op == "status" {
		fs.BoolVar(&asJSON, "json", false, "print the status as JSON")
	}
	timeout := durationFlag(fs, "timeout", 10*time.Minute, "give up waiting for the supervisor after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef(fs, "unexpected argument %q", fs.Arg(0))
	}
	path := *sock
	switch {
	case path != "":
	case *name != "":
		path = control.DefaultPath(*name)
	default:
		p, err := control.FindOnly(control.DefaultDir())
		if err != nil {
			return err
		}
		path = p
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	resp, err := control.Call(ctx, path, control.Request{Op: op})
	if err != nil {
		return err
	}
	switch op {
	case "status":
		var st supervisor.Status
		if err := json.Unmarshal(resp.Body, &st); err != nil {
			return fmt.Errorf("status from %s: %w", path, err)
		}
		if asJSON {
			b, _ := json.MarshalIndent(st, "", "  ")
			fmt.Fprintf(stdout, "%s\n", b)
		} else {
			printStatus(stdout, st)
		}
	case "reload":
		var r supervisor.Result
		_ = json.Unmarshal(resp.Body, &r)
		if resp.Code == 0 {
			fmt.Fprintf(stdout, "generation %d took over in %v\n", r.Generation, r.Duration.Round(time.Millisecond))
		}
	case "stop":
		fmt.Fprintf(stdout, "stopping\n")
	}
	if resp.Code != 0 {
		return &codeError{resp.Code, fmt.Errorf("%s: %s", op, resp.Error)}
	}
	return nil
}

func printStatus(w io.Writer, st supervisor.Status) {
	fmt.Fprintf(w, "supervisor %s pid %d: ", st.Name, st.PID)
	if st.Serving > 0 {
		fmt.Fprintf(w, "generation %d serving", st.Serving)
	} else {
		fmt.Fprint(w, "no generation serving")
	}
	if st.Reloading {
		fmt.Fprint(w, ", reload running")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GENERATION\tPID\tSTATE\tSTARTED\tHEALTH\tHANDOVER\tEXIT")
	for _, g := range st.Generations {
		state := g.State
		if g.Adopted {
			state += " (adopted)"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\n", g.Generation, g.PID, state,
			g.Started.Format(time.RFC3339), g.HealthAddr, dash(g.Handover), dash(g.Exit))
	}
	tw.Flush()
	if r := st.LastReload; r != nil {
		res := "ok"
		if !r.OK {
			res = "failed: " + r.Error
		}
		gen := fmt.Sprintf("generation %d", r.Generation)
		if r.Generation == 0 {
			gen = "refused before a generation started" // stopping, or --max-draining
		}
		fmt.Fprintf(w, "last reload: %s at %s, %v: %s\n", gen,
			r.Started.Format(time.RFC3339), r.Duration.Round(time.Millisecond), res)
	}
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
