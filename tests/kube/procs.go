package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// child is one supervised component process.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // exit status, valid after done
}

// supervisor owns the component processes of one cluster.
type supervisor struct {
	dir      string
	mu       sync.Mutex
	children []*child
	stopping bool
	// died receives a child that exited while we were not stopping.
	died chan *child
}

func newSupervisor(dir string) *supervisor {
	return &supervisor{dir: dir, died: make(chan *child, 16)}
}

// start runs bin with args, logging to DIR/<name>.log.
func (s *supervisor) start(name, bin string, args []string, env []string) (*child, error) {
	logPath := filepath.Join(s.dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child keeps its own copy of the descriptor
	fmt.Fprintf(logFile, "=== %s: starting %s\n", time.Now().Format(time.RFC3339), name)

	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), env...)
	// Pdeathsig: if the supervisor is killed outright (SIGKILL, OOM), the
	// kernel kills the children too, so no orphan keeps a port. No Setpgid:
	// children stay in our process group, so a Ctrl-C or a group kill by the
	// caller reaches them as well.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return nil, fmt.Errorf("not starting %s: shutting down", name)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	s.children = append(s.children, c)
	go func() {
		c.err = cmd.Wait()
		close(c.done)
		s.mu.Lock()
		unexpected := !s.stopping
		s.mu.Unlock()
		if unexpected {
			s.died <- c
		}
	}()
	logf("started %s (pid %d), log %s", name, cmd.Process.Pid, logPath)
	return c, nil
}

// stop terminates all children: clients of the apiserver first, then the
// apiserver, then etcd, so nothing logs storms of connection errors. Each
// step gets SIGTERM and, after grace, SIGKILL.
func (s *supervisor) stop(grace time.Duration) {
	s.mu.Lock()
	s.stopping = true
	children := append([]*child(nil), s.children...)
	s.mu.Unlock()

	order := [][]string{
		{"kwok", "kube-scheduler", "kube-controller-manager"},
		{"kube-apiserver"},
		{"etcd"},
	}
	for _, names := range order {
		var step []*child
		for _, c := range children {
			for _, n := range names {
				if c.name == n {
					step = append(step, c)
				}
			}
		}
		terminate(step, grace)
	}
}

func terminate(cs []*child, grace time.Duration) {
	for _, c := range cs {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(grace)
	for _, c := range cs {
		select {
		case <-c.done:
		case <-deadline:
			for _, k := range cs {
				select {
				case <-k.done:
				default:
					logf("%s did not stop within %s; killing it", k.name, grace)
					_ = k.cmd.Process.Kill()
				}
			}
			for _, k := range cs {
				<-k.done
			}
			return
		}
	}
}

// logf writes a supervisor message to stderr; stdout carries only the ready line.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "optikon-kube cluster: "+format+"\n", args...)
}
