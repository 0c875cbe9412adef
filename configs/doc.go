// Package configs holds the files operators copy to run airlock: the
// annotated configuration, containerd, dockerd and podman client settings,
// Kubernetes manifests, a Grafana dashboard and Prometheus alert rules.
//
// It has no Go API. Its tests parse every file strictly with the parser of
// the program that will read it, and check the files against each other and
// against airlock: client mirrors name upstreams the shipped configuration
// routes, manifests mount every file that configuration reads, and every
// PromQL expression names only metrics and labels that exist. A file that
// would be rejected or silently misread on a cluster fails here first.
package configs
