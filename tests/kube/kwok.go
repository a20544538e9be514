package main

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/component-base/version"
)

// kwokStages tells kwok how fake nodes and pods progress (see stages.yaml).
//
//go:embed stages.yaml
var kwokStages []byte

// kwokNodeAnnotation marks the nodes kwok manages; it is given only to the
// nodes we create, so kwok leaves anything else alone.
const (
	kwokNodeAnnotationKey   = "kwok.x-k8s.io/node"
	kwokNodeAnnotationValue = "fake"
)

// kwokArgs writes kwok's config and returns its command line.
func kwokArgs(dir string) ([]string, error) {
	stages := filepath.Join(dir, "kwok-stages.yaml")
	if err := os.WriteFile(stages, kwokStages, 0o644); err != nil {
		return nil, err
	}
	return []string{
		"--kubeconfig=" + filepath.Join(dir, "kwok.kubeconfig"),
		"--config=" + stages,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotationKey + "=" + kwokNodeAnnotationValue,
		// Leases are the cheap heartbeat the node lifecycle controller watches,
		// so nodes stay Ready without frequent status writes.
		"--node-lease-duration-seconds=40",
		// Fallbacks only: our nodes carry their own pod CIDR and address.
		"--cidr=10.244.0.0/16",
		"--node-ip=10.240.0.1",
	}, nil
}

// nodeName is the name of fake node i (1-based).
func nodeName(cluster string, i int) string {
	return fmt.Sprintf("%s-node-%d", cluster, i)
}

// createNodes registers n fake nodes (skipping ones left from an earlier run
// in the same dir). Capacity is generous so tests never hit scheduling limits.
func createNodes(ctx context.Context, cs kubernetes.Interface, cluster string, n int) error {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	for i := 1; i <= n; i++ {
		name := nodeName(cluster, i)
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Annotations: map[string]string{kwokNodeAnnotationKey: kwokNodeAnnotationValue},
				Labels: map[string]string{
					"type":                   "kwok",
					"kubernetes.io/hostname": name,
					"kubernetes.io/os":       "linux",
					"kubernetes.io/arch":     "amd64",
				},
			},
			// Node status may be set on create (kubelets register this way);
			// kwok's node-initialize stage copies capacity into Ready status.
			// Per-node pod CIDR and address, so pod and host IPs differ
			// between nodes as they would in a real cluster.
			Spec: corev1.NodeSpec{
				PodCIDR:  fmt.Sprintf("10.244.%d.0/24", i),
				PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i)},
			},
			Status: corev1.NodeStatus{
				Capacity:    capacity,
				Allocatable: capacity,
				Phase:       corev1.NodePending,
				// Report the control plane's version as the kubelet's, as a
				// real node of this cluster would (kwok keeps what is set).
				NodeInfo: corev1.NodeSystemInfo{KubeletVersion: version.Get().GitVersion},
				Addresses: []corev1.NodeAddress{
					{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("10.240.%d.%d", i/250, i%250+1)},
					{Type: corev1.NodeHostName, Address: name},
				},
			},
		}
		_, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node %s: %w", name, err)
		}
	}
	return nil
}
