package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const pollInterval = 250 * time.Millisecond

// poll calls check until it reports done, the context ends or timeout passes;
// the last check error is returned on timeout to say what was missing.
func poll(ctx context.Context, timeout time.Duration, check func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := check(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("not ready after %s: %w", timeout, last)
			}
			return fmt.Errorf("not ready after %s", timeout)
		case <-time.After(pollInterval):
		}
	}
}

func waitHTTPOK(ctx context.Context, url string, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s: %s", url, resp.Status)
		}
		return true, nil
	})
}

func waitReadyz(ctx context.Context, cs kubernetes.Interface, timeout time.Duration) error {
	return poll(ctx, timeout, func(ctx context.Context) (bool, error) { return readyz(ctx, cs) })
}

func readyz(ctx context.Context, cs kubernetes.Interface) (bool, error) {
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return false, fmt.Errorf("/readyz: %w: %s", err, body)
	}
	return string(body) == "ok", nil
}

// waitClusterUsable waits until workloads can run: the apiserver is still
// ready, every fake node is Ready and the default ServiceAccount exists (pods
// are rejected until it does).
func waitClusterUsable(ctx context.Context, cs kubernetes.Interface, cluster string, nodes int, timeout time.Duration) error {
	return poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		if ok, err := readyz(ctx, cs); !ok {
			return false, err
		}
		for i := 1; i <= nodes; i++ {
			n, err := cs.CoreV1().Nodes().Get(ctx, nodeName(cluster, i), metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if !nodeReady(n) {
				return false, fmt.Errorf("node %s is not Ready", n.Name)
			}
		}
		if _, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, fmt.Errorf("default service account: %w", err)
		}
		return true, nil
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
