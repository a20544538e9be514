package main

import (
	"fmt"
	"os"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// endpoint is how a client reaches the cluster's apiserver.
type endpoint struct {
	cluster string // context and cluster name in kubeconfigs
	server  string // https://127.0.0.1:PORT
	caPEM   []byte // our CA, embedded so no file path leaks into kubeconfigs
}

// writeKubeconfig writes a single-context kubeconfig for a token user. It
// writes a temp file and renames it, so a reader never sees half a file.
func writeKubeconfig(path string, ep endpoint, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[ep.cluster] = &clientcmdapi.Cluster{Server: ep.server, CertificateAuthorityData: ep.caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[ep.cluster] = &clientcmdapi.Context{Cluster: ep.cluster, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = ep.cluster
	if err := clientcmd.WriteToFile(*cfg, path+".tmp"); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(path+".tmp", path)
}

// restConfig is the supervisor's own admin client config.
func restConfig(ep endpoint, token string) *rest.Config {
	return &rest.Config{
		Host:            ep.server,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: ep.caPEM},
		QPS:             50,
		Burst:           100,
	}
}
