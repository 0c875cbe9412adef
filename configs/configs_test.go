package configs_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/airlock-registry/airlock/config"
)

// mirror is the airlock address every client file points at.
const mirror = "airlock:5000"

// read returns a file of this directory, failing the test if it is absent.
func read(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.FromSlash(name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// decodeJSON decodes strictly: an unknown field is an error, as it is for
// dockerd and Grafana's provisioning.
func decodeJSON(t *testing.T, name string, data []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func decodeTOML(t *testing.T, name string, v any) {
	t.Helper()
	dec := toml.NewDecoder(bytes.NewReader(read(t, name)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// decodeYAML decodes a YAML document strictly through its JSON form, the
// way the API server and kubectl read manifests.
func decodeYAML(t *testing.T, name string, data []byte, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// shippedConfig is the airlock.yaml inside the Kubernetes ConfigMap,
// loaded as airlock loads it.
func shippedConfig(t *testing.T) *config.Config {
	t.Helper()
	var cm corev1.ConfigMap
	decodeYAML(t, "kubernetes/configmap.yaml", read(t, "kubernetes/configmap.yaml"), &cm)
	data, ok := cm.Data["airlock.yaml"]
	if !ok {
		t.Fatal("kubernetes/configmap.yaml: no airlock.yaml key")
	}
	cfg, err := config.Parse("kubernetes/configmap.yaml:airlock.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// hostsFile is containerd's hosts.toml, with every field containerd
// reads, so that a misspelt one is an error.
type hostsFile struct {
	Server       string               `toml:"server"`
	Capabilities []string             `toml:"capabilities"`
	CA           any                  `toml:"ca"`
	Client       any                  `toml:"client"`
	SkipVerify   *bool                `toml:"skip_verify"`
	OverridePath *bool                `toml:"override_path"`
	Header       map[string]any       `toml:"header"`
	DialTimeout  string               `toml:"dial_timeout"`
	Host         map[string]hostEntry `toml:"host"`
}

type hostEntry struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	OverridePath *bool          `toml:"override_path"`
	Header       map[string]any `toml:"header"`
	DialTimeout  string         `toml:"dial_timeout"`
}

func TestContainerdHosts(t *testing.T) {
	t.Parallel()
	cfg := shippedConfig(t)
	tests := []struct {
		registry, server, upstream string
	}{
		{"docker.io", "https://registry-1.docker.io", "dockerhub"},
		{"gcr.io", "https://gcr.io", "gcr"},
		{"quay.io", "https://quay.io", "quay"},
		{"registry.hcl.example", "https://registry.hcl.example", "vendor"},
	}
	dirs, err := filepath.Glob("containerd/certs.d/*")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != len(tests) {
		t.Errorf("containerd/certs.d has %d registries, the test knows %d: test every file", len(dirs), len(tests))
	}
	for _, tt := range tests {
		name := "containerd/certs.d/" + tt.registry + "/hosts.toml"
		var h hostsFile
		decodeTOML(t, name, &h)
		if h.Server != tt.server {
			t.Errorf("%s: server = %q, want %q", name, h.Server, tt.server)
		}
		if len(h.Host) != 1 {
			t.Errorf("%s: %d hosts, want only airlock", name, len(h.Host))
		}
		e, ok := h.Host["http://"+mirror]
		if !ok {
			t.Errorf("%s: no [host.\"http://%s\"]", name, mirror)
		} else if !slices.Equal(e.Capabilities, []string{"pull", "resolve"}) {
			t.Errorf("%s: capabilities %v, want [pull resolve] (airlock serves no pushes)", name, e.Capabilities)
		}
		// containerd names the registry in ?ns=; the shipped config must
		// route it to the upstream the file's comment promises.
		if u := cfg.UpstreamForHost(tt.registry); u == nil || u.Name != tt.upstream {
			t.Errorf("%s: the shipped config routes ?ns=%s to %v, want upstream %q", name, tt.registry, u, tt.upstream)
		}
	}
}

func TestDockerDaemon(t *testing.T) {
	t.Parallel()
	var d struct {
		RegistryMirrors    []string `json:"registry-mirrors"`
		InsecureRegistries []string `json:"insecure-registries"`
	}
	decodeJSON(t, "docker/daemon.json", read(t, "docker/daemon.json"), &d)
	if !slices.Equal(d.RegistryMirrors, []string{"http://" + mirror}) {
		t.Errorf("registry-mirrors = %v, want [http://%s]", d.RegistryMirrors, mirror)
	}
	if !slices.Contains(d.InsecureRegistries, mirror) {
		t.Errorf("insecure-registries = %v, want %s for docker pull %s/<upstream>/...", d.InsecureRegistries, mirror, mirror)
	}
	// dockerd sends mirror pulls un-prefixed: only the default upstream
	// can answer them, and it must be Docker Hub.
	if u := shippedConfig(t).DefaultUpstream(); u == nil || !u.ServesHost("docker.io") {
		t.Errorf("the shipped config's default upstream %v does not serve docker.io", u)
	}
}

// registriesConf is containers-registries.conf(5), version 2.
type registriesConf struct {
	UnqualifiedSearchRegistries []string          `toml:"unqualified-search-registries"`
	ShortNameMode               string            `toml:"short-name-mode"`
	CredentialHelpers           []string          `toml:"credential-helpers"`
	Aliases                     map[string]string `toml:"aliases"`
	Registry                    []struct {
		Prefix             string `toml:"prefix"`
		Location           string `toml:"location"`
		Insecure           bool   `toml:"insecure"`
		Blocked            bool   `toml:"blocked"`
		MirrorByDigestOnly bool   `toml:"mirror-by-digest-only"`
		Mirror             []struct {
			Location       string `toml:"location"`
			Insecure       bool   `toml:"insecure"`
			PullFromMirror string `toml:"pull-from-mirror"`
		} `toml:"mirror"`
	} `toml:"registry"`
}

func TestRegistriesConf(t *testing.T) {
	t.Parallel()
	cfg := shippedConfig(t)
	var rc registriesConf
	decodeTOML(t, "containers/registries.conf", &rc)
	if !slices.Contains([]string{"", "disabled", "permissive", "enforcing"}, rc.ShortNameMode) {
		t.Errorf("short-name-mode %q is not one podman accepts", rc.ShortNameMode)
	}
	want := map[string]string{"docker.io": "dockerhub", "gcr.io": "gcr", "quay.io": "quay", "registry.hcl.example": "vendor"}
	for _, r := range rc.Registry {
		upstream, ok := want[r.Prefix]
		if !ok {
			t.Errorf("registry %q is not expected", r.Prefix)
			continue
		}
		delete(want, r.Prefix)
		if len(r.Mirror) != 1 || r.Mirror[0].Location != mirror+"/"+upstream || !r.Mirror[0].Insecure {
			t.Errorf("registry %q: mirrors %+v, want one insecure mirror %s/%s", r.Prefix, r.Mirror, mirror, upstream)
		}
		u := cfg.Upstream(upstream)
		if u == nil || !u.ServesHost(r.Prefix) {
			t.Errorf("registry %q: the shipped config has no upstream %q serving that host", r.Prefix, upstream)
		}
	}
	for prefix := range want {
		t.Errorf("no [[registry]] for %s", prefix)
	}
}

// kustomization is the part of kustomize's file used here.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// used here; decoding it strictly catches misspelt fields without
// importing the operator's API module.
type serviceMonitor struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// ruleFile is a Prometheus rule file.
type ruleFile struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Record      string            `json:"record,omitempty"`
	Alert       string            `json:"alert,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type prometheusRule struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            ruleFile          `json:"spec"`
}

// manifests decodes every file of kubernetes/ into its API type, by kind.
type manifests struct {
	deployment     appsv1.Deployment
	configMap      corev1.ConfigMap
	services       map[string]corev1.Service
	secrets        map[string]corev1.Secret
	hpa            autoscalingv2.HorizontalPodAutoscaler
	pdb            policyv1.PodDisruptionBudget
	networkPolicy  networkingv1.NetworkPolicy
	serviceMonitor serviceMonitor
	prometheusRule prometheusRule
	kinds          map[string]int
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	var k kustomization
	decodeYAML(t, "kubernetes/kustomization.yaml", read(t, "kubernetes/kustomization.yaml"), &k)
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" {
			listed = append(listed, base)
		}
	}
	if !slices.Equal(slices.Sorted(slices.Values(k.Resources)), listed) {
		t.Errorf("kustomization.yaml lists %v, the directory holds %v", k.Resources, listed)
	}
	m := &manifests{services: map[string]corev1.Service{}, secrets: map[string]corev1.Secret{}, kinds: map[string]int{}}
	for _, name := range listed {
		file := "kubernetes/" + name
		data := read(t, file)
		if bytes.Contains(data, []byte("\n---")) {
			t.Errorf("%s: one object per file, so each is named in kustomization.yaml", file)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(data, &tm); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		m.kinds[tm.APIVersion+" "+tm.Kind]++
		var meta struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(data, &meta); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if tm.Kind != "Namespace" && meta.Metadata.Namespace != k.Namespace {
			t.Errorf("%s: namespace %q, want %q", file, meta.Metadata.Namespace, k.Namespace)
		}
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 Namespace":
			decodeYAML(t, file, data, &corev1.Namespace{})
		case "v1 ServiceAccount":
			decodeYAML(t, file, data, &corev1.ServiceAccount{})
		case "v1 ConfigMap":
			decodeYAML(t, file, data, &m.configMap)
		case "v1 Secret":
			var s corev1.Secret
			decodeYAML(t, file, data, &s)
			m.secrets[s.Name] = s
		case "v1 Service":
			var s corev1.Service
			decodeYAML(t, file, data, &s)
			m.services[s.Name] = s
		case "apps/v1 Deployment":
			decodeYAML(t, file, data, &m.deployment)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			decodeYAML(t, file, data, &m.hpa)
		case "policy/v1 PodDisruptionBudget":
			decodeYAML(t, file, data, &m.pdb)
		case "networking.k8s.io/v1 NetworkPolicy":
			decodeYAML(t, file, data, &m.networkPolicy)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			decodeYAML(t, file, data, &m.serviceMonitor)
		case "monitoring.coreos.com/v1 PrometheusRule":
			decodeYAML(t, file, data, &m.prometheusRule)
		default:
			t.Errorf("%s: %s %s is not checked by this test", file, tm.APIVersion, tm.Kind)
		}
	}
	return m
}

func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	for _, kind := range []string{"apps/v1 Deployment", "v1 Service", "autoscaling/v2 HorizontalPodAutoscaler",
		"policy/v1 PodDisruptionBudget", "v1 Secret", "v1 ConfigMap", "monitoring.coreos.com/v1 ServiceMonitor",
		"networking.k8s.io/v1 NetworkPolicy"} {
		if m.kinds[kind] == 0 {
			t.Errorf("no %s manifest", kind)
		}
	}
	cfg := shippedConfig(t)
	d := m.deployment
	pod := d.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("deployment: %d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	t.Run("resources", func(t *testing.T) {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[r]; !ok {
				t.Errorf("no %s request", r)
			}
			if _, ok := c.Resources.Limits[r]; !ok {
				t.Errorf("no %s limit", r)
			}
		}
	})
	t.Run("probes", func(t *testing.T) {
		for _, p := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s probe: want an HTTP GET of %s", p.name, p.path)
				continue
			}
			if p.probe.HTTPGet.Path != p.path {
				t.Errorf("%s probe path %q, want %q", p.name, p.probe.HTTPGet.Path, p.path)
			}
			checkPort(t, c, p.probe.HTTPGet.Port.String(), cfg)
		}
	})
	t.Run("grace period outlasts the drain", func(t *testing.T) {
		g := pod.Spec.TerminationGracePeriodSeconds
		drain := time.Duration(cfg.Shutdown.ReadyDelay + cfg.Shutdown.DrainTimeout)
		if g == nil || time.Duration(*g)*time.Second < drain+5*time.Second {
			t.Errorf("terminationGracePeriodSeconds must exceed shutdown.readyDelay + drainTimeout %v by at least 5s", drain)
		}
	})
	t.Run("listeners", func(t *testing.T) {
		checkPort(t, c, "registry", cfg)
		checkPort(t, c, "admin", cfg)
		if !strings.HasPrefix(cfg.Admin.Listen, "0.0.0.0:") && !strings.HasPrefix(cfg.Admin.Listen, ":") {
			t.Errorf("admin.listen %q is not reachable from Prometheus in another pod", cfg.Admin.Listen)
		}
		if !slices.Equal(c.Args, []string{"serve", "--config", "/etc/airlock/config/airlock.yaml"}) {
			t.Errorf("args %v do not start airlock on the ConfigMap's file", c.Args)
		}
	})
	t.Run("every file airlock reads is mounted", func(t *testing.T) {
		files := map[string]string{"config": "/etc/airlock/config/airlock.yaml", "admin.tokenFile": cfg.Admin.TokenFile}
		for _, u := range cfg.Upstreams {
			if u.Auth.UsernameFile != "" {
				files[u.Name+" usernameFile"] = u.Auth.UsernameFile
				files[u.Name+" passwordFile"] = u.Auth.PasswordFile
			}
		}
		for what, file := range files {
			if err := m.mounted(c, pod.Spec.Volumes, file); err != "" {
				t.Errorf("%s %s: %s", what, file, err)
			}
		}
		if err := m.mountedDir(c, cfg.Storage.Path); err != "" {
			t.Errorf("storage.path %s: %s", cfg.Storage.Path, err)
		}
	})
	t.Run("selectors", func(t *testing.T) {
		podLabels := pod.Labels
		if !matches(d.Spec.Selector, podLabels) {
			t.Error("deployment selector does not match its pods")
		}
		for name, s := range m.services {
			if len(s.Spec.Selector) == 0 || !matches(&metav1.LabelSelector{MatchLabels: s.Spec.Selector}, podLabels) {
				t.Errorf("service %s does not select airlock's pods", name)
			}
			for _, p := range s.Spec.Ports {
				checkPort(t, c, p.TargetPort.String(), cfg)
			}
		}
		if !matches(m.pdb.Spec.Selector, podLabels) {
			t.Error("PodDisruptionBudget does not select airlock's pods")
		}
		if !matches(&m.networkPolicy.Spec.PodSelector, podLabels) {
			t.Error("NetworkPolicy does not select airlock's pods")
		}
		ref := m.hpa.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.Name != d.Name || ref.APIVersion != "apps/v1" {
			t.Errorf("HPA scales %+v, not the Deployment %s", ref, d.Name)
		}
		if m.hpa.Spec.MinReplicas == nil || *m.hpa.Spec.MinReplicas < 2 {
			t.Error("HPA minReplicas below 2: a single pod makes every rollout and node drain an outage")
		}
	})
	t.Run("service monitor scrapes the admin service", func(t *testing.T) {
		sm := m.serviceMonitor
		admin, ok := m.services["airlock-admin"]
		if !ok {
			t.Fatal("no airlock-admin Service")
		}
		if !matches(&sm.Spec.Selector, admin.Labels) {
			t.Error("ServiceMonitor selector does not match the airlock-admin Service")
		}
		for _, other := range m.services {
			if other.Name != admin.Name && matches(&sm.Spec.Selector, other.Labels) {
				t.Errorf("ServiceMonitor also selects Service %s: every pod would be scraped twice", other.Name)
			}
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != admin.Spec.Ports[0].Name || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoints %+v, want /metrics on port %s", sm.Spec.Endpoints, admin.Spec.Ports[0].Name)
		}
	})
	t.Run("prometheus rule equals the rule file", func(t *testing.T) {
		var plain ruleFile
		decodeYAML(t, "prometheus/airlock-alerts.yaml", read(t, "prometheus/airlock-alerts.yaml"), &plain)
		if !reflect.DeepEqual(plain, m.prometheusRule.Spec) {
			t.Error("kubernetes/prometheusrule.yaml and prometheus/airlock-alerts.yaml hold different rules; edit both")
		}
	})
}

// checkPort fails unless the container exposes the named port and it is
// the one the shipped config listens on.
func checkPort(t *testing.T, c corev1.Container, name string, cfg *config.Config) {
	t.Helper()
	listen := map[string]string{"registry": cfg.Listen, "admin": cfg.Admin.Listen}[name]
	for _, p := range c.Ports {
		if p.Name == name {
			if !strings.HasSuffix(listen, ":"+itoa(p.ContainerPort)) {
				t.Errorf("container port %s is %d, airlock listens on %q", name, p.ContainerPort, listen)
			}
			return
		}
	}
	t.Errorf("container has no port named %q", name)
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

func matches(sel *metav1.LabelSelector, labels map[string]string) bool {
	if sel == nil || len(sel.MatchLabels) == 0 {
		return false
	}
	for k, v := range sel.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// mounted explains why file is not provided by a ConfigMap or Secret key
// through the container's mounts, or returns "".
func (m *manifests) mounted(c corev1.Container, volumes []corev1.Volume, file string) string {
	for _, vm := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(file, vm.MountPath+"/")
		if !ok {
			continue
		}
		if vm.SubPath != "" {
			return "mounted with subPath, so updates never reach it"
		}
		i := slices.IndexFunc(volumes, func(v corev1.Volume) bool { return v.Name == vm.Name })
		if i < 0 {
			return "mount " + vm.Name + " has no volume"
		}
		v := volumes[i]
		switch {
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != m.configMap.Name {
				return "ConfigMap " + v.ConfigMap.Name + " is not shipped"
			}
			key := keyFor(v.ConfigMap.Items, rel)
			if _, ok := m.configMap.Data[key]; !ok {
				return "ConfigMap has no key " + key
			}
			return ""
		case v.Secret != nil:
			s, ok := m.secrets[v.Secret.SecretName]
			if !ok {
				return "Secret " + v.Secret.SecretName + " is not shipped"
			}
			key := keyFor(v.Secret.Items, rel)
			if key == "" {
				return "no item of Secret volume " + v.Name + " projects " + rel
			}
			if _, ok := s.StringData[key]; !ok {
				return "Secret " + s.Name + " has no key " + key
			}
			return ""
		default:
			return "volume " + v.Name + " is neither a ConfigMap nor a Secret"
		}
	}
	return "no volume mount provides it"
}

// keyFor maps a path inside a volume back to the key it projects.
func keyFor(items []corev1.KeyToPath, rel string) string {
	if len(items) == 0 {
		return rel
	}
	for _, it := range items {
		if path.Clean(it.Path) == rel {
			return it.Key
		}
	}
	return ""
}

func (m *manifests) mountedDir(c corev1.Container, dir string) string {
	for _, vm := range c.VolumeMounts {
		if vm.MountPath == dir {
			if vm.ReadOnly {
				return "mounted read-only"
			}
			return ""
		}
	}
	return "not a volume mount: the data would live in the container's read-only root"
}

func TestAlertRules(t *testing.T) {
	t.Parallel()
	var rf ruleFile
	decodeYAML(t, "prometheus/airlock-alerts.yaml", read(t, "prometheus/airlock-alerts.yaml"), &rf)
	recorded := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	alerts := map[string]*rule{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			if (r.Alert == "") == (r.Record == "") {
				t.Errorf("group %s: a rule needs exactly one of alert and record: %+v", g.Name, r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for: %v", name, err)
				}
			}
			if r.Alert != "" {
				alerts[r.Alert] = &r
				if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
					t.Errorf("%s: severity %q, want critical, warning or info", name, r.Labels["severity"])
				}
				if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
					t.Errorf("%s: needs a summary and a description annotation", name)
				}
			}
			for _, err := range checkExpr(r.Expr, recorded) {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
	for _, want := range []string{"AirlockUpstreamDown", "AirlockDockerHubRateLimitLow", "AirlockDigestMismatch",
		"AirlockCacheDiskNearlyFull", "AirlockErrorBudgetBurnFast", "AirlockManifestLatencyHigh",
		"AirlockImageQuarantined", "AirlockAlertDeliveryFailing"} {
		if alerts[want] == nil {
			t.Errorf("no %s alert", want)
		}
	}
	// Whoever gets the quarantine alert learns the command that shows
	// what was refused and why.
	if q := alerts["AirlockImageQuarantined"]; q != nil {
		if !strings.Contains(q.Annotations["summary"], "`airlock quarantine list`") {
			t.Errorf("AirlockImageQuarantined's summary does not tell the admin to run airlock quarantine list: %q", q.Annotations["summary"])
		}
		if !strings.Contains(q.Expr, `to="quarantined"`) || !strings.Contains(q.Expr, "airlock_image_transitions_total") {
			t.Errorf("AirlockImageQuarantined does not count transitions to quarantined: %s", q.Expr)
		}
	}
}

// dashboard is the part of Grafana's dashboard model the shipped file
// uses; strict decoding catches misspelt fields.
type dashboard struct {
	UID           string   `json:"uid"`
	Title         string   `json:"title"`
	Description   string   `json:"description"`
	Tags          []string `json:"tags"`
	Timezone      string   `json:"timezone"`
	Editable      bool     `json:"editable"`
	SchemaVersion int      `json:"schemaVersion"`
	Version       int      `json:"version"`
	Refresh       string   `json:"refresh"`
	Time          struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Templating struct {
		List []struct {
			Name       string      `json:"name"`
			Label      string      `json:"label"`
			Type       string      `json:"type"`
			Query      string      `json:"query"`
			Datasource *datasource `json:"datasource"`
			Refresh    int         `json:"refresh"`
			IncludeAll bool        `json:"includeAll"`
			Multi      bool        `json:"multi"`
			AllValue   string      `json:"allValue"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int         `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Collapsed   bool        `json:"collapsed"`
	Panels      []panel     `json:"panels"`
	Datasource  *datasource `json:"datasource"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
		Overrides []any `json:"overrides"`
	} `json:"fieldConfig"`
	Targets []struct {
		RefID        string      `json:"refId"`
		Datasource   *datasource `json:"datasource"`
		Expr         string      `json:"expr"`
		LegendFormat string      `json:"legendFormat"`
	} `json:"targets"`
}

func TestDashboard(t *testing.T) {
	t.Parallel()
	var d dashboard
	decodeJSON(t, "grafana/airlock-dashboard.json", read(t, "grafana/airlock-dashboard.json"), &d)
	vars := map[string]bool{"__rate_interval": true, "__range": true, "__interval": true}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	ids := map[int]bool{}
	var seen []string
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, err := range checkExpr(q.Expr, nil) {
				t.Errorf("panel %q: %v", p.Title, err)
			}
			for _, v := range grafanaVars(q.Expr) {
				if !vars[v] {
					t.Errorf("panel %q uses $%s, which the dashboard does not define", p.Title, v)
				}
			}
			p, _ := lexPromQL(q.Expr)
			for _, s := range p.selectors {
				seen = append(seen, strings.TrimSuffix(s.name, "_bucket"))
			}
		}
	}
	// Every airlock series should be on the dashboard; a new one added
	// without a panel is invisible to the people running airlock.
	for name := range airlockSeries {
		if !slices.Contains(seen, name) {
			t.Errorf("no panel shows %s", name)
		}
	}
}

func grafanaVars(expr string) []string {
	var out []string
	for _, part := range strings.Split(expr, "$")[1:] {
		part = strings.TrimPrefix(part, "{")
		end := strings.IndexFunc(part, func(r rune) bool {
			return !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		})
		if end < 0 {
			end = len(part)
		}
		out = append(out, part[:end])
	}
	return out
}
