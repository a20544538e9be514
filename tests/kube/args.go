package main

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Command lines of the components. The aim is a real but lean control plane:
// several clusters share a 2-core, 24 GiB machine, so anything Optikon's
// tests do not exercise (profiling, cloud, storage, certificates, autoscaling)
// is switched off.

func etcdArgs(dir, clientURL string, peerPort int) []string {
	return []string{
		"etcd",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-url=" + clientURL,
		fmt.Sprintf("--listen-peer-url=http://127.0.0.1:%d", peerPort),
	}
}

func apiserverArgs(o clusterOptions, etcdURL string) []string {
	d := func(f string) string { return filepath.Join(o.dir, f) }
	return []string{
		"kube-apiserver",
		"--etcd-servers=" + etcdURL,
		fmt.Sprintf("--secure-port=%d", o.port),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--tls-cert-file=" + d(servingCertFile),
		"--tls-private-key-file=" + d(servingKeyFile),
		// Unused with explicit serving certs, but keeps the default
		// (/var/run/kubernetes) from being touched.
		"--cert-dir=" + d("apiserver-certs"),
		"--token-auth-file=" + d(tokenFile),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + d(saPubFile),
		"--service-account-signing-key-file=" + d(saKeyFile),
		"--service-cluster-ip-range=" + serviceCIDR,
		"--allow-privileged=true",
		"--profiling=false",
		// APF's per-level queues and its config controllers cost memory and
		// CPU; a test cluster has no noisy neighbours to protect against.
		"--enable-priority-and-fairness=false",
		// The apiserver would publish 127.0.0.1 as the endpoint of the
		// in-cluster "kubernetes" service, which Endpoints validation rejects
		// (loopback); fake pods never call it anyway.
		"--endpoint-reconciler-type=none",
		// Admission plugins for features no test uses (they each hold
		// informers); the ones that shape workloads stay on.
		"--disable-admission-plugins=" + strings.Join([]string{
			"StorageObjectInUseProtection",
			"PersistentVolumeClaimResize",
			"DefaultStorageClass",
			"CertificateApproval",
			"CertificateSigning",
			"CertificateSubjectRestriction",
			"ClusterTrustBundleAttest",
		}, ","),
		"--event-ttl=30m",
	}
}

// controllers run by kube-controller-manager: the workload chain
// (Deployment → ReplicaSet → Pod, StatefulSet, DaemonSet, Job, CronJob),
// namespace deletion, garbage collection, service accounts and their tokens,
// endpoints for Services, and node health (taints/eviction).
var controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"replicationcontroller-controller",
	"statefulset-controller",
	"daemonset-controller",
	"job-controller",
	"cronjob-controller",
	"ttl-after-finished-controller",
	"disruption-controller",
	"namespace-controller",
	"garbage-collector-controller",
	"pod-garbage-collector-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
	"clusterrole-aggregation-controller",
	"endpoints-controller",
	"endpointslice-controller",
	"service-cidr-controller",
	"node-lifecycle-controller",
	"taint-eviction-controller",
}

func controllerManagerArgs(o clusterOptions) []string {
	d := func(f string) string { return filepath.Join(o.dir, f) }
	return []string{
		"kube-controller-manager",
		"--kubeconfig=" + d("kube-controller-manager.kubeconfig"),
		"--leader-elect=false",
		// No health/metrics endpoint: it would need a port per cluster and
		// delegated auth round-trips; the supervisor watches the process.
		"--secure-port=0",
		"--profiling=false",
		"--cluster-name=" + o.name,
		"--controllers=" + strings.Join(controllers, ","),
		// Each controller acts under its own service account, as in kubeadm
		// clusters, so RBAC bootstrap roles cover it.
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + d(saKeyFile),
		"--root-ca-file=" + d(caCertFile),
		"--service-cluster-ip-range=" + serviceCIDR,
	}
}

func schedulerArgs(o clusterOptions) []string {
	return []string{
		"kube-scheduler",
		"--kubeconfig=" + filepath.Join(o.dir, "kube-scheduler.kubeconfig"),
		"--leader-elect=false",
		"--secure-port=0",
	}
}
