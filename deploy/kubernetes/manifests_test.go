// Package kubernetes_test checks the manifests of this directory: three
// airlock replicas sharing PostgreSQL and S3. Each file is decoded
// strictly into its API type, as the API server would read it, and the
// files are checked against each other and against airlock's own
// validation of the configuration they carry.
package kubernetes_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/airlock-registry/airlock/config"
)

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
}

// manifests holds every object of the directory by kind.
type manifests struct {
	deployment    appsv1.Deployment
	configMap     corev1.ConfigMap
	services      map[string]corev1.Service
	secrets       map[string]corev1.Secret
	pdb           policyv1.PodDisruptionBudget
	networkPolicy networkingv1.NetworkPolicy
	kinds         map[string]int
}

func read(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func decode(t *testing.T, name string, data []byte, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func load(t *testing.T) *manifests {
	t.Helper()
	var k kustomization
	decode(t, "kustomization.yaml", read(t, "kustomization.yaml"), &k)
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return f == "kustomization.yaml" })
	if !slices.Equal(slices.Sorted(slices.Values(k.Resources)), files) {
		t.Errorf("kustomization.yaml lists %v, the directory holds %v", k.Resources, files)
	}
	m := &manifests{services: map[string]corev1.Service{}, secrets: map[string]corev1.Secret{}, kinds: map[string]int{}}
	for _, file := range files {
		data := read(t, file)
		if bytes.Contains(data, []byte("\n---")) {
			t.Errorf("%s: one object per file, so each is named in kustomization.yaml", file)
		}
		var obj struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(data, &obj); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		kind := obj.APIVersion + " " + obj.Kind
		m.kinds[kind]++
		if obj.Kind != "Namespace" && obj.Metadata.Namespace != k.Namespace {
			t.Errorf("%s: namespace %q, want %q", file, obj.Metadata.Namespace, k.Namespace)
		}
		switch kind {
		case "v1 Namespace":
			decode(t, file, data, &corev1.Namespace{})
		case "v1 ServiceAccount":
			decode(t, file, data, &corev1.ServiceAccount{})
		case "v1 ConfigMap":
			decode(t, file, data, &m.configMap)
		case "v1 Secret":
			var s corev1.Secret
			decode(t, file, data, &s)
			m.secrets[s.Name] = s
		case "v1 Service":
			var s corev1.Service
			decode(t, file, data, &s)
			m.services[s.Name] = s
		case "apps/v1 Deployment":
			decode(t, file, data, &m.deployment)
		case "policy/v1 PodDisruptionBudget":
			decode(t, file, data, &m.pdb)
		case "networking.k8s.io/v1 NetworkPolicy":
			decode(t, file, data, &m.networkPolicy)
		default:
			t.Errorf("%s: %s is not checked by this test", file, kind)
		}
	}
	return m
}

