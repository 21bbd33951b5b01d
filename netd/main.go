// netd is krunbox's network engine: one process per networked sandbox, a
// userspace TCP/IP stack on the guest's end of the VMM's frame socket that
// lets a flow reach the host's network only when the sandbox's policy allows.
// The contract with the runner is netd/PROTOCOL.md.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"krunbox.dev/netd/internal/config"
	"krunbox.dev/netd/internal/engine"
)

// version is netd's version, as `ready` and --version report it.
const version = "0.1.0"

// maxConfigLine bounds the configuration line.
const maxConfigLine = 4 << 20

// closeTimeout bounds the orderly close at exit.
const closeTimeout = 3 * time.Second

func main() {
	if err := noCoreDumps(); err != nil {
		fmt.Fprintln(os.Stderr, "netd: core dumps stay possible:", err)
	}
	os.Exit(run(os.Stdin, os.Stdout, os.Stderr, os.Args[1:]))
}

// noCoreDumps keeps netd out of core files (it holds secret values, which
// never rest on disk): RLIMIT_CORE 0, soft and hard, and PR_SET_DUMPABLE 0,
// which also keeps same-uid ptrace out.
func noCoreDumps() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return err
	}
	return unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
}

func run(stdin io.Reader, stdout, stderr io.Writer, args []string) int {
	if len(args) == 1 && args[0] == "--version" {
		fmt.Fprintln(stdout, "netd", version)
		return 0
	}
	out := engine.NewOutput(stdout)
	defer out.Close()
	fail := func(code int, err error) int {
		out.Error(err.Error())
		return code
	}
	if len(args) > 0 {
		return fail(2, errors.New("netd takes no arguments (its configuration is the first line on stdin)"))
	}
	in := bufio.NewReaderSize(stdin, 64<<10)
	line, err := readLine(in)
	if err != nil {
		return fail(2, fmt.Errorf("config: reading the first line of stdin: %w", err))
	}
	cfg, err := config.Parse(line)
	if err != nil {
		return fail(2, err)
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "netd: "+format+"\n", a...) }
	e, err := engine.New(cfg, out, engine.Options{Log: logf})
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			return fail(2, err)
		}
		return fail(1, err)
	}
	defer func() {
		// Fail closed even if a flow will not close: the process exit
		// closes every socket anyway.
		closed := make(chan struct{})
		go func() {
			e.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(closeTimeout):
			logf("closing took longer than %v: exiting anyway", closeTimeout)
		}
	}()
	if err := e.Listen(); err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			return fail(2, err)
		}
		return fail(1, err)
	}
	ready := map[string]any{"type": "ready", "version": version}
	if ca := e.CAPem(); ca != "" {
		ready["caPem"] = ca // only with secrets; its key never leaves netd's memory
	}
	out.Line(ready, true)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- e.Serve(ctx) }()
	control := make(chan int, 1)
	go func() { control <- commands(in, out, e) }()
	select {
	case code := <-control: // EOF, shutdown or a broken stdin: fail closed
		cancel()
		return code
	case err := <-served:
		if err != nil {
			logf("%v", err)
		}
		return 0
	}
}

// readLine reads one line of at most maxConfigLine bytes.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxConfigLine {
			return nil, fmt.Errorf("longer than %d bytes", maxConfigLine)
		}
		if err == nil {
			return line, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(line) > 0 {
			return line, nil
		}
		return nil, err
	}
}

// commands serves the control channel until EOF or shutdown (0), or a read
// error (1).
func commands(in *bufio.Reader, out *engine.Output, e *engine.Engine) int {
	for {
		line, err := readLine(in)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0
			}
			return 1
		}
		var cmd struct {
			Cmd string `json:"cmd"`
		}
		if json.Unmarshal(line, &cmd) != nil {
			out.Error("control: not a JSON command")
			continue
		}
		switch cmd.Cmd {
		case "stats":
			out.Line(e.Stats(), true)
		case "shutdown":
			return 0
		default:
			out.Error(fmt.Sprintf("control: unknown command %q (known: stats, shutdown)", cmd.Cmd))
		}
	}
}
