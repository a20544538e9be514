// Command optikon-kube is a multi-call binary holding a whole Kubernetes
// control plane for Optikon's integration tests: the first argument picks the
// component, so the large Kubernetes dependency tree is linked only once.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: optikon-kube COMMAND [ARGS...]

commands:
  cluster                  start and supervise one loopback cluster (see: cluster --help)
  etcd                     embedded etcd server
  kube-apiserver           upstream kube-apiserver
  kube-controller-manager  upstream kube-controller-manager
  kube-scheduler           upstream kube-scheduler
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var code int
	switch cmd {
	case "cluster":
		code = runCluster(args)
	case "etcd":
		code = runEtcd(args)
	case "kube-apiserver", "kube-controller-manager", "kube-scheduler":
		code = runKubeComponent(cmd, args)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "optikon-kube: unknown command %q\n\n%s", cmd, usage)
		code = 2
	}
	os.Exit(code)
}