// shippedConfig is the ConfigMap's airlock.yaml as airlock validates it.
func shippedConfig(t *testing.T, m *manifests) *config.Config {
	t.Helper()
	data, ok := m.configMap.Data["airlock.yaml"]
	if !ok {
		t.Fatal("configmap.yaml: no airlock.yaml key")
	}
	cfg, err := config.Parse("configmap.yaml:airlock.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestManifests(t *testing.T) {
	m := load(t)
	for kind, n := range map[string]int{"apps/v1 Deployment": 1, "v1 Service": 3, "policy/v1 PodDisruptionBudget": 1,
		"v1 Secret": 3, "v1 ConfigMap": 1, "networking.k8s.io/v1 NetworkPolicy": 1} {
		if m.kinds[kind] != n {
			t.Errorf("%d %s manifests, want %d", m.kinds[kind], kind, n)
		}
	}
	cfg := shippedConfig(t, m)
	d := m.deployment
	pod := d.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("deployment: %d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	podLabels := labels.Set(pod.Labels)

	t.Run("three replicas, one per node", func(t *testing.T) {
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
			t.Errorf("replicas unset or not 3 (%v), want 3", ptrValue(d.Spec.Replicas))
		}
		a := pod.Spec.Affinity
		if a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
			t.Fatal("no required pod anti-affinity")
		}
		term := a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0]
		if term.TopologyKey != "kubernetes.io/hostname" || !selects(t, term.LabelSelector, podLabels) {
			t.Errorf("anti-affinity %+v does not keep airlock's pods on different nodes", term)
		}
		// One per node: a surge pod would have nowhere to go on three.
		if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 {
			t.Errorf("rolling update %+v: want maxSurge 0 under required anti-affinity", ru)
		}
	})
	t.Run("disruption budget", func(t *testing.T) {
		if !selects(t, m.pdb.Spec.Selector, podLabels) {
			t.Error("PodDisruptionBudget does not select airlock's pods")
		}
		if mu := m.pdb.Spec.MaxUnavailable; mu == nil || mu.IntValue() != 1 {
			t.Errorf("PodDisruptionBudget maxUnavailable %v, want 1 of 3", mu)
		}
	})
	t.Run("probes", func(t *testing.T) {
		for _, p := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path {
				t.Errorf("%s probe: want an HTTP GET of %s", p.name, p.path)
				continue
			}
			if port := containerPort(t, c, p.probe.HTTPGet.Port.String()); port != listenPort(t, cfg.Listen) {
				t.Errorf("%s probe on port %d, the registry listens on %s", p.name, port, cfg.Listen)
			}
		}
	})
	t.Run("grace period outlasts the drain", func(t *testing.T) {
		g := pod.Spec.TerminationGracePeriodSeconds
		drain := time.Duration(cfg.Shutdown.ReadyDelay + cfg.Shutdown.DrainTimeout)
		if g == nil || time.Duration(*g)*time.Second < drain+5*time.Second {
			t.Errorf("terminationGracePeriodSeconds must exceed shutdown.readyDelay + drainTimeout %v by at least 5s", drain)
		}
	})
	t.Run("services", func(t *testing.T) {
		want := map[string]struct {
			port     int32
			headless bool
		}{"airlock": {listenPort(t, cfg.Listen), false}, "airlock-peers": {listenPort(t, cfg.Cluster.Listen), true},
			"airlock-admin": {listenPort(t, cfg.Admin.Listen), false}}
		for name, w := range want {
			s, ok := m.services[name]
			if !ok {
				t.Errorf("no Service %s", name)
				continue
			}
			if !selects(t, &metav1.LabelSelector{MatchLabels: s.Spec.Selector}, podLabels) {
				t.Errorf("Service %s does not select airlock's pods", name)
			}
			if len(s.Spec.Ports) != 1 || containerPort(t, c, s.Spec.Ports[0].TargetPort.String()) != w.port {
				t.Errorf("Service %s ports %+v, want one to port %d", name, s.Spec.Ports, w.port)
			}
			if headless := s.Spec.ClusterIP == corev1.ClusterIPNone; headless != w.headless {
				t.Errorf("Service %s headless = %v, want %v", name, headless, w.headless)
			}
		}
		if !m.services["airlock-peers"].Spec.PublishNotReadyAddresses {
			t.Error("airlock-peers hides draining pods, whose fills their peers are still reading")
		}
	})
	t.Run("clustered configuration", func(t *testing.T) {
		if !cfg.Metadata.Postgres() || !cfg.Cluster.Enabled() || cfg.Storage.Driver != config.DriverS3 {
			t.Fatalf("metadata %+v, cluster %+v, storage %s: want postgres, a cluster and s3", cfg.Metadata, cfg.Cluster, cfg.Storage.Driver)
		}
		if cfg.Metadata.DSNFile == "" || cfg.Metadata.DSN != "" {
			t.Error("the connection string must come from a mounted Secret (metadata.dsnFile), not the ConfigMap")
		}
		if err := mountedFrom(c, pod.Spec.Volumes, m.secrets, cfg.Metadata.DSNFile); err != "" {
			t.Errorf("metadata.dsnFile %s: %s", cfg.Metadata.DSNFile, err)
		}
		if err := mountedFrom(c, pod.Spec.Volumes, m.secrets, cfg.Admin.TokenFile); err != "" {
			t.Errorf("admin.tokenFile %s: %s", cfg.Admin.TokenFile, err)
		}
		if !mountedDir(c, cfg.Storage.Path) {
			t.Errorf("storage.path %s (the spool) is not on a volume; the root filesystem is read-only", cfg.Storage.Path)
		}
		for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
			ref := envVar(c, v)
			if ref == nil || ref.ValueFrom == nil || ref.ValueFrom.SecretKeyRef == nil {
				t.Errorf("%s is not taken from a Secret", v)
				continue
			}
			if _, ok := m.secrets[ref.ValueFrom.SecretKeyRef.Name].StringData[ref.ValueFrom.SecretKeyRef.Key]; !ok {
				t.Errorf("%s names %s/%s, which no Secret here holds", v, ref.ValueFrom.SecretKeyRef.Name, ref.ValueFrom.SecretKeyRef.Key)
			}
		}
	})
	t.Run("advertise from the pod IP", func(t *testing.T) {
		if cfg.Cluster.Advertise != "" {
			t.Fatalf("cluster.advertise %q is fixed in a file every replica reads", cfg.Cluster.Advertise)
		}
		ip := envVar(c, "POD_IP")
		if ip == nil || ip.ValueFrom == nil || ip.ValueFrom.FieldRef == nil || ip.ValueFrom.FieldRef.FieldPath != "status.podIP" {
			t.Fatal("POD_IP is not the pod's IP")
		}
		adv := envVar(c, config.AdvertiseEnv)
		want := fmt.Sprintf("http://$(POD_IP):%d", listenPort(t, cfg.Cluster.Listen))
		if adv == nil || adv.Value != want {
			t.Fatalf("%s = %+v, want %q", config.AdvertiseEnv, adv, want)
		}
		if slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "POD_IP" }) >
			slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == config.AdvertiseEnv }) {
			t.Error("POD_IP must come before the variable that refers to it, or Kubernetes leaves $(POD_IP) unexpanded")
		}
		// What airlock reads once Kubernetes has expanded it.
		t.Setenv(config.AdvertiseEnv, strings.Replace(adv.Value, "$(POD_IP)", "10.244.1.17", 1))
		got, err := cfg.Cluster.AdvertiseURL()
		if err != nil || got != "http://10.244.1.17:5002" {
			t.Errorf("AdvertiseURL() = %q, %v", got, err)
		}
	})
}

