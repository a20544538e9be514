package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
)

const clusterUsage = `usage: optikon-kube cluster --name NAME --dir DIR --port PORT [--nodes N] [--kwok PATH]

Starts etcd, kube-apiserver (https://127.0.0.1:PORT), kube-controller-manager,
kube-scheduler and kwok (fake nodes), and supervises them until SIGTERM/SIGINT
(then exits 0; exits non-zero if a component dies). Prints one line
"ready DIR/kubeconfig" on stdout once /readyz is ok, all nodes are Ready and
the default ServiceAccount exists. Progress and errors go to stderr.

DIR holds: kubeconfig (admin, context NAME), ca.crt/ca.key, apiserver.crt/.key,
sa.key/sa.pub, tokens.csv, <component>.kubeconfig, kwok-stages.yaml, etcd/
(data) and <component>.log. Credentials and data are reused on restart.
`

// Cluster-wide settings. The service range is the usual kubeadm default; its
// first address is the in-cluster "kubernetes" service, so it is in the cert.
const (
	serviceCIDR    = "10.96.0.0/16"
	firstServiceIP = "10.96.0.1"
	stopGrace      = 5 * time.Second
	startTimeout   = 3 * time.Minute
)

type clusterOptions struct {
	name  string
	dir   string
	port  int
	nodes int
	kwok  string
}

func runCluster(args []string) int {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), clusterUsage); fs.PrintDefaults() }
	var o clusterOptions
	fs.StringVar(&o.name, "name", "", "cluster name, used for the kubeconfig context (required)")
	fs.StringVar(&o.dir, "dir", "", "directory for certs, kubeconfigs, etcd data and logs (required)")
	fs.IntVar(&o.port, "port", 0, "apiserver port on 127.0.0.1 (required)")
	fs.IntVar(&o.nodes, "nodes", 2, "number of fake kwok nodes (1-250)")
	fs.StringVar(&o.kwok, "kwok", "", "kwok binary (default: next to optikon-kube, else from PATH)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.name == "" || o.dir == "" || o.port <= 0 || o.port > 65535 || o.nodes < 1 || o.nodes > 250 || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	if err := o.resolvePaths(); err != nil {
		logf("%v", err)
		return 2
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	sup := newSupervisor(o.dir)
	err := runSupervised(ctx, sup, o)
	sup.stop(stopGrace)
	if err != nil {
		logf("%v", err)
		return 1
	}
	logf("stopped")
	return 0
}

// resolvePaths makes dir absolute (it is printed for callers) and finds kwok.
func (o *clusterOptions) resolvePaths() error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	o.dir = dir
	if o.kwok == "" {
		self, err := os.Executable()
		if err == nil {
			if p := filepath.Join(filepath.Dir(self), "kwok"); isExecutable(p) {
				o.kwok = p
			}
		}
	}
	if o.kwok == "" {
		p, err := exec.LookPath("kwok")
		if err != nil {
			return fmt.Errorf("kwok not found next to optikon-kube nor in PATH; pass --kwok")
		}
		o.kwok = p
	}
	return nil
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// runSupervised starts the components in dependency order, announces
// readiness, then waits for a signal (nil error) or a component death.
func runSupervised(ctx context.Context, sup *supervisor, o clusterOptions) error {
	start := time.Now()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := checkPortFree(o.port); err != nil {
		return err
	}
	// A stale kubeconfig from an earlier run must not look like readiness.
	_ = os.Remove(filepath.Join(o.dir, "kubeconfig"))

	toks, err := ensureCredentials(o.dir, net.ParseIP(firstServiceIP))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(o.dir, caCertFile))
	if err != nil {
		return err
	}
	ep := endpoint{cluster: o.name, server: fmt.Sprintf("https://127.0.0.1:%d", o.port), caPEM: caPEM}
	for _, k := range []struct{ file, user, token string }{
		{"kube-controller-manager.kubeconfig", "system:kube-controller-manager", toks.controllerManager},
		{"kube-scheduler.kubeconfig", "system:kube-scheduler", toks.scheduler},
		{"kwok.kubeconfig", "kwok", toks.kwok},
	} {
		if err := writeKubeconfig(filepath.Join(o.dir, k.file), ep, k.user, k.token); err != nil {
			return err
		}
	}

	// Abort any wait below as soon as a component dies or a signal arrives.
	sigCtx := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case c := <-sup.died:
			// A signal sent to the whole process group (Ctrl-C, kill -- -PGID)
			// reaches the children too, and one may exit before we see ours:
			// give it a moment so a normal stop is not reported as a crash.
			select {
			case <-sigCtx.Done():
			case <-time.After(time.Second):
				cancel(fmt.Errorf("%s exited unexpectedly (%v); see %s", c.name, c.err, filepath.Join(o.dir, c.name+".log")))
			}
		case <-ctx.Done():
		}
	}()

	// etcd
	etcdClient, etcdPeer, err := freePorts2()
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	if _, err := sup.start("etcd", self, etcdArgs(o.dir, etcdURL, etcdPeer), nil); err != nil {
		return err
	}
	if err := waitHTTPOK(ctx, etcdURL+"/health", startTimeout); err != nil {
		return cause(ctx, fmt.Errorf("etcd: %w", err))
	}

	// kube-apiserver
	if _, err := sup.start("kube-apiserver", self, apiserverArgs(o, etcdURL), nil); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(restConfig(ep, toks.admin))
	if err != nil {
		return err
	}
	if err := waitReadyz(ctx, cs, startTimeout); err != nil {
		return cause(ctx, fmt.Errorf("kube-apiserver: %w", err))
	}

	// Controllers, scheduler and kwok only need a serving apiserver.
	if _, err := sup.start("kube-controller-manager", self, controllerManagerArgs(o), nil); err != nil {
		return err
	}
	if _, err := sup.start("kube-scheduler", self, schedulerArgs(o), nil); err != nil {
		return err
	}
	kargs, err := kwokArgs(o.dir)
	if err != nil {
		return err
	}
	// HOME=dir: kwok also reads ~/.kwok/kwok.yaml if present; keep the
	// user's own kwok setup out of our cluster.
	if _, err := sup.start("kwok", o.kwok, kargs, []string{"HOME=" + o.dir}); err != nil {
		return err
	}
	if err := createNodes(ctx, cs, o.name, o.nodes); err != nil {
		return cause(ctx, err)
	}
	if err := waitClusterUsable(ctx, cs, o.name, o.nodes, startTimeout); err != nil {
		return cause(ctx, err)
	}

	if err := writeKubeconfig(filepath.Join(o.dir, "kubeconfig"), ep, "admin", toks.admin); err != nil {
		return err
	}
	logf("%s ready in %s", o.name, time.Since(start).Round(100*time.Millisecond))
	fmt.Printf("ready %s\n", filepath.Join(o.dir, "kubeconfig"))

	<-ctx.Done()
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err // a component died
	}
	return nil // signal
}

// cause prefers the reason the context was cancelled (a component died)
// over the error a wait reported because of it.
func cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	if ctx.Err() != nil {
		return nil // SIGTERM/SIGINT while starting: a normal stop
	}
	return err
}

func checkPortFree(port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("port %d on 127.0.0.1 is not free: %w", port, err)
	}
	return l.Close()
}

// freePorts2 asks the kernel for two unused loopback ports (etcd client and
// peer), holding both open at once so they differ.
func freePorts2() (int, int, error) {
	a, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer a.Close()
	b, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer b.Close()
	return a.Addr().(*net.TCPAddr).Port, b.Addr().(*net.TCPAddr).Port, nil
}
