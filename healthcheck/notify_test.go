package healthcheck

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseNotify(t *testing.T) {
	good := []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"READY=1", map[string]string{"READY": "1"}},
		{"READY=1\n", map[string]string{"READY": "1"}},
		{"\n\nREADY=1\n\nSTATUS=Serving on :8080\n", map[string]string{"READY": "1", "STATUS": "Serving on :8080"}},
		{"STATUS=a=b=c", map[string]string{"STATUS": "a=b=c"}},
		{"STATUS=", map[string]string{"STATUS": ""}},
		{"STATUS=first\nSTATUS=second", map[string]string{"STATUS": "second"}},
		{"MAINPID=4242\nX_CUSTOM_2=yes", map[string]string{"MAINPID": "4242", "X_CUSTOM_2": "yes"}},
	}
	for _, tc := range good {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseNotify([]byte(tc.in))
			if err != nil {
				t.Fatalf("ParseNotify(%q): %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseNotify(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}

	bad := []struct {
		in, wantErr string
	}{
		{"READY", `line 1 "READY": missing '='`},
		{"READY=1\nbogus", `line 2 "bogus": missing '='`},
		{"READY=1\n\n=1", `line 3 "=1": empty key`},
		{"ready=1", `line 1 "ready=1": key "ready"`},
		{"READY =1", `key "READY "`},
		{"RE-ADY=1", `key "RE-ADY"`},
		{"STATUS=ok\r\nREADY=1", ""}, // a CR belongs to the value: allowed
		{"Ä=1", `key "Ä"`},
	}
	for _, tc := range bad {
		t.Run("bad/"+tc.in, func(t *testing.T) {
			got, err := ParseNotify([]byte(tc.in))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseNotify(%q): %v", tc.in, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseNotify(%q) = %v, want error", tc.in, got)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

// formatNotify is the inverse of ParseNotify: one KEY=VALUE line per field,
// in key order.
func formatNotify(fields map[string]string) []byte {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		b.WriteString(k + "=" + fields[k] + "\n")
	}
	return []byte(b.String())
}

func FuzzParseNotify(f *testing.F) {
	for _, seed := range []string{
		"",
		"READY=1",
		"READY=1\nSTATUS=Serving requests\n",
		"STOPPING=1\n",
		"STATUS=a=b\n\n\nMAINPID=1\n",
		"RELOADING=1\nMONOTONIC_USEC=123456789\n",
		"ERRNO=2\nBUSERROR=org.example.Failed",
		"READY",
		"=1",
		"ready=1",
		"STATUS=\xff\x00\r\n",
		"FDSTORE=1\nFDNAME=sock\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fields, err := ParseNotify(b)
		if err != nil {
			if fields != nil {
				t.Errorf("ParseNotify(%q) returned %v with error %v", b, fields, err)
			}
			if !strings.Contains(err.Error(), "line ") {
				t.Errorf("ParseNotify(%q): error %q does not name the line", b, err)
			}
			return
		}
		for k, v := range fields {
			if k == "" || !validNotifyKey(k) || strings.Contains(v, "\n") {
				t.Fatalf("ParseNotify(%q) returned bad field %q=%q", b, k, v)
			}
		}
		again, err := ParseNotify(formatNotify(fields))
		if err != nil {
			t.Fatalf("ParseNotify(formatNotify(%v)): %v", fields, err)
		}
		if !reflect.DeepEqual(again, fields) {
			t.Fatalf("round trip of %q: got %v, want %v", b, again, fields)
		}
	})
}