func selects(t *testing.T, sel *metav1.LabelSelector, set labels.Set) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return !s.Empty() && s.Matches(set)
}

// containerPort resolves a named or numbered port of c.
func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name || fmt.Sprint(p.ContainerPort) == name {
			return p.ContainerPort
		}
	}
	t.Errorf("container has no port %q", name)
	return 0
}

func listenPort(t *testing.T, addr string) int32 {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	fmt.Sscan(port, &n)
	return n
}

func envVar(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// mountedFrom says what is wrong unless file is a key of a Secret mounted
// as a whole directory (so that a rotated value reaches the file).
func mountedFrom(c corev1.Container, vols []corev1.Volume, secrets map[string]corev1.Secret, file string) string {
	for _, vm := range c.VolumeMounts {
		key, ok := strings.CutPrefix(file, vm.MountPath+"/")
		if !ok {
			continue
		}
		if vm.SubPath != "" {
			return "mounted with subPath, which a rotated Secret never updates"
		}
		for _, v := range vols {
			if v.Name != vm.Name || v.Secret == nil {
				continue
			}
			s, ok := secrets[v.Secret.SecretName]
			if !ok {
				return "its volume names Secret " + v.Secret.SecretName + ", which is not among the manifests"
			}
			if _, ok := s.StringData[key]; !ok {
				return "Secret " + s.Name + " has no key " + key
			}
			return ""
		}
		return "its volume " + vm.Name + " is not a Secret"
	}
	return "no volume is mounted there"
}

func mountedDir(c corev1.Container, dir string) bool {
	for _, vm := range c.VolumeMounts {
		if vm.MountPath == dir && !vm.ReadOnly {
			return true
		}
	}
	return false
}

func ptrValue(p *int32) any {
	if p == nil {
		return nil
	}
	return *p
}
