package config_test

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"

	"krunbox.dev/netd/internal/config"
)

func readLines(t *testing.T, path string) [][]byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) > 0 {
			out = append(out, append([]byte(nil), sc.Bytes()...))
		}
	}
	return out
}

// The shared vectors (netd/vectors/): what the TypeScript side writes must
// parse here, and each invalid line fails naming its field.
func TestConfigVectors(t *testing.T) {
	for i, line := range readLines(t, "../../vectors/config-valid.jsonl") {
		if _, err := config.Parse(line); err != nil {
			t.Errorf("valid vector %d: %v", i, err)
		}
	}
	invalid := readLines(t, "../../vectors/config-invalid.jsonl")
	if len(invalid) == 0 {
		t.Fatal("no invalid vectors")
	}
	for i, line := range invalid {
		var v struct {
			Field  string          `json:"field"`
			Config json.RawMessage `json:"config"`
		}
		if err := json.Unmarshal(line, &v); err != nil {
			t.Fatalf("vector %d: %v", i, err)
		}
		_, err := config.Parse(v.Config)
		ce, ok := err.(*config.Error)
		if !ok || ce.Field != v.Field {
			t.Errorf("invalid vector %d: got %v, want an error naming %s", i, err, v.Field)
		}
	}
}
